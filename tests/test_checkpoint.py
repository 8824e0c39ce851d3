"""s2s.checkpoint: atomic save, weights-only load, clear errors, run-directory resolution."""
from __future__ import annotations

import pickle
import random

import pytest
import torch
from malicious import MARKER_NAME, RunsCode, malicious_checkpoint

from s2s import checkpoint
from s2s.errors import CheckpointError, S2SError


def payload(value: float = 1.0) -> dict:
    return {"model": {"w": torch.full((3, 2), value), "b": torch.arange(4)},
            "config": {"model": {"cell": "lstm"}}, "step": 7, "best": None,
            "spm": {"spm.model": b"\x00\x01bytes"}, "versions": {"s2s": "0.1.0"}}


def leftovers(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_round_trip(tmp_path):
    path = tmp_path / "deep" / "dir" / "last.pt"
    checkpoint.save(payload(), path)
    loaded = checkpoint.load(path)
    assert loaded["format"] == checkpoint.FORMAT
    assert torch.equal(loaded["model"]["w"], payload()["model"]["w"])
    assert torch.equal(loaded["model"]["b"], torch.arange(4))
    assert {k: v for k, v in loaded.items() if k not in ("model", "format")} == \
        {k: v for k, v in payload().items() if k != "model"}
    assert leftovers(path.parent) == []
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode


def test_round_trip_of_a_real_model(tmp_path):
    from s2s.config import ModelConfig
    from s2s.model import Seq2Seq

    model = Seq2Seq(ModelConfig(emb_size=8, hidden_size=16), 9, 10)
    checkpoint.save({"model": model.state_dict()}, tmp_path / "m.pt")
    copy = Seq2Seq(ModelConfig(emb_size=8, hidden_size=16), 9, 10)
    copy.load_state_dict(checkpoint.load(tmp_path / "m.pt")["model"])
    for (name, a), (_, b) in zip(model.state_dict().items(), copy.state_dict().items()):
        assert torch.equal(a, b), name


def test_overwrite_replaces(tmp_path):
    path = tmp_path / "best.pt"
    checkpoint.save(payload(1.0), path)
    checkpoint.save(payload(2.0), path)
    assert float(checkpoint.load(path)["model"]["w"][0, 0]) == 2.0
    assert leftovers(tmp_path) == []


def _disk_full(obj, f, *args, **kwargs):
    raise OSError(28, "No space left on device")


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save(payload(1.0), path)
    before = path.read_bytes()
    monkeypatch.setattr(checkpoint.torch, "save", _disk_full)
    with pytest.raises(CheckpointError) as info:
        checkpoint.save(payload(2.0), path)
    message = str(info.value)
    assert "previous checkpoint is intact" in message
    assert "No space left on device" in message and str(path) in message
    assert isinstance(info.value.__cause__, OSError)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left
    monkeypatch.undo()
    assert float(checkpoint.load(path)["model"]["w"][0, 0]) == 1.0


def test_torch_s_runtime_error_on_a_full_disk_is_a_checkpoint_error(tmp_path, monkeypatch):
    """torch's zip writer reports a failed write as RuntimeError, not OSError."""
    path = tmp_path / "last.pt"
    checkpoint.save(payload(1.0), path)
    before = path.read_bytes()

    def failing(obj, f):
        f.write(b"PK partial")
        raise RuntimeError("[enforce fail at inline_container.cc:858] . PytorchStreamWriter "
                           "failed writing file data/0: file write failed")

    monkeypatch.setattr(checkpoint.torch, "save", failing)
    with pytest.raises(CheckpointError, match=r"writing checkpoint .*last.pt failed .*file "
                                              r"write failed.*previous checkpoint is intact"):
        checkpoint.save(payload(2.0), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_failed_first_write_says_nothing_was_written(tmp_path, monkeypatch):
    path = tmp_path / "best.pt"
    monkeypatch.setattr(checkpoint.torch, "save", _disk_full)
    with pytest.raises(CheckpointError, match="nothing was written"):
        checkpoint.save(payload(), path)
    assert list(tmp_path.iterdir()) == []


def test_failure_after_a_partial_write_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save(payload(1.0), path)
    before = path.read_bytes()

    def half_then_full(obj, f, *args, **kwargs):
        f.write(before[: len(before) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", half_then_full)
    with pytest.raises(CheckpointError, match="intact"):
        checkpoint.save(payload(2.0), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_failed_fsync_is_a_checkpoint_error(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save(payload(1.0), path)
    before = path.read_bytes()

    def failing_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(checkpoint.os, "fsync", failing_fsync)
    with pytest.raises(CheckpointError, match="Input/output error"):
        checkpoint.save(payload(2.0), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_interrupted_write_leaves_no_temp_file(tmp_path, monkeypatch):
    """Ctrl-C (or any non-OSError) in the middle of a save must not leave a .tmp file behind."""
    path = tmp_path / "last.pt"
    checkpoint.save(payload(1.0), path)
    before = path.read_bytes()

    def interrupted(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(payload(2.0), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_unwritable_directory_is_a_checkpoint_error(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(checkpoint.tempfile, "mkstemp", read_only)
    with pytest.raises(CheckpointError, match="Read-only file system"):
        checkpoint.save(payload(), tmp_path / "last.pt")


def test_crafted_file_really_runs_code_when_unpickled(tmp_path):
    """The fixture is genuinely dangerous: a plain (non-weights-only) load executes it."""
    marker = tmp_path / MARKER_NAME
    path = malicious_checkpoint(tmp_path, marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_code_in_a_checkpoint_is_refused(tmp_path):
    marker = tmp_path / MARKER_NAME
    path = malicious_checkpoint(tmp_path, marker)
    with pytest.raises(CheckpointError, match="refused") as info:
        checkpoint.load(path)
    assert "weights only" in str(info.value) and str(path) in str(info.value)
    assert not marker.exists()


def test_plain_pickle_with_code_is_refused(tmp_path):
    """A raw pickle (not a torch zip file) that would run code is refused too."""
    marker = tmp_path / MARKER_NAME
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"format": 1, "model": RunsCode(str(marker))}, protocol=2))
    with pytest.raises(CheckpointError):
        checkpoint.load(path)
    assert not marker.exists()


@pytest.mark.parametrize("keep", [0.5, 0.1, 0.0])
def test_truncated_file(tmp_path, keep):
    path = tmp_path / "last.pt"
    checkpoint.save(payload(), path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="unreadable or truncated"):
        checkpoint.load(path)


@pytest.mark.parametrize("seed", range(40))
def test_garbage_file_is_a_checkpoint_error(tmp_path, seed):
    """Whatever the bytes, load raises CheckpointError (never IndexError & co. from the
    unpickler, which the CLI would show as a traceback)."""
    rng = random.Random(seed)
    data = b"this is not a checkpoint\n" * 10 if seed == 0 else \
        bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
    path = tmp_path / "x.pt"
    path.write_bytes(data)
    with pytest.raises(CheckpointError):
        checkpoint.load(path)


def test_a_text_file_is_not_called_malicious(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("model:\n  cell: lstm\n", encoding="utf-8")
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(path)
    assert "run code" not in str(info.value)


@pytest.mark.parametrize("content", [
    [1, 2, 3], {"model": {}}, {"format": 99, "model": {}}, {"format": 1},
], ids=["list", "no-format", "future-format", "no-model"])
def test_not_an_s2s_checkpoint(tmp_path, content):
    path = tmp_path / "other.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match="not an s2s checkpoint"):
        checkpoint.load(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        checkpoint.load(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="no such file"):
        checkpoint.load(tmp_path)


def test_errors_are_s2s_errors():
    assert issubclass(CheckpointError, S2SError)


def test_resolve(tmp_path):
    ckpts = tmp_path / checkpoint.CHECKPOINT_DIR
    with pytest.raises(CheckpointError, match="best.pt.*last.pt") as info:
        checkpoint.resolve(tmp_path)  # an empty directory
    assert "s2s train" in str(info.value)
    checkpoint.save(payload(), ckpts / "last.pt")
    assert checkpoint.resolve(tmp_path) == ckpts / "last.pt"
    checkpoint.save(payload(), ckpts / "best.pt")
    assert checkpoint.resolve(tmp_path) == ckpts / "best.pt"
    assert checkpoint.resolve(ckpts / "last.pt") == ckpts / "last.pt"  # a file is itself
    with pytest.raises(CheckpointError, match="no such run directory or checkpoint"):
        checkpoint.resolve(tmp_path / "missing")


def test_resolve_ignores_a_directory_named_best_pt(tmp_path):
    (tmp_path / checkpoint.CHECKPOINT_DIR / "best.pt").mkdir(parents=True)
    with pytest.raises(CheckpointError):
        checkpoint.resolve(tmp_path)


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.update(config=[1, 2]), "entry 'config' is a list, not a mapping"),
    (lambda p: p.update(model=torch.zeros(3)), "entry 'model' is a Tensor, not a mapping"),
    (lambda p: p.update(spm="nope"), "entry 'spm' is a str, not a mapping"),
    (lambda p: p.update(spm={**p["spm"], "kept": "{not json"}),
     "the stored SentencePiece metadata is damaged"),
    (lambda p: p.pop("spm"), "missing entry 'spm'"),
])
def test_damaged_checkpoint_entries_are_checkpoint_errors(toy_run, tmp_path, damage, message):
    from s2s.translate import Translator

    payload = dict(checkpoint.load(checkpoint.resolve(toy_run)))
    if "kept" not in payload["spm"] and "kept" in message:
        pytest.skip("this run's vocabulary is not pruned")
    damage(payload)
    path = tmp_path / "damaged.pt"
    checkpoint.save(payload, path)
    with pytest.raises(CheckpointError, match=message):
        Translator.from_run(path, device="cpu")
