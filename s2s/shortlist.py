"""Target-vocabulary shortlists (Marian / Sockeye style): decode each batch over the target
pieces its sources can plausibly produce instead of the whole vocabulary.

A run's *lexicon* is built once from its encoded training pairs: IBM Model 1 translation
probabilities p(t | s) estimated by a few EM iterations over the pieces that co-occur, the top
`LEXICON_K` target pieces of each source piece, and the target pieces by frequency. At search
time a batch's shortlist is the union of the `frequent` most frequent target pieces, the `k` best
translations of every source piece in the batch, and EOS/UNK. Log-probabilities are then
normalised over the shortlist: approximate, and much faster where the output layer dominates.

Legend: P co-occurring (source, target) piece pairs, N target tokens, Vs / Vt vocabularies.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from s2s.errors import CheckpointError
from s2s.tokenizer import EOS, PAD, UNK

log = logging.getLogger("s2s")

LEXICON_FILE = "lexicon.pt"
LEXICON_K = 100  # candidates kept per source piece (a search uses its first --shortlist k)
MAX_ENTRIES = 10_000_000  # source x target positions used for EM (~1 GB transient at most)
ITERATIONS = 5
SAMPLE_ROWS, SAMPLE_BLOCK = 100_000, 1_000  # pairs a large corpus's lexicon is estimated on


def build(src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]], src_vocab: int,
          tgt_vocab: int, *, k: int = LEXICON_K, iterations: int = ITERATIONS,
          max_entries: int = MAX_ENTRIES) -> dict[str, Tensor]:
    """The lexicon of aligned id sequences: {"table": int32 [Vs, k] target ids, best first
    (padded with EOS), "frequent": int32 target ids seen in `tgt`, most frequent first}.
    Pairs beyond `max_entries` source x target positions are left out of the EM (the first
    ones are used: pass a shuffled sample for a large corpus)."""
    src_len = np.fromiter((len(s) for s in src), dtype=np.int64, count=len(src))
    tgt_len = np.fromiter((len(t) for t in tgt), dtype=np.int64, count=len(tgt))
    tgt_flat = np.fromiter((i for t in tgt for i in t), dtype=np.int64, count=int(tgt_len.sum()))
    counts = np.bincount(tgt_flat, minlength=tgt_vocab)
    counts[[PAD]] = 0
    frequent = np.argsort(-counts, kind="stable")[:int((counts > 0).sum())]

    sizes = src_len * tgt_len
    use = int(np.searchsorted(np.cumsum(sizes), max_entries, side="right"))
    src_len, tgt_len, sizes = src_len[:use], tgt_len[:use], sizes[:use]
    src_flat = np.fromiter((i for s in src[:use] for i in s), dtype=np.int64,
                           count=int(src_len.sum()))
    tgt_flat = tgt_flat[:int(tgt_len.sum())]
    table = np.full((src_vocab, k), EOS, dtype=np.int32)
    if sizes.sum():
        _fill_table(table, src_flat, tgt_flat, src_len, tgt_len, sizes, tgt_vocab, iterations)
    return {"table": torch.from_numpy(table),
            "frequent": torch.from_numpy(frequent.astype(np.int32))}


def _fill_table(table: np.ndarray, src_flat: np.ndarray, tgt_flat: np.ndarray,
                src_len: np.ndarray, tgt_len: np.ndarray, sizes: np.ndarray, tgt_vocab: int,
                iterations: int) -> None:
    """IBM model 1 by EM over every co-occurring (source, target) position pair; writes the
    best targets of each source piece into `table` [Vs, k], best first."""
    src_vocab, k = table.shape
    use = len(sizes)
    # every (source position, target position) of every pair: entry e of pair n
    pair = np.repeat(np.arange(use), sizes)  # [E]
    local = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)  # [E]
    i, j = local // tgt_len[pair], local % tgt_len[pair]
    src_off, tgt_off = np.cumsum(src_len) - src_len, np.cumsum(tgt_len) - tgt_len
    s = src_flat[src_off[pair] + i]  # [E] source piece
    position = tgt_off[pair] + j  # [E] target token it may explain
    keys, pid = np.unique(s * tgt_vocab + tgt_flat[position], return_inverse=True)  # [P], [E]
    key_src, key_tgt = keys // tgt_vocab, keys % tgt_vocab  # [P]
    pid, position = torch.from_numpy(pid), torch.from_numpy(position)
    key_s = torch.from_numpy(key_src)
    prob = torch.ones(len(keys), dtype=torch.float64)  # p(t | s), uniform start
    for _ in range(iterations):
        w = prob[pid]  # [E]
        explained = torch.zeros(len(tgt_flat), dtype=torch.float64).index_add_(0, position, w)
        count = torch.zeros(len(keys), dtype=torch.float64).index_add_(
            0, pid, w / explained[position])  # expected counts [P]
        total = torch.zeros(src_vocab, dtype=torch.float64).index_add_(0, key_s, count)
        prob = count / total[key_s]
    # the k best targets of every source piece: sort by (source, -p)
    order = np.lexsort((-prob.numpy(), key_src))
    ranked_s, ranked_t = key_src[order], key_tgt[order]
    first = np.searchsorted(ranked_s, ranked_s, side="left")
    rank = np.arange(len(order)) - first
    keep = rank < k
    table[ranked_s[keep], rank[keep]] = ranked_t[keep]


def build_for(corpus, src_vocab: int, tgt_vocab: int, seed: int = 0,
              say: Callable[[str], None] = log.info) -> dict[str, Tensor]:
    """The lexicon of an encoded training split (a datasets.Dataset with src_ids/tgt_ids),
    estimated on a seeded random sample of SAMPLE_ROWS pairs when the split is larger: blocks of
    SAMPLE_BLOCK consecutive pairs at random places, so that reading them touches only those
    parts of the memory-mapped corpus (single random rows would touch all of it)."""
    n, rng = len(corpus), np.random.default_rng(seed)
    if n <= SAMPLE_ROWS:
        sample = corpus.select(rng.permutation(n))
    else:
        blocks = rng.choice(n // SAMPLE_BLOCK, SAMPLE_ROWS // SAMPLE_BLOCK, replace=False)
        sample = corpus.select((blocks[:, None] * SAMPLE_BLOCK + np.arange(SAMPLE_BLOCK)).ravel())
    say(f"building the target-vocabulary lexicon (IBM model 1, {ITERATIONS} iterations) ...")
    return build(sample["src_ids"], sample["tgt_ids"], src_vocab, tgt_vocab)


def save(lexicon: dict[str, Tensor], path: str | Path) -> None:
    """Write a lexicon file atomically (a run's LEXICON_FILE is used instead of the lexicon
    inside its checkpoints)."""
    from s2s import checkpoint

    checkpoint.save({"lexicon": lexicon}, path)


def load(path: str | Path, tgt_vocab: int | None = None) -> dict[str, Tensor] | None:
    """A lexicon file (checked against a target vocabulary of `tgt_vocab`), or None if there
    is no such file."""
    from s2s import checkpoint

    if not Path(path).is_file():
        return None
    return checked(checkpoint.load(path, entry="lexicon")["lexicon"], str(path), tgt_vocab)


def checked(lexicon, where: str, tgt_vocab: int | None = None) -> dict[str, Tensor]:
    """`lexicon` if it is a well-formed one (else CheckpointError naming `where`)."""
    ok = isinstance(lexicon, dict) and isinstance(lexicon.get("table"), Tensor) \
        and isinstance(lexicon.get("frequent"), Tensor) and lexicon["table"].dim() == 2 \
        and lexicon["frequent"].dim() == 1 and not lexicon["table"].is_floating_point()
    if ok and tgt_vocab is not None:
        ids = torch.cat([lexicon["table"].flatten(), lexicon["frequent"]])
        ok = not ids.numel() or (int(ids.min()) >= 0 and int(ids.max()) < tgt_vocab)
    if not ok:
        raise CheckpointError(f"{where}: the target-vocabulary lexicon is malformed; rebuild it "
                              f"with `s2s lexicon RUN`")
    return lexicon


def select(lexicon: dict[str, Tensor], src: Tensor, k: int, frequent: int) -> Tensor:
    """The shortlist of a batch src [B, S] (PAD-padded): sorted unique target ids [V'] holding
    the `frequent` most frequent target pieces, the k best translations of each source piece,
    EOS and UNK."""
    table = lexicon["table"]
    pieces = src[src != PAD].clamp(max=table.shape[0] - 1).to(table.device)
    candidates = [lexicon["frequent"][:frequent].long(), table[pieces, :k].flatten().long(),
                  torch.tensor([EOS, UNK])]
    return torch.unique(torch.cat(candidates)).to(src.device)
