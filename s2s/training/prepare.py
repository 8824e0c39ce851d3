"""Preparation: the data of a run → its tokenizer (trained once per run) → encoded corpora, and
the target-vocabulary lexicon of `s2s translate --shortlist`."""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s2s import config, shortlist
from s2s.errors import DataError
from s2s.tokenizer import Tokenizer


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
    ds = ds.map(encode, batched=True, batch_size=2000, new_fingerprint=digest.hexdigest()[:32],
                desc=f"tokenizing {name}")
    src_len, tgt_len = np.asarray(ds["src_len"]), np.asarray(ds["tgt_len"])
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


def prepare(cfg: config.Config, run_dir: Path, say: Callable[[str], None]
            ) -> tuple[Tokenizer, Corpus, Corpus]:
    """The run's tokenizer (trained unless the run has one) and its encoded splits."""
    from s2s import data

    train_raw = data.load_split(cfg.data, cfg.data.train)
    valid_raw = data.load_split(cfg.data, cfg.data.valid)
    if len(train_raw) == 0:
        raise DataError(f"training split '{cfg.data.train}' is empty")
    if Tokenizer.exists(run_dir):
        tokenizer = Tokenizer.load(run_dir)
    else:
        say(f"training SentencePiece ({cfg.data.spm_model_type}, {cfg.data.vocab_size} pieces, "
            f"{'joint' if cfg.data.joint_vocab else 'separate'}) ...")
        tokenizer = Tokenizer.train(_Column(train_raw, "src"), _Column(train_raw, "tgt"),
                                    cfg.data, run_dir)
    train = _encode(train_raw, tokenizer, cfg.data.max_len, "train", say)
    valid = _encode(valid_raw, tokenizer, cfg.data.max_len, "valid", say)
    valid.raw_src, valid.raw_tgt = list(valid_raw["src"]), list(valid_raw["tgt"])
    return tokenizer, train, valid


def build_lexicon(tokenizer: Tokenizer, train: Corpus, seed: int,
                  say: Callable[[str], None]) -> dict[str, torch.Tensor]:
    """The target-vocabulary lexicon of `s2s translate --shortlist`, from the encoded training
    split (stored in every checkpoint; `s2s lexicon` rebuilds it for older runs)."""
    return shortlist.build_for(train.data, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size,
                               seed, say)
