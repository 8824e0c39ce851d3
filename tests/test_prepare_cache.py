"""Preparation reuses what an earlier run made from the same data and settings: the
SentencePiece model and the lexicon (S2S_DATA_CACHE), the encoded corpora (datasets' cache);
anything else, or a damaged cache entry, is made afresh."""
from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path

import pytest
import torch

from s2s import config
from s2s.training import Trainer

ROOT = Path(__file__).resolve().parents[1]
prepare = importlib.import_module("s2s.training.prepare")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "data_cache"
    monkeypatch.setenv("S2S_DATA_CACHE", str(root))
    return root


def setup(run: Path, data: Path, *sets: str) -> Trainer:
    cfg = config.load(ROOT / "configs" / "toy.yaml", [f"data.dir={data}", *sets])
    trainer = Trainer(cfg, run, console=True)
    trainer.setup()
    return trainer


def messages(caplog) -> str:
    text = "\n".join(r.getMessage() for r in caplog.records)
    caplog.clear()
    return text


def test_second_run_reuses_the_tokenizer_lexicon_and_encoded_data(toy_data, tmp_path, cache,
                                                                  caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="s2s")
    first = setup(tmp_path / "a", toy_data)
    said = messages(caplog)
    assert "training SentencePiece" in said and "building the target-vocabulary lexicon" in said
    assert len(list((cache / "spm").iterdir())) == 1 and len(list((cache / "lexicon").iterdir()))

    def no_training(*args, **kwargs):
        raise AssertionError("SentencePiece trained again")

    monkeypatch.setattr(prepare.Tokenizer, "train", no_training)
    monkeypatch.setattr(prepare.shortlist, "build_for", no_training)
    second = setup(tmp_path / "b", toy_data)
    said = messages(caplog)
    assert "trained earlier on the same data and settings" in said
    assert "building the target-vocabulary lexicon" not in said
    spm = [(tmp_path / run / "spm.model").read_bytes() for run in ("a", "b")]
    assert spm[0] == spm[1]
    assert second.tokenizer.to_bytes() == first.tokenizer.to_bytes()
    for key in ("table", "frequent"):
        assert torch.equal(second.lexicon[key], first.lexicon[key])
    # the encoded corpus comes from datasets' cache: the same Arrow files, not a new encoding
    assert second.train_data.data.cache_files == first.train_data.data.cache_files
    assert (second.train_data.src_len == first.train_data.src_len).all()


def test_other_settings_or_changed_data_train_a_new_tokenizer(toy_data, tmp_path, cache,
                                                               caplog):
    caplog.set_level(logging.INFO, logger="s2s")
    setup(tmp_path / "a", toy_data)
    messages(caplog)
    setup(tmp_path / "b", toy_data, "data.vocab_size=48")
    assert "training SentencePiece" in messages(caplog)
    changed = tmp_path / "changed"
    changed.mkdir()
    for f in toy_data.iterdir():
        (changed / f.name).write_bytes(f.read_bytes())
    with open(changed / "train.src", "a", encoding="utf-8") as f:
        f.write("a b c\n")
    with open(changed / "train.tgt", "a", encoding="utf-8") as f:
        f.write("qu ry zo\n")
    setup(tmp_path / "c", changed)
    assert "training SentencePiece" in messages(caplog)
    assert len(list((cache / "spm").iterdir())) == 3


def test_a_damaged_cache_entry_is_retrained_not_used(toy_data, tmp_path, cache, caplog):
    caplog.set_level(logging.INFO, logger="s2s")
    setup(tmp_path / "a", toy_data)
    (entry,) = (cache / "spm").iterdir()
    (entry / "spm.model").write_bytes(b"not a model")
    (lexicon,) = (cache / "lexicon").iterdir()
    lexicon.write_bytes(b"not a checkpoint")
    messages(caplog)
    trainer = setup(tmp_path / "b", toy_data)
    said = messages(caplog)
    assert "training SentencePiece" in said and "building the target-vocabulary lexicon" in said
    assert trainer.tokenizer.encode_src(["a b c"])[0]
    assert (entry / "spm.model").read_bytes() == (tmp_path / "b" / "spm.model").read_bytes()
    setup(tmp_path / "c", toy_data)  # the entry was replaced: used again
    assert "trained earlier on the same data" in messages(caplog)


def test_an_unwritable_cache_loses_nothing(toy_data, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("S2S_DATA_CACHE", str(blocker / "below_a_file"))
    trainer = setup(tmp_path / "a", toy_data)
    assert (tmp_path / "a" / "spm.model").is_file() and trainer.lexicon is not None
    assert not os.path.exists(blocker / "below_a_file")


def test_large_splits_are_tokenized_by_several_processes(toy_data, tmp_path, cache,
                                                         monkeypatch):
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one CPU: tokenized by one process")
    seen = {}
    original = prepare._encode

    def spy(ds, *args, **kwargs):
        real_map = ds.map

        def map_(*a, **k):
            seen[args[-2]] = k.get("num_proc")
            return real_map(*a, **k)

        ds.map = map_
        return original(ds, *args, **kwargs)

    monkeypatch.setattr(prepare, "PARALLEL_FROM", 1000)  # the toy train split has 3000 pairs
    monkeypatch.setattr(prepare, "_encode", spy)
    parallel = setup(tmp_path / "a", toy_data)
    assert seen == {"train": min(prepare.MAX_WORKERS, os.cpu_count()), "valid": None}
    lines = (toy_data / "train.src").read_text(encoding="utf-8").splitlines()
    assert len(parallel.train_data.data) == len(lines) == 3000  # in order, none lost
    rows = parallel.train_data.data[list(range(0, 3000, 97))]
    assert rows["src_ids"] == parallel.tokenizer.encode_src(lines[0:3000:97])
