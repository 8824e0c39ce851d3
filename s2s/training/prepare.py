"""Preparation: the data of a run → its tokenizer (trained once per run) → encoded corpora, and
the target-vocabulary lexicon of `s2s translate --shortlist`."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s2s import config, shortlist
from s2s.errors import CheckpointError, DataError
from s2s.ops.runtime import cache_dir
from s2s.tokenizer import Tokenizer

CONFIG_FILE = "config.yaml"  # the resolved config in every run directory
CACHE_VERSION = 1  # part of every data-cache key: raise it when what is cached is made otherwise
PARALLEL_FROM = 200_000  # pairs from which a split is tokenized by several processes
MAX_WORKERS = 8


@dataclass
class Corpus:
    """A tokenized split: datasets.Dataset with src_ids/tgt_ids plus lengths as arrays."""

    data: Any
    src_len: np.ndarray
    tgt_len: np.ndarray
    raw_src: list[str] = field(default_factory=list)  # validation only: every line, for BLEU
    raw_tgt: list[str] = field(default_factory=list)


class _Column:
    """A re-iterable view of one text column of a datasets.Dataset."""

    def __init__(self, ds, name: str) -> None:
        self.ds, self.name = ds, name

    def __iter__(self):
        for chunk in self.ds.select_columns([self.name]).iter(batch_size=10_000):
            yield from chunk[self.name]


def _encode(ds, tokenizer: Tokenizer, max_len: int, name: str, say: Callable[[str], None]
            ) -> Corpus:
    def encode(batch: dict) -> dict:
        src, tgt = tokenizer.encode_src(batch["src"]), tokenizer.encode_tgt(batch["tgt"])
        return {"src_ids": src, "tgt_ids": tgt, "src_len": [len(s) for s in src],
                "tgt_len": [len(t) for t in tgt]}

    digest = hashlib.sha256()
    digest.update(str(ds._fingerprint).encode())
    for blob in tokenizer.to_bytes().values():
        digest.update(blob if isinstance(blob, bytes) else blob.encode())
    # a large corpus is tokenized by several processes (each gets a pickled copy of the
    # tokenizer); datasets keeps the result in its cache, keyed by the data and the tokenizer
    workers = min(MAX_WORKERS, os.cpu_count() or 1) if len(ds) >= PARALLEL_FROM else None
    ds = ds.map(encode, batched=True, batch_size=2000, new_fingerprint=digest.hexdigest()[:32],
                num_proc=workers if workers and workers > 1 else None,
                desc=f"tokenizing {name}")
    lengths = ds.select_columns(["src_len", "tgt_len"]).with_format("numpy")[:]
    src_len, tgt_len = lengths["src_len"], lengths["tgt_len"]  # arrays, not Python lists
    empty = (src_len == 0) | (tgt_len == 0)
    long = ~empty & ((src_len > max_len) | (tgt_len > max_len))
    keep = np.flatnonzero(~(empty | long))
    say(f"{name}: {len(ds)} pairs, {int(empty.sum())} empty and {int(long.sum())} longer than "
        f"{max_len} pieces dropped, {len(keep)} kept")
    if len(keep) == 0:
        raise DataError(f"{name}: no usable pairs left (all empty or longer than data.max_len="
                        f"{max_len}); check the data files and data.max_len")
    data = ds.select(keep).select_columns(["src_ids", "tgt_ids"])
    return Corpus(data, src_len[keep], tgt_len[keep])


_SPM_KEYS = ("vocab_size", "spm_model_type", "joint_vocab", "prune_vocab", "character_coverage",
             "spm_input_sentence_size")


def data_cache() -> Path:
    """Where prepared training data is kept between runs: `$S2S_DATA_CACHE`, default
    `$S2S_CACHE/data` (~/.cache/s2s/data). The encoded corpora themselves live in 🤗 datasets'
    cache (HF_DATASETS_CACHE), keyed by the data and the tokenizer."""
    found = os.environ.get("S2S_DATA_CACHE")
    return Path(found) if found else cache_dir("data")


def _cache_key(*parts: Any) -> str:
    """The name of a data-cache entry made from `parts` (JSON values) and CACHE_VERSION."""
    return hashlib.sha256(json.dumps([CACHE_VERSION, *parts], sort_keys=True).encode()
                          ).hexdigest()[:24]


def _tokenizer(cfg: config.DataConfig, train_raw, run_dir: Path, say: Callable[[str], None]
               ) -> Tokenizer:
    """The run's tokenizer: its own (a resumed run), else the one an earlier run trained on
    the same training data with the same SentencePiece settings (kept in data_cache()), else
    a new one (then kept there for later runs)."""
    if Tokenizer.exists(run_dir):
        return Tokenizer.load(run_dir)
    import sentencepiece

    settings = {k: getattr(cfg, k) for k in _SPM_KEYS}
    cached = data_cache() / "spm" / _cache_key(train_raw._fingerprint, settings,
                                               sentencepiece.__version__)
    if cached.exists():
        try:
            Tokenizer.load(cached)  # a damaged entry is retrained, not used
            Tokenizer.copy(cached, run_dir)
            say(f"SentencePiece: the model trained earlier on the same data and settings "
                f"({cached})")
            return Tokenizer.load(run_dir)
        except (CheckpointError, OSError, ValueError, KeyError, TypeError):
            shutil.rmtree(cached, ignore_errors=True)  # replaced below
    say(f"training SentencePiece ({cfg.spm_model_type}, {cfg.vocab_size} pieces, "
        f"{'joint' if cfg.joint_vocab else 'separate'}) ...")
    tokenizer = Tokenizer.train(_Column(train_raw, "src"), _Column(train_raw, "tgt"), cfg,
                                run_dir)
    tmp = None
    try:  # into a private folder first, then renamed: a cache entry is whole or absent
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=cached.parent)
        os.chmod(tmp, 0o755)  # readable by every user of a shared cache, like its files
        Tokenizer.copy(run_dir, tmp)
        os.replace(tmp, cached)
    except OSError:  # another run stored it first, or the cache is not writable: nothing lost
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer


def prepare(cfg: config.Config, run_dir: Path, say: Callable[[str], None],
            progress: bool = False) -> tuple[Tokenizer, Corpus, Corpus]:
    """The run's tokenizer (trained unless the run has one) and its encoded splits;
    `progress`: datasets' bars for reading and tokenizing."""
    import datasets

    from s2s import data

    datasets.logging.set_verbosity_error()
    (datasets.enable_progress_bars if progress else datasets.disable_progress_bars)()

    train_raw = data.load_split(cfg.data, cfg.data.train)
    valid_raw = data.load_split(cfg.data, cfg.data.valid)
    if len(train_raw) == 0:
        raise DataError(f"training split '{cfg.data.train}' is empty")
    tokenizer = _tokenizer(cfg.data, train_raw, run_dir, say)
    train = _encode(train_raw, tokenizer, cfg.data.max_len, "train", say)
    valid = _encode(valid_raw, tokenizer, cfg.data.max_len, "valid", say)
    valid.raw_src, valid.raw_tgt = list(valid_raw["src"]), list(valid_raw["tgt"])
    return tokenizer, train, valid


def build_lexicon(tokenizer: Tokenizer, train: Corpus, seed: int,
                  say: Callable[[str], None]) -> dict[str, torch.Tensor]:
    """The target-vocabulary lexicon of `s2s translate --shortlist`, from the encoded training
    split (stored in every checkpoint; `s2s lexicon` rebuilds it for older runs). Kept in
    data_cache() for later runs on the same encoded data."""
    how = [shortlist.SAMPLE_ROWS, shortlist.SAMPLE_BLOCK, shortlist.ITERATIONS,
           shortlist.LEXICON_K, shortlist.MAX_ENTRIES]  # how it is built
    key = _cache_key(train.data._fingerprint, seed, how, tokenizer.src_vocab_size,
                     tokenizer.tgt_vocab_size)
    cached = data_cache() / "lexicon" / f"{key}.pt"
    try:
        found = shortlist.load(cached, tokenizer.tgt_vocab_size)
        if found is not None:
            return found
    except CheckpointError:
        pass  # a damaged entry is rebuilt
    lexicon = shortlist.build_for(train.data, tokenizer.src_vocab_size,
                                  tokenizer.tgt_vocab_size, seed, say)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        shortlist.save(lexicon, cached)
    except (OSError, CheckpointError):
        pass  # not writable: nothing lost
    return lexicon


def prepare_run(cfg: config.Config, run_dir: Path, world, lexicon: dict | None,
                say: Callable[[str], None], progress: bool = False
                ) -> tuple[Tokenizer, Corpus, Corpus, dict | None]:
    """A run's config file, tokenizer, encoded splits and lexicon (`lexicon`: a resumed run's
    own). Under torchrun rank 0 writes and prepares first (SentencePiece, the cached encoded
    corpora), then the other ranks load what it made; only rank 0 builds the lexicon."""
    world.barrier()  # every rank has checked the run directory before rank 0 writes to it
    if world.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        config.dump(cfg, run_dir / CONFIG_FILE)
        tokenizer, train, valid = prepare(cfg, run_dir, say, progress)
    world.barrier()
    if not world.main:
        tokenizer, train, valid = prepare(cfg, run_dir, say)
    if lexicon is None and world.main:
        lexicon = build_lexicon(tokenizer, train, cfg.train.seed, say)
    return tokenizer, train, valid, lexicon
