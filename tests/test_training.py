"""The training engine: exact resume after SIGKILL/SIGTERM, checkpoint retention, schedules,
early stopping, gradient accumulation, non-finite losses, TensorBoard contents, averaging."""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from s2s import checkpoint, config
from s2s.cli import main
from s2s.errors import ConfigError, TrainingError
from s2s.training import Trainer, resume, train
from s2s.training.optim import lr_factor

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "configs" / "toy.yaml"
STEPS = 120
# small and quick; log every step so per-step losses can be compared
SETTINGS = [f"train.max_steps={STEPS}", "train.checkpoint_every=20", "train.validate_every=40",
            "train.log_every=1", "train.keep_last=3", "train.keep_best=1", "train.batch_size=16"]


def _overrides(data: Path, *extra: str) -> list[str]:
    return [f"data.dir={data}", *SETTINGS, *extra]


def _log(run: Path) -> list[dict]:
    """The run's JSON-lines log; a line still being written (no newline yet) is left out."""
    complete = (run / "train_log.jsonl").read_text().split("\n")[:-1]
    return [json.loads(line) for line in complete]


def _losses(records: list[dict]) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


def _seed_tokenizer(source: Path, run: Path) -> None:
    """Give a new run the reference run's SentencePiece model, so the two runs differ only in
    how they were interrupted."""
    run.mkdir(parents=True)
    for path in source.iterdir():
        if path.is_file() and (path.name.startswith("spm") or path.name == "vocab.json"):
            shutil.copy(path, run / path.name)


def _start(run: Path, data: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "s2s", "train", str(TOY), "--run-dir", str(run), "--quiet"]
    for item in _overrides(data):
        cmd += ["--set", item]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_step(proc: subprocess.Popen, run: Path, step: int) -> int:
    """Poll the run's log until it has logged `step`; returns the last step logged."""
    log = run / "train_log.jsonl"
    while proc.poll() is None:
        if log.exists():
            steps = list(_losses(_log(run)))
            if steps and steps[-1] >= step:
                return steps[-1]
        time.sleep(0.02)
    raise AssertionError(f"the run ended before step {step}: {proc.communicate()}")


def _same_parameters(a: Path, b: Path) -> None:
    left, right = checkpoint.load(a)["model"], checkpoint.load(b)["model"]
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), key


@pytest.fixture(scope="module")
def reference(tmp_path_factory, toy_data) -> Path:
    """A run never interrupted."""
    run = tmp_path_factory.mktemp("reference")
    train(config.load(TOY, _overrides(toy_data)), run, console=False)
    return run


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical(reference, toy_data, tmp_path):
    run = tmp_path / "killed"
    _seed_tokenizer(reference, run)
    proc = _start(run, toy_data)
    killed_after = _wait_for_step(proc, run, 47)  # after the checkpoints at 20 and 40
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed_after < STEPS
    last = checkpoint.load(run / "checkpoints" / "last.pt")["step"]
    assert 40 <= last <= killed_after

    result = resume(run, console=False)
    assert result["step"] == STEPS
    records = _log(run)
    marker = next(i for i, r in enumerate(records) if "resumed_from" in r)
    assert records[marker]["resumed_from"] == last
    resumed, expected = _losses(records[marker:]), _losses(_log(reference))
    assert list(resumed) == list(range(last + 1, STEPS + 1))
    for step, loss in resumed.items():
        assert loss == expected[step], step  # bitwise: floats compared exactly
    _same_parameters(run / "checkpoints" / "last.pt", reference / "checkpoints" / "last.pt")


@pytest.mark.slow
def test_sigterm_saves_exits_0_and_resume_ends_identical(reference, toy_data, tmp_path):
    run = tmp_path / "stopped"
    _seed_tokenizer(reference, run)
    proc = _start(run, toy_data)
    _wait_for_step(proc, run, 30)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "SIGTERM: stopped after step" in err and f"s2s train --resume {run}" in err
    assert "Traceback" not in err
    stopped = checkpoint.load(run / "checkpoints" / "last.pt")["step"]
    assert 30 <= stopped < STEPS
    assert checkpoint.step_file(run / "checkpoints", stopped).exists()

    result = CliRunner().invoke(main, ["train", "--resume", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    _same_parameters(run / "checkpoints" / "last.pt", reference / "checkpoints" / "last.pt")
    _same_parameters(run / "checkpoints" / "best.pt", reference / "checkpoints" / "best.pt")


@pytest.mark.slow
def test_tensorboard_has_scalars_images_and_text(reference):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(reference / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()
    for tag in ("train/loss", "train/ppl", "train/lr", "train/grad_norm",
                "train/tgt_tokens_per_s", "val/loss", "val/ppl", "val/bleu", "val/chrf"):
        assert tag in tags["scalars"], (tag, tags["scalars"])
    assert any(tag.startswith("attention/") for tag in tags["images"]), tags["images"]
    image = acc.Images(tags["images"][0])[-1]
    assert image.width > 0 and image.height > 0
    assert any("val/samples" in tag for tag in tags["tensors"]), tags["tensors"]
    assert (reference / "tensorboard" / "hparams").is_dir()  # hparams with the final metrics


@pytest.mark.slow
def test_checkpoint_retention_and_links(reference):
    ckpts = reference / "checkpoints"
    steps = sorted(checkpoint.step_files(ckpts))
    best = checkpoint.load(ckpts / "best.pt")
    kept_best = int(best["best_kept"][0][1])
    assert best["step"] == kept_best
    assert set(steps) == {80, 100, 120} | {kept_best}  # the last 3 and the best 1
    assert os.path.samefile(ckpts / "last.pt", checkpoint.step_file(ckpts, STEPS))
    assert not list(ckpts.glob("*.tmp"))
    payload = checkpoint.load(ckpts / "last.pt")
    for key in ("optimizer", "scheduler", "rng", "epoch", "batch_pos", "bad_validations",
                "config", "cell", "versions"):
        assert key in payload, key
    assert set(payload["rng"]) == {"torch", "python", "numpy"}


@pytest.mark.slow
def test_resume_extends_the_step_budget(reference, tmp_path):
    run = tmp_path / "extended"
    shutil.copytree(reference, run)
    result = resume(run, overrides=[f"train.max_steps={STEPS + 10}"], console=False)
    assert result["step"] == STEPS + 10
    before = checkpoint.load(reference / "checkpoints" / "last.pt")["lexicon"]
    after = checkpoint.load(run / "checkpoints" / "last.pt")["lexicon"]  # kept, not rebuilt
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
def test_resuming_a_finished_run_trains_no_further_step(reference, tmp_path):
    run = tmp_path / "finished"
    shutil.copytree(reference, run)
    result = resume(run, console=False)
    assert result["step"] == STEPS and result["stopped_by"] == "max_steps"
    _same_parameters(run / "checkpoints" / "last.pt", reference / "checkpoints" / "last.pt")


@pytest.mark.slow
def test_resume_without_last_pt_uses_the_newest_step_file(reference, tmp_path, caplog):
    """A run killed between writing step-N.pt and pointing last.pt at it; a half-written newer
    file and stale temporary files (a killed write) are left behind too."""
    run = tmp_path / "no_last"
    shutil.copytree(reference, run)
    ckpts = run / "checkpoints"
    (ckpts / "last.pt").unlink()
    checkpoint.step_file(ckpts, STEPS + 5).write_bytes(b"half a checkpoint")
    stale = ckpts / f".{checkpoint.step_file(ckpts, STEPS).name}.x1y2.tmp"
    stale.write_bytes(b"left by a killed write")
    caplog.set_level(logging.WARNING, logger="s2s")
    result = resume(run, overrides=[f"train.max_steps={STEPS + 10}"], console=False)
    assert result["step"] == STEPS + 10
    assert f"resuming from its newest checkpoint, {checkpoint.step_file(ckpts, STEPS).name}" \
        in caplog.text
    assert not stale.exists() and (ckpts / "last.pt").exists()


@pytest.mark.slow
def test_budget_stop_then_longer_resume_equals_one_long_run(toy_data, tmp_path):
    """A run stopped by its step budget between validations, then resumed with a bigger budget,
    ends like a run given the bigger budget at once: the final (unscheduled) validation of the
    first session must not move patience or the plateau schedule."""
    settings = ["train.schedule=plateau", "train.decay_patience=0", "train.metric=loss",
                "train.valid_bleu=false", "train.validate_every=20", "train.checkpoint_every=20"]
    long = tmp_path / "long"
    train(config.load(TOY, _overrides(toy_data, *settings, "train.max_steps=80")), long,
          console=False)
    short = tmp_path / "short"
    _seed_tokenizer(long, short)
    train(config.load(TOY, _overrides(toy_data, *settings, "train.max_steps=50")), short,
          console=False)
    stopped = checkpoint.load(short / "checkpoints" / "last.pt")
    assert stopped["step"] == 50
    assert stopped["scheduler"]["last_epoch"] == 2  # stepped at 20 and 40, not by the final one
    assert any(r.get("step") == 50 and "val/loss" in r for r in _log(short))  # it did validate
    result = resume(short, overrides=["train.max_steps=80"], console=False)
    assert result["step"] == 80
    _same_parameters(short / "checkpoints" / "last.pt", long / "checkpoints" / "last.pt")


def test_resume_keeps_the_linear_schedules_horizon(toy_data, tmp_path):
    run = tmp_path / "linear"
    train(config.load(TOY, _overrides(toy_data, "train.schedule=linear", "train.max_steps=3",
                                      "train.valid_bleu=false", "train.metric=loss")), run,
          console=False)
    with pytest.raises(ConfigError, match="linear schedule decays to 0 at train.max_steps=3"):
        resume(run, overrides=["train.max_steps=6"], console=False)


def test_resume_refuses_another_model_shape(reference, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(reference, run)
    result = CliRunner().invoke(main, ["train", "--resume", str(run), "--set",
                                       "model.hidden_size=64", "--set", "model.cell=gru"])
    assert result.exit_code == 1
    assert "model.hidden_size (run: 128, now: 64)" in result.output
    assert "model.cell (run: 'lstm', now: 'gru')" in result.output
    assert "Traceback" not in result.output


def test_resume_refuses_a_checkpoint_that_runs_code(tmp_path):
    from malicious import MARKER_NAME, malicious_checkpoint

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    marker = tmp_path / MARKER_NAME
    os.replace(malicious_checkpoint(tmp_path, marker), run / "checkpoints" / "last.pt")
    result = CliRunner().invoke(main, ["train", "--resume", str(run)])
    assert result.exit_code == 1
    assert "refused" in result.output and "weights only" in result.output
    assert not marker.exists()


def test_resume_without_a_run(tmp_path):
    result = CliRunner().invoke(main, ["train", "--resume", str(tmp_path)])
    assert result.exit_code == 1 and "no checkpoints/last.pt and no readable step" in result.output


def test_train_needs_exactly_one_of_run_dir_and_resume(tmp_path):
    result = CliRunner().invoke(main, ["train", str(TOY)])
    assert result.exit_code == 2 and "--run-dir" in result.output
    result = CliRunner().invoke(main, ["train", "--run-dir", str(tmp_path), "--resume",
                                       str(tmp_path)])
    assert result.exit_code == 2


@pytest.mark.slow
def test_average_last_checkpoints(reference, tmp_path):
    out = tmp_path / "avg.pt"
    result = CliRunner().invoke(main, ["average", str(reference), "--last", "2", "-o", str(out)])
    assert result.exit_code == 0, result.output
    averaged = checkpoint.load(out)
    assert averaged["averaged_steps"] == [100, 120]
    a = checkpoint.load(checkpoint.step_file(reference / "checkpoints", 100))["model"]
    b = checkpoint.load(checkpoint.step_file(reference / "checkpoints", 120))["model"]
    for key, value in averaged["model"].items():
        torch.testing.assert_close(value, (a[key] + b[key]) / 2)
    from s2s.translate import Translator

    assert len(Translator.from_run(out).translate(["a b c", ""])) == 2


@pytest.mark.parametrize("name", ["last.pt", "step-0000120.pt", "avg.pt"])
def test_average_never_writes_into_a_runs_checkpoints(reference, name):
    ckpts = reference / "checkpoints"
    before = {p.name: p.read_bytes() for p in ckpts.iterdir()}
    result = CliRunner().invoke(main, ["average", str(reference), "--last", "2", "-o",
                                       str(ckpts / name)])
    assert result.exit_code == 1
    assert "inside a run's checkpoints/" in result.output and "Traceback" not in result.output
    assert {p.name: p.read_bytes() for p in ckpts.iterdir()} == before  # nothing touched


@pytest.mark.parametrize("name", ["spm.model", "config.yaml", "train_log.jsonl"])
def test_average_never_replaces_a_runs_own_files(reference, name):
    before = (reference / name).read_bytes()
    result = CliRunner().invoke(main, ["average", str(reference), "--last", "2", "-o",
                                       str(reference / name)])
    assert result.exit_code == 1 and "would replace a file of the run" in result.output
    assert "Traceback" not in result.output and (reference / name).read_bytes() == before


# -- schedules -----------------------------------------------------------------------------------


def _factor(**train):
    cfg = config.from_dict({"train": {"lr": 1.0, **train}})
    return lr_factor(cfg.train)


def test_warmup_then_inverse_sqrt():
    f = _factor(schedule="inverse_sqrt", warmup_steps=4)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(15) == pytest.approx(math.sqrt(4 / 16))


def test_warmup_then_linear_decay_to_zero():
    f = _factor(schedule="linear", warmup_steps=2, max_steps=12)
    assert f(0) == 0.5 and f(2) == 1.0
    assert f(7) == pytest.approx(0.5) and f(12) == 0.0


def test_constant_with_floor():
    assert _factor()(1000) == 1.0
    assert _factor(schedule="linear", max_steps=10, min_lr=0.1)(10) == 0.1


@pytest.mark.parametrize("overrides, message", [
    (["train.schedule=linear"], "train.max_steps or train.max_time > 0"),
    (["train.schedule=plateau", "train.warmup_steps=10"], "warmup_steps"),
    (["train.metric=bleu", "train.valid_bleu=false"], "train.metric=loss"),
    (["train.accum_steps=0"], "'train.accum_steps' must be > 0"),
])
def test_schedule_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config.from_dict({}, overrides)


@pytest.mark.slow
def test_plateau_schedule_decays_and_early_stopping_stops(toy_data, tmp_path):
    """lr 0 never improves: plateau halves the (zero) lr and patience 2 stops the run at the
    third validation."""
    cfg = config.load(TOY, _overrides(toy_data, "train.schedule=plateau", "train.patience=2",
                                      "train.decay_patience=0", "train.metric=loss",
                                      "train.valid_bleu=false", "train.validate_every=10",
                                      "train.lr=1e-12"))
    result = train(cfg, tmp_path / "run", console=False)
    assert result["stopped_by"] == "early stopping"
    assert result["step"] == 30
    lrs = [r["train/lr"] for r in _log(tmp_path / "run") if "train/lr" in r]
    assert lrs[0] == 1e-12 and lrs[-1] < 1e-12


# -- steps -------------------------------------------------------------------------------------


def _trainer(toy_data, tmp_path, *extra) -> Trainer:
    cfg = config.load(TOY, _overrides(toy_data, "model.dropout=0.0", *extra))
    trainer = Trainer(cfg, tmp_path / "run", console=False)
    trainer.setup()
    return trainer


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_gradient_accumulation_equals_one_big_batch(toy_data, tmp_path):
    trainer = _trainer(toy_data, tmp_path)
    batch = np.arange(16)
    grads = []
    trainer.optimizer.step = lambda: grads.append(
        [p.grad.clone() for p in trainer.model.parameters()])
    _, nll_one, _, tokens_one = trainer.train_step([batch])
    _, nll_two, _, tokens_two = trainer.train_step([batch[:8], batch[8:]])
    assert tokens_one == tokens_two
    assert nll_two == pytest.approx(nll_one, rel=1e-5)
    for one, two in zip(*grads):
        torch.testing.assert_close(two, one, rtol=1e-4, atol=1e-6)


def test_non_finite_losses_are_skipped_then_stop_the_run(toy_data, tmp_path, monkeypatch):
    from s2s.model import Seq2Seq

    real_loss = Seq2Seq.loss
    calls = {"n": 0}

    def sometimes_nan(self, *args, **kwargs):
        calls["n"] += 1
        loss, nll = real_loss(self, *args, **kwargs)
        if self.training and calls["n"] in (3, 4):
            return loss * float("nan"), nll * float("nan")
        return loss, nll

    monkeypatch.setattr(Seq2Seq, "loss", sometimes_nan)
    cfg = config.load(TOY, _overrides(toy_data, "train.max_steps=6", "train.valid_bleu=false",
                                      "train.metric=loss"))
    result = train(cfg, tmp_path / "skips", console=False)
    assert result["skipped_steps"] == 2 and result["step"] == 6

    monkeypatch.setattr(Seq2Seq, "loss", lambda self, *a, **k: (
        real_loss(self, *a, **k)[0] * float("nan"), torch.tensor(float("nan"))))
    cfg = config.load(TOY, _overrides(toy_data, "train.max_nonfinite=3"))
    with pytest.raises(TrainingError, match="3 non-finite losses or gradients in a row"):
        train(cfg, tmp_path / "diverged", console=False)


def test_failed_periodic_save_warns_and_training_goes_on(toy_data, tmp_path, monkeypatch,
                                                         capsys):
    from s2s.errors import CheckpointError

    real_save = checkpoint.save
    calls = {"n": 0}

    def full_disk_once(payload, path):
        calls["n"] += "step" in payload  # training checkpoints (not the data cache's files)
        if calls["n"] == 1 and "step" in payload:
            raise CheckpointError(f"writing checkpoint {path} failed (No space left on device); "
                                  f"nothing was written")
        return real_save(payload, path)

    monkeypatch.setattr(checkpoint, "save", full_disk_once)
    cfg = config.load(TOY, _overrides(toy_data, "train.max_steps=40", "train.valid_bleu=false",
                                      "train.metric=loss", "train.validate_every=100"))
    result = train(cfg, tmp_path / "run", console=True)
    assert result["step"] == 40
    err = capsys.readouterr().err
    assert "warning: writing checkpoint" in err and "No space left" in err
    assert "retries at the next checkpoint" in err
    assert checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 40


def test_a_full_disk_at_a_validation_step_warns_once(toy_data, tmp_path, monkeypatch, capsys):
    """A step that validates and checkpoints tries the disk up to three times (best-K entry,
    best.pt, the periodic save); a full disk is one warning, and the next checkpoint retries."""
    from s2s.errors import CheckpointError

    real_save = checkpoint.save
    failing = {"step": 10}

    def full_disk_at_step_10(payload, path):
        if payload.get("step") == failing["step"]:
            raise CheckpointError(f"writing checkpoint {path} failed (No space left on device); "
                                  f"nothing was written")
        return real_save(payload, path)

    monkeypatch.setattr(checkpoint, "save", full_disk_at_step_10)
    cfg = config.load(TOY, _overrides(toy_data, "train.max_steps=20", "train.valid_bleu=false",
                                      "train.metric=loss", "train.validate_every=10",
                                      "train.checkpoint_every=10"))
    result = train(cfg, tmp_path / "run", console=True)
    err = capsys.readouterr().err
    assert result["step"] == 20 and err.count("No space left on device") == 1, err
    assert checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 20
