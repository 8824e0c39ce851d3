"""Batches: padding/collation and length-bucketed, seeded batch order.

Legend: B batch, S source length, T target length.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from s2s.tokenizer import BOS, EOS, PAD


@dataclass
class Batch:
    src: Tensor  # [B, S] source ids, PAD-padded
    src_lengths: Tensor  # [B]
    tgt_in: Tensor | None = None  # [B, T] BOS y1 .. yn
    tgt_out: Tensor | None = None  # [B, T] y1 .. yn EOS
    n_tgt_tokens: int = 0  # non-pad target tokens (EOS included)

    @property
    def size(self) -> int:
        return self.src.shape[0]

    def to(self, device: torch.device) -> Batch:
        """The batch on `device` (lengths stay on the CPU: packing reads them there)."""
        if device.type == "cpu":
            return self
        tgt_in, tgt_out = (None if t is None else t.to(device, non_blocking=True)
                           for t in (self.tgt_in, self.tgt_out))
        return Batch(self.src.to(device, non_blocking=True), self.src_lengths, tgt_in, tgt_out,
                     self.n_tgt_tokens)


def pad(seqs: list[list[int]], prefix: list[int] = (), suffix: list[int] = ()) -> Tensor:
    width = max(len(s) for s in seqs) + len(prefix) + len(suffix)
    out = torch.full((len(seqs), width), PAD, dtype=torch.long)
    for row, seq in enumerate(seqs):
        full = [*prefix, *seq, *suffix]
        out[row, :len(full)] = torch.tensor(full, dtype=torch.long)
    return out


def collate(src: list[list[int]], tgt: list[list[int]] | None = None) -> Batch:
    lengths = torch.tensor([max(len(s), 1) for s in src], dtype=torch.long)
    src_t = pad([s if s else [EOS] for s in src])  # an empty source still has one position
    if tgt is None:
        return Batch(src_t, lengths)
    return Batch(src_t, lengths, pad(tgt, prefix=[BOS]), pad(tgt, suffix=[EOS]),
                 sum(len(t) + 1 for t in tgt))


class Batches(Sequence):
    """An epoch's batches as views into one sorted index array: batch i is
    order[starts[i]:ends[i]]. Two integer arrays, however large the corpus; a batch's index
    array is made when it is asked for."""

    def __init__(self, order: np.ndarray, bounds: np.ndarray, sequence: np.ndarray) -> None:
        self.order, self.bounds, self.sequence = order, bounds, sequence

    def __len__(self) -> int:
        return len(self.sequence)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        b = int(self.sequence[i])
        return self.order[self.bounds[b]:self.bounds[b + 1]]


def _token_bounds(lens: np.ndarray, budget: int) -> list[int]:
    """Where token-budget batches of consecutive examples with lengths `lens` start."""
    starts, begin, longest = [], 0, 0
    for i, n in enumerate(lens.tolist()):
        longest_here = max(longest, n + 1)
        if i > begin and longest_here * (i - begin + 1) > budget:
            starts.append(begin)
            begin, longest_here = i, n + 1
        longest = longest_here
    if begin < len(lens):
        starts.append(begin)
    return starts


def bucket_batches(src_lens: np.ndarray, tgt_lens: np.ndarray | None, batch_size: int,
                   batch_type: str = "sents", *, shuffle: bool = True, seed: int = 0,
                   epoch: int = 0, pool_factor: int = 100) -> Batches:
    """Group example indices into batches of similar length.

    The order is a pure function of (seed, epoch), so a run can be resumed at any batch.
    `batch_type='sents'`: `batch_size` sentences per batch; `'tokens'`: at most `batch_size`
    padded pieces per batch (count x longest side), but never fewer than one sentence. The
    indices are shuffled, cut into pools of about `pool_factor` batches, sorted by length
    within each pool and cut into batches; the batches are then shuffled."""
    n = len(src_lens)
    src_lens = np.asarray(src_lens)
    lens = src_lens if tgt_lens is None else np.maximum(src_lens, tgt_lens)
    # sort key: the target length first (the decoder steps over every padded target position;
    # the packed encoder skips source padding), then the source length; token batches are
    # packed by the longer side, so they sort by it
    key = lens if tgt_lens is None or batch_type == "tokens" else \
        np.asarray(tgt_lens, dtype=np.int64) * (int(np.max(src_lens, initial=0)) + 1) + src_lens
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n) if shuffle else np.arange(n)
    per_pool = batch_size * pool_factor if batch_type == "sents" else \
        max(1, batch_size // max(1, int(np.mean(lens)) if n else 1)) * pool_factor
    starts: list[int] = []
    for begin in range(0, n, per_pool):
        pool = order[begin:begin + per_pool]
        sorted_pool = pool[np.argsort(key[pool], kind="stable")]  # by length within the pool
        order[begin:begin + len(pool)] = sorted_pool
        if batch_type == "sents":
            starts.extend(range(begin, begin + len(pool), batch_size))
        else:
            starts.extend(begin + i for i in _token_bounds(lens[sorted_pool], batch_size))
    bounds = np.asarray([*starts, n], dtype=np.int64)
    count = len(starts)
    sequence = rng.permutation(count) if shuffle else np.arange(count)
    return Batches(order, bounds, sequence)
