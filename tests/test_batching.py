"""s2s/batching.py: bucket_batches is a seeded partition of the indices into length-homogeneous
batches within budget; collate pads with BOS/EOS/PAD where the model expects them."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from s2s.batching import Batch, bucket_batches, collate, pad
from s2s.tokenizer import BOS, EOS, PAD

N = 1000


@pytest.fixture(scope="module")
def lengths() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    src = rng.integers(1, 60, size=N)
    tgt = np.clip(src + rng.integers(-5, 6, size=N), 1, None)
    return src, tgt


def flat(batches: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(batches) if batches else np.array([], dtype=np.int64)


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


MODES = [("sents", 16), ("tokens", 400)]


@pytest.mark.parametrize("batch_type,size", MODES)
@pytest.mark.parametrize("shuffle", [True, False])
def test_every_index_exactly_once(lengths, batch_type, size, shuffle):
    src, tgt = lengths
    batches = bucket_batches(src, tgt, size, batch_type, shuffle=shuffle, seed=3, epoch=1)
    assert all(len(b) > 0 for b in batches)
    assert sorted(flat(batches).tolist()) == list(range(N))


@pytest.mark.parametrize("batch_type,size", MODES)
def test_source_only_lengths(lengths, batch_type, size):
    src, _ = lengths
    batches = bucket_batches(src, None, size, batch_type, seed=0)
    assert sorted(flat(batches).tolist()) == list(range(N))


@pytest.mark.parametrize("batch_type,size", MODES)
def test_order_is_a_function_of_seed_and_epoch(lengths, batch_type, size):
    src, tgt = lengths
    run = lambda seed, epoch: bucket_batches(src, tgt, size, batch_type, seed=seed,  # noqa: E731
                                             epoch=epoch)
    assert same(run(5, 2), run(5, 2))
    assert not same(run(5, 2), run(5, 3))
    assert not same(run(5, 2), run(6, 2))


def test_unshuffled_order_ignores_seed_and_epoch(lengths):
    src, tgt = lengths
    a = bucket_batches(src, tgt, 16, shuffle=False, seed=1, epoch=0)
    b = bucket_batches(src, tgt, 16, shuffle=False, seed=2, epoch=9)
    assert same(a, b)


def test_sents_batches_have_batch_size_sentences(lengths):
    src, tgt = lengths
    batches = bucket_batches(src, tgt, 16, "sents", seed=0, pool_factor=10)
    sizes = sorted(len(b) for b in batches)
    assert sizes[-1] == 16
    # only the last batch of each pool can be short
    pools = -(-N // (16 * 10))
    assert sum(s < 16 for s in sizes) <= pools


@pytest.mark.parametrize("budget", [50, 200, 1000])
def test_token_budget_respected(lengths, budget):
    src, tgt = lengths
    longest = np.maximum(src, tgt)
    for batch in bucket_batches(src, tgt, budget, "tokens", seed=4):
        padded = len(batch) * (int(longest[batch].max()) + 1)
        assert padded <= budget or len(batch) == 1, (len(batch), padded)


def test_sentence_longer_than_budget_gets_its_own_batch():
    src = np.array([3, 100, 4, 5, 2])
    batches = bucket_batches(src, src, 20, "tokens", seed=0)
    assert sorted(flat(batches).tolist()) == list(range(5))
    (alone,) = [b for b in batches if 1 in b.tolist()]
    assert alone.tolist() == [1]


def test_token_batches_use_their_budget(lengths):
    """Not one sentence per batch: budget-sized batches are actually filled."""
    src, tgt = lengths
    batches = bucket_batches(src, tgt, 1000, "tokens", seed=0)
    assert len(batches) < N / 10


@pytest.mark.parametrize("batch_type,size", MODES)
def test_batches_are_length_homogeneous(lengths, batch_type, size):
    src, tgt = lengths
    longest = np.maximum(src, tgt)
    batches = bucket_batches(src, tgt, size, batch_type, seed=0)
    spread = np.mean([np.ptp(longest[b]) for b in batches if len(b) > 1])
    # the same batch sizes filled in random order
    rng = np.random.default_rng(0)
    order, random_spreads, start = rng.permutation(N), [], 0
    for b in batches:
        chunk = order[start:start + len(b)]
        start += len(b)
        if len(chunk) > 1:
            random_spreads.append(np.ptp(longest[chunk]))
    assert spread < 0.25 * np.mean(random_spreads), (spread, np.mean(random_spreads))


def test_empty_input_gives_no_batches():
    empty = np.array([], dtype=np.int64)
    assert len(bucket_batches(empty, empty, 8, "sents")) == 0
    assert len(bucket_batches(empty, empty, 8, "tokens")) == 0


# --- collate ---------------------------------------------------------------------------------


def test_collate_shapes_and_special_placement():
    src = [[5, 6, 7], [8], [9, 10]]
    tgt = [[11, 12], [13, 14, 15, 16], []]
    batch = collate(src, tgt)
    assert isinstance(batch, Batch) and batch.size == 3
    assert batch.src.shape == (3, 3) and batch.src.dtype == torch.long
    assert batch.src_lengths.tolist() == [3, 1, 2]
    assert batch.src.tolist() == [[5, 6, 7], [8, PAD, PAD], [9, 10, PAD]]
    assert batch.tgt_in.shape == batch.tgt_out.shape == (3, 5)
    assert batch.tgt_in.tolist() == [[BOS, 11, 12, PAD, PAD], [BOS, 13, 14, 15, 16],
                                     [BOS, PAD, PAD, PAD, PAD]]
    assert batch.tgt_out.tolist() == [[11, 12, EOS, PAD, PAD], [13, 14, 15, 16, EOS],
                                      [EOS, PAD, PAD, PAD, PAD]]
    assert batch.n_tgt_tokens == 3 + 5 + 1 == int((batch.tgt_out != PAD).sum())


def test_collate_target_in_and_out_are_shifted_copies():
    rng = np.random.default_rng(1)
    tgt = [rng.integers(4, 50, size=rng.integers(0, 9)).tolist() for _ in range(12)]
    batch = collate([[4]] * 12, tgt)
    for row, seq in enumerate(tgt):
        n = len(seq) + 1
        assert batch.tgt_in[row, 1:n].tolist() == batch.tgt_out[row, :n - 1].tolist() == seq
        assert batch.tgt_in[row, 0] == BOS and batch.tgt_out[row, n - 1] == EOS
        assert (batch.tgt_in[row, n:] == PAD).all() and (batch.tgt_out[row, n:] == PAD).all()


def test_collate_without_target():
    batch = collate([[4, 5], [6]])
    assert batch.tgt_in is None and batch.tgt_out is None and batch.n_tgt_tokens == 0
    assert batch.src_lengths.tolist() == [2, 1]


def test_empty_source_gets_length_one():
    batch = collate([[], [4, 5, 6]], [[7], [8]])
    assert batch.src_lengths.tolist() == [1, 3]
    assert batch.src.shape == (2, 3)
    assert batch.src[0, 0] != PAD  # the one position is a real token (EOS), not padding
    assert (batch.src[0, 1:] == PAD).all()
    only_empty = collate([[]])
    assert only_empty.src.shape == (1, 1) and only_empty.src_lengths.tolist() == [1]


def test_pad_prefix_suffix():
    out = pad([[1], [2, 3]], prefix=[9], suffix=[8])
    assert out.tolist() == [[9, 1, 8, PAD], [9, 2, 3, 8]]
