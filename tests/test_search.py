"""s2s.search on tiny random models: beam 1 == greedy, beam search is exact when the beam covers
the search space, batching changes nothing, and every score is the teacher-forced sum."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from tiny_models import padded, sources, tiny_model

from s2s import search
from s2s.model import Seq2Seq
from s2s.tokenizer import BOS, EOS


@torch.no_grad()
def forced_score(model: Seq2Seq, src: list[int], tokens: list[int]) -> float:
    """Sum of model.step log-probabilities of `tokens` + EOS, teacher-forced, sentence alone."""
    enc, state = model.encode(*padded([src]))
    prev, total = BOS, 0.0
    for token in [*tokens, EOS]:
        log_probs, state, _ = model.step(torch.tensor([prev]), enc, state)
        total += float(log_probs[0, token])
        prev = token
    return total


@torch.no_grad()
def exhaustive_best(model: Seq2Seq, src: list[int], vocab: int, limit: int
                    ) -> list[tuple[float, list[int]]]:
    """Every output with at most `limit` tokens, EOS included, best first."""
    non_eos = [t for t in range(vocab) if t != EOS]
    scored = [(forced_score(model, src, list(seq)), list(seq))
              for n in range(limit) for seq in itertools.product(non_eos, repeat=n)]
    return sorted(scored, key=lambda x: -x[0])


def _best(found):
    return [hyps[0] for hyps in found]


def greedy(model, src, lengths, **options):
    return _best(search.greedy(model, src, lengths, search.SearchOptions(**options)))


def beam_search(model, src, lengths, **options):
    """The general K-beam path, even for beam 1 (search() sends beam 1 to greedy)."""
    return _best(search.beam_search(model, src, lengths, search.SearchOptions(**options)))


def run_search(model, src, lengths, **options):
    return _best(search.search(model, src, lengths, search.SearchOptions(**options)))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("seed", range(4))
def test_beam_1_equals_greedy(seed, cell):
    model = tiny_model(seed, cell=cell)
    src, lengths = padded(sources(seed, 6))
    expected = greedy(model, src, lengths)
    for hyps in (beam_search(model, src, lengths, beam=1), run_search(model, src, lengths, beam=1)):
        assert [h.tokens for h in hyps] == [h.tokens for h in expected]
        assert [h.score for h in hyps] == [h.score for h in expected]  # exactly


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("limit", [3, 4])
def test_beam_finds_the_exhaustive_best(seed, cell, limit):
    """vocab 5 (4 specials + 1 word), outputs of at most `limit` tokens (EOS included); a beam
    wider than any step's candidate set makes beam search exact."""
    vocab = 5
    model = tiny_model(seed, tgt_vocab=vocab, cell=cell)
    srcs = sources(seed, 3)
    beam = vocab ** (limit - 1)
    hyps = beam_search(model, *padded(srcs), beam=beam, max_len_a=0, max_len_b=limit)
    for src, hyp in zip(srcs, hyps):
        ranked = exhaustive_best(model, src, vocab, limit)
        (best_score, best_tokens), (second_score, _) = ranked[0], ranked[1]
        assert hyp.score == pytest.approx(best_score, abs=1e-5)
        if best_score - second_score > 1e-5:  # a unique optimum: the same tokens
            assert hyp.tokens == best_tokens
        assert hyp.score == pytest.approx(forced_score(model, src, hyp.tokens), abs=1e-5)


def test_exhaustive_check_has_teeth():
    """On these models greedy often misses the optimum and the optimum is often non-empty, so
    test_beam_finds_the_exhaustive_best distinguishes an exact search from a sloppy one."""
    greedy_missed = non_empty = 0
    for seed in range(5):
        model = tiny_model(seed, tgt_vocab=5)
        srcs = sources(seed, 3)
        for src, hyp in zip(srcs, greedy(model, *padded(srcs), max_len_a=0, max_len_b=4)):
            best_score, best_tokens = exhaustive_best(model, src, 5, 4)[0]
            greedy_missed += hyp.score < best_score - 1e-5
            non_empty += len(best_tokens) > 0
    assert greedy_missed >= 3 and non_empty >= 3


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("beam", [1, 5])
@pytest.mark.parametrize("seed", range(3))
def test_batch_equals_one_at_a_time(seed, beam, cell):
    """A batch of 64 sentences and the same sentences one at a time: identical results."""
    model = tiny_model(seed, cell=cell)
    srcs = sources(seed, 64)
    together = run_search(model, *padded(srcs), beam=beam)
    for src, hyp in zip(srcs, together):
        [alone] = run_search(model, *padded([src]), beam=beam)
        assert hyp.tokens == alone.tokens
        assert hyp.score == pytest.approx(alone.score, abs=1e-5)


@pytest.mark.parametrize("beam", [1, 2, 5])
@pytest.mark.parametrize("seed", range(3))
def test_score_is_the_teacher_forced_sum(seed, beam):
    model = tiny_model(seed, eos_shift=-4.0)
    srcs = sources(seed, 6)
    hyps = run_search(model, *padded(srcs), beam=beam, max_len_a=0, max_len_b=6)
    for src, hyp in zip(srcs, hyps):
        assert EOS not in hyp.tokens
        assert hyp.score <= 0 and math.isfinite(hyp.score)
        assert hyp.score == pytest.approx(forced_score(model, src, hyp.tokens), abs=1e-5)
    assert any(h.tokens for h in hyps)  # the check saw real hypotheses, not only EOS


@pytest.mark.parametrize("beam", [1, 3])
def test_length_limits_are_per_sentence(beam):
    """max length a*|src| + b tokens, EOS included; the model here never wants to stop."""
    model = tiny_model(0, eos_shift=-50.0)
    srcs = [[4], [4, 5, 6], [5, 5, 5, 5, 5, 5]]
    hyps = run_search(model, *padded(srcs), beam=beam, max_len_a=1.0, max_len_b=1)
    assert [len(h.tokens) for h in hyps] == [len(s) for s in srcs]  # |src| + 1 - EOS
    for src, hyp in zip(srcs, hyps):
        assert hyp.score == pytest.approx(forced_score(model, src, hyp.tokens), abs=1e-5)


@pytest.mark.parametrize("beam", [1, 4])
def test_limit_of_one_gives_empty_outputs(beam):
    model = tiny_model(1, eos_shift=-50.0)
    srcs = sources(1, 3)
    hyps = run_search(model, *padded(srcs), beam=beam, max_len_a=0, max_len_b=0)
    assert [h.tokens for h in hyps] == [[], [], []]
    for src, hyp in zip(srcs, hyps):
        assert hyp.score == pytest.approx(forced_score(model, src, []), abs=1e-5)


def test_max_lengths():
    lengths = torch.tensor([1, 4, 10])
    assert search.max_lengths(lengths, 2.0, 10).tolist() == [12, 18, 30]
    assert search.max_lengths(lengths, 1.5, 0).tolist() == [1, 6, 15]
    assert search.max_lengths(lengths, 0.0, 0).tolist() == [1, 1, 1]  # at least EOS


def test_search_does_not_change_the_model_or_need_grad():
    model = tiny_model(2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hyps = run_search(model, *padded(sources(2, 3)), beam=3)
    assert all(isinstance(h.score, float) for h in hyps)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# -- length and coverage penalties, n-best, min length ------------------------------------------


def _penalised(model, src, vocab, limit, kind, alpha=0.6):
    """Exhaustive ranking by log-prob / length penalty (length counts EOS)."""
    ranked = []
    for raw, tokens in exhaustive_best(model, src, vocab, limit):
        lp = float(search.length_penalty(torch.tensor([len(tokens) + 1]), kind, alpha)[0])
        ranked.append((raw / lp, tokens))
    return sorted(ranked, key=lambda x: -x[0])


@pytest.mark.parametrize("kind", ["average", "gnmt"])
@pytest.mark.parametrize("seed", range(4))
def test_length_penalised_beam_is_exact(seed, kind):
    vocab, limit = 5, 4
    model = tiny_model(seed, tgt_vocab=vocab)
    srcs = sources(seed, 3)
    hyps = beam_search(model, *padded(srcs), beam=vocab ** (limit - 1), max_len_a=0,
                       max_len_b=limit, length_penalty=kind, alpha=1.0)
    for src, hyp in zip(srcs, hyps):
        ranked = _penalised(model, src, vocab, limit, kind, alpha=1.0)
        assert hyp.score == pytest.approx(ranked[0][0], abs=1e-6)
        assert hyp.log_prob == pytest.approx(forced_score(model, src, hyp.tokens), abs=1e-6)


def test_length_penalty_changes_the_winner_somewhere():
    """The penalised test above can fail: on these models the penalty picks other outputs."""
    changed = 0
    for seed in range(4):
        model = tiny_model(seed, tgt_vocab=5)
        for src in sources(seed, 3):
            plain = exhaustive_best(model, src, 5, 4)[0][1]
            changed += _penalised(model, src, 5, 4, "average", 1.0)[0][1] != plain
    assert changed >= 1


@pytest.mark.parametrize("seed", range(3))
def test_nbest_is_the_exhaustive_top_n(seed):
    vocab, limit, n = 5, 3, 4
    model = tiny_model(seed, tgt_vocab=vocab)
    srcs = sources(seed, 2)
    opts = search.SearchOptions(beam=vocab ** (limit - 1), nbest=n, max_len_a=0,
                                max_len_b=limit)
    found = search.beam_search(model, *padded(srcs), opts)
    for src, hyps in zip(srcs, found):
        ranked = exhaustive_best(model, src, vocab, limit)[:n]
        assert len(hyps) == n
        assert [h.score for h in hyps] == pytest.approx([r[0] for r in ranked], abs=1e-6)
        assert len({tuple(h.tokens) for h in hyps}) == n


def test_min_len_forbids_early_eos():
    model = tiny_model(3, eos_shift=6.0)  # wants to stop at once
    srcs = sources(3, 4)
    assert all(not h.tokens for h in greedy(model, *padded(srcs)))
    for beam in (1, 3):
        hyps = run_search(model, *padded(srcs), beam=beam, min_len=2)
        assert all(len(h.tokens) >= 2 for h in hyps)


def test_coverage_penalty_matches_its_formula():
    model = tiny_model(1)
    srcs = sources(1, 4, min_len=2)
    hyps = beam_search(model, *padded(srcs), beam=3, coverage_penalty=0.4, attention=True)
    for src, hyp in zip(srcs, hyps):
        attention = torch.tensor(hyp.attention)  # [len + 1, S_padded]
        assert attention.shape[0] == len(hyp.tokens) + 1
        received = attention[:, :len(src)].sum(dim=0).clamp(max=1.0)
        expected = hyp.log_prob + 0.4 * float(received.log().sum())
        assert hyp.score == pytest.approx(expected, abs=1e-6)
        assert hyp.score < hyp.log_prob  # some source piece was under-attended


@pytest.mark.parametrize("beam", [1, 4])
def test_attention_rows_are_distributions_and_batch_independent(beam):
    model = tiny_model(0)
    srcs = sources(0, 5)
    together = run_search(model, *padded(srcs), beam=beam, attention=True)
    for src, hyp in zip(srcs, together):
        attention = torch.tensor(hyp.attention)[:, :len(src)]
        assert attention.shape == (len(hyp.tokens) + 1, len(src))
        torch.testing.assert_close(attention.sum(dim=1), torch.ones(attention.shape[0]),
                                   rtol=0, atol=1e-6)
        [alone] = run_search(model, *padded([src]), beam=beam, attention=True)
        torch.testing.assert_close(attention, torch.tensor(alone.attention), rtol=0, atol=1e-9)


@pytest.mark.parametrize("beam", [2, 5])
def test_beam_alignments_are_the_attention_of_each_hypothesis_s_own_tokens(beam):
    """Traced back through the parent rows, a hypothesis's alignment is exactly the attention
    the model gives when it reads that hypothesis (BOS y1 .. yn) by teacher forcing."""
    model = tiny_model(1)
    srcs = sources(1, 6)
    hyps = search.search(model, *padded(srcs), search.SearchOptions(beam=beam, nbest=2,
                                                                  attention=True))
    with torch.no_grad():
        for src, found in zip(srcs, hyps):
            for hyp in found:
                enc, state = model.encode(*padded([src]))
                rows = []
                for token in [BOS, *hyp.tokens]:
                    _, state, weights = model.step(torch.tensor([token]), enc, state)
                    rows.append(weights[0])
                torch.testing.assert_close(torch.tensor(hyp.attention)[:, :len(src)],
                                           torch.stack(rows)[:, :len(src)].float(), rtol=0,
                                           atol=1e-5)


# -- sampling, forced scoring, ensembles ---------------------------------------------------------


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    model = tiny_model(2)
    src, lengths = padded(sources(2, 8))
    a = run_search(model, src, lengths, sampling=True, seed=7, temperature=1.5)
    b = run_search(model, src, lengths, sampling=True, seed=7, temperature=1.5)
    assert [h.tokens for h in a] == [h.tokens for h in b]
    others = [run_search(model, src, lengths, sampling=True, seed=s, temperature=1.5)
              for s in range(8, 12)]
    assert any([h.tokens for h in o] != [h.tokens for h in a] for o in others)
    top1 = run_search(model, src, lengths, sampling=True, seed=3, top_k=1)
    assert [h.tokens for h in top1] == [h.tokens for h in greedy(model, src, lengths)]
    nucleus = run_search(model, src, lengths, sampling=True, seed=3, top_p=1e-6)
    assert [h.tokens for h in nucleus] == [h.tokens for h in greedy(model, src, lengths)]
    for s, hyp in zip(sources(2, 8), a):  # a sample's log_prob is its model log-probability
        assert hyp.log_prob == pytest.approx(forced_score(model, s, hyp.tokens), abs=1e-6)


def test_sampled_nbest_gives_n_samples():
    model = tiny_model(2)
    found = search.search(model, *padded(sources(2, 3)),
                          search.SearchOptions(sampling=True, nbest=5, seed=1, temperature=2.0))
    assert [len(hyps) for hyps in found] == [5, 5, 5]
    assert all(hyps[0].score >= hyps[-1].score for hyps in found)


def test_forced_scoring_equals_the_teacher_forced_sum():
    from s2s.batching import collate

    model = tiny_model(4)
    srcs = sources(4, 5)
    tgts = [[4, 5], [], [5, 5, 4, 4], [4], [5, 4, 5]]
    batch = collate(srcs, tgts)
    scores = search.score(model, batch.src, batch.src_lengths, batch.tgt_in, batch.tgt_out)
    for src, tgt, value in zip(srcs, tgts, scores.tolist()):
        assert value == pytest.approx(forced_score(model, src, tgt), abs=1e-5)


def test_ensemble_averages_log_probabilities():
    a, b = tiny_model(5), tiny_model(6)
    ensemble = search.Ensemble([a, b])
    src, lengths = padded(sources(5, 4))
    enc, state = ensemble.encode(src, lengths)
    tokens = torch.full((4,), BOS)
    log_probs, _, weights = ensemble.step(tokens, enc, state)
    expected = [m.step(tokens, *m.encode(src, lengths))[0] for m in (a, b)]
    torch.testing.assert_close(log_probs, (expected[0] + expected[1]) / 2)
    # an ensemble of one model twice searches exactly like the model
    twice = search.Ensemble([a, a])
    for beam in (1, 3):
        assert [h.tokens for h in run_search(twice, src, lengths, beam=beam)] == \
            [h.tokens for h in run_search(a, src, lengths, beam=beam)]
