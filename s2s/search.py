"""Greedy search, batched beam search, sampling and forced scoring. Search sees only the
model's encode / step / reorder (an `Ensemble` offers the same three).

Legend: B batch (sentences still searching), K beam, V target vocabulary, S source length,
T target length. A hypothesis's `log_prob` is the sum of its token log-probabilities, EOS
included; its `score` ranks it: log_prob / length penalty + coverage penalty. The options:
`SearchOptions` (s2s.options, re-exported here).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from s2s.ops.masks import length_mask
from s2s.options import SearchOptions
from s2s.options import check as check_option
from s2s.tokenizer import BOS, EOS, PAD


@dataclass
class Hypothesis:
    tokens: list[int]  # without BOS/EOS
    score: float
    log_prob: float = 0.0
    attention: list[list[float]] | None = None  # [len(tokens) + 1, S] when asked for


def length_penalty(lengths: Tensor, kind: str, alpha: float) -> Tensor:
    """Divisor of a hypothesis's log-probability; lengths count EOS. Non-decreasing in length.
    `kind`: one of s2s.options.LENGTH_PENALTIES (anything else is a ConfigError)."""
    lengths = lengths.float()
    if kind == "none":
        return torch.ones_like(lengths)
    if kind == "average":
        return lengths
    if kind == "gnmt":
        return ((5.0 + lengths) / 6.0) ** alpha
    check_option("length_penalty", kind)  # raises: not one of the allowed kinds
    raise AssertionError(f"length penalty {kind!r} is allowed but not implemented")


def coverage_penalty(coverage: Tensor, src_mask: Tensor, beta: float) -> Tensor:
    """GNMT: beta * sum over source positions of log(min(attention received, 1)); <= 0.
    coverage [N, S], src_mask [N, S] (True = real position) -> [N]."""
    if not beta:
        return coverage.new_zeros(coverage.shape[0])
    covered = coverage.clamp(min=1e-9, max=1.0).log().masked_fill(~src_mask, 0.0)
    return beta * covered.sum(dim=1)


def max_lengths(src_lengths: Tensor, a: float, b: int) -> Tensor:
    """Per-sentence output limit a*|src| + b (at least 1), EOS included. [B]"""
    return (src_lengths.float() * a + b).floor().long().clamp(min=1)


def _restrict(log_probs: Tensor, t: int, limits: Tensor, min_len: int, eos: int = EOS
              ) -> Tensor:
    """At step t (0-based): only EOS (column `eos`) where the limit is reached; no EOS before
    min_len."""
    at_limit = limits <= t + 1  # [N]
    if t >= min_len and not bool(at_limit.any()):
        return log_probs  # the common case: nothing to restrict
    eos_col = torch.arange(log_probs.shape[1], device=log_probs.device) == eos  # [V]
    at_limit = at_limit.unsqueeze(1)  # [N, 1]
    log_probs = torch.where(at_limit & ~eos_col, float("-inf"), log_probs)
    if t < min_len:
        log_probs = torch.where(~at_limit & eos_col, float("-inf"), log_probs)
    return log_probs


def _eos_column(vocab: Tensor | None) -> int:
    """EOS's column in the log-probabilities: its id, or its position in a shortlist."""
    return EOS if vocab is None else int(torch.searchsorted(vocab, EOS))


@torch.no_grad()
def greedy(model, src: Tensor, src_lengths: Tensor, opts: SearchOptions = SearchOptions(),
           generator: torch.Generator | None = None, vocab: Tensor | None = None
           ) -> list[list[Hypothesis]]:
    """Argmax decoding (or sampling, with opts.sampling, drawing from `generator`) with a
    shrinking batch: sentences that end leave it. `vocab`: a shortlist (sorted target ids,
    EOS among them) the search is restricted to."""
    eos = _eos_column(vocab)
    enc, state = model.encode(src, src_lengths)
    device, batch = src.device, src.shape[0]
    limits = max_lengths(src_lengths, opts.max_len_a, opts.max_len_b).to(device)
    results: list[Hypothesis | None] = [None] * batch
    active = torch.arange(batch, device=device)  # original positions of the rows still decoding
    tokens = torch.full((batch,), BOS, dtype=torch.long, device=device)
    history = tokens.new_empty(batch, 0)  # [B, t]
    scores = torch.zeros(batch, device=device)
    attn = [] if opts.attention else None  # per step: [B_t, S] rows of the active sentences
    attn_rows: list[Tensor] = []  # per step: which sentence each row belongs to
    for t in range(int(limits.max())):
        log_probs, state, weights = model.step(tokens, enc, state, vocab)  # [B, V]
        log_probs = _restrict(log_probs, t, limits[active], opts.min_len, eos)
        if opts.sampling:
            columns = _sample(log_probs, opts, generator)
            best = log_probs.gather(1, columns.unsqueeze(1)).squeeze(1)
        else:
            best, columns = log_probs.max(dim=-1)  # [B]
        ended = columns == eos
        tokens = columns if vocab is None else vocab[columns]  # target ids
        scores = scores + best
        history = torch.cat([history, tokens.unsqueeze(1)], dim=1)
        if attn is not None:
            attn.append(weights.float())
            attn_rows.append(active)
        if ended.any():
            for row in ended.nonzero().flatten().tolist():
                length = history.shape[1]
                results[int(active[row])] = Hypothesis(
                    history[row, :-1].tolist(), float(scores[row]), float(scores[row]),
                    _gather_attention(attn, attn_rows, int(active[row]), length))
            keep = (~ended).nonzero().flatten()
            if keep.numel() == 0:
                break
            active, scores, history, tokens = active[keep], scores[keep], history[keep], \
                tokens[keep]
            enc, state = model.reorder(enc, keep), model.reorder(state, keep)
    out = [r if r is not None else Hypothesis([], float("-inf"), float("-inf")) for r in results]
    penalised = _rescore(out, src_lengths, opts)
    return [[h] for h in penalised]


def _trace(attn: list[Tensor], parents: list[Tensor], row: int) -> list[list[float]]:
    """The attention rows of the beam hypothesis in `row` of the newest step, traced back
    through each step's parent rows."""
    rows = []
    for step in range(len(attn) - 1, -1, -1):
        rows.append(attn[step][row])
        if step:
            row = int(parents[step - 1][row])
    return torch.stack(rows[::-1]).tolist()


def _gather_attention(attn, attn_rows, sentence: int, length: int) -> list[list[float]] | None:
    """The attention rows of one greedy hypothesis over its `length` steps."""
    if attn is None:
        return None
    rows = []
    for weights, active in zip(attn[-length:], attn_rows[-length:]):
        row = (active == sentence).nonzero().flatten()
        rows.append(weights[int(row[0])].tolist())
    return rows


def _rescore(hyps: list[Hypothesis], src_lengths: Tensor, opts: SearchOptions
             ) -> list[Hypothesis]:
    """Greedy/sampled hypotheses' scores with the length penalty (coverage needs attention)."""
    if opts.length_penalty == "none":
        return hyps
    for h in hyps:
        if math.isfinite(h.log_prob):
            lp = float(length_penalty(torch.tensor([len(h.tokens) + 1]), opts.length_penalty,
                                      opts.alpha)[0])
            h.score = h.log_prob / lp
    return hyps


def _sample(log_probs: Tensor, opts: SearchOptions, generator) -> Tensor:
    """One token per row from softmax(log_probs / temperature), restricted to the top-k and
    to the smallest set with probability >= top_p."""
    logits = log_probs / max(opts.temperature, 1e-6)
    if opts.top_k:
        kth = logits.topk(min(opts.top_k, logits.shape[1]), dim=1).values[:, -1:]  # [N, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if opts.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=1, descending=True)
        probs = sorted_logits.softmax(dim=1)
        before = probs.cumsum(dim=1) - probs  # mass of the better tokens
        sorted_logits = sorted_logits.masked_fill(before >= opts.top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
    return torch.multinomial(logits.softmax(dim=1), 1, generator=generator).squeeze(1)


@torch.no_grad()
def beam_search(model, src: Tensor, src_lengths: Tensor, opts: SearchOptions,
                vocab: Tensor | None = None) -> list[list[Hypothesis]]:
    """Batched beam search over [B*K] rows.

    A hypothesis finishes when EOS is among the K best candidates of its sentence (so beam 1
    equals greedy). Live hypotheses are ranked by log-probability; finished ones by score. A
    sentence is done when its n-th best finished score is at least the best score any live
    hypothesis could still reach (log-probabilities only fall, the length penalty is largest at
    the length limit and the coverage penalty is at most 0), so the search is exact (over
    the shortlist `vocab`, sorted target ids with EOS among them, when given)."""
    device, batch, k = src.device, src.shape[0], opts.beam
    eos = _eos_column(vocab)
    nbest = min(opts.nbest, k)
    enc, state = model.encode(src, src_lengths)
    expand = torch.arange(batch, device=device).repeat_interleave(k)  # [B*K]
    enc, state = model.reorder(enc, expand), model.reorder(state, expand)
    limits = max_lengths(src_lengths, opts.max_len_a, opts.max_len_b).to(device)  # [B]
    src_mask = length_mask(src_lengths, src.shape[1], device).repeat_interleave(k, 0)  # [B*K, S]
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: keep one
    tokens = torch.full((batch * k,), BOS, dtype=torch.long, device=device)
    history = tokens.new_empty(batch * k, 0)  # [B*K, t]
    track = opts.attention or bool(opts.coverage_penalty)
    coverage = torch.zeros(batch * k, src.shape[1], device=device) if track else None
    # attention, when asked for: each step's weights and, for each row of the next step, the
    # row it came from; a finished hypothesis traces its rows back (linear in the length, not
    # a [B*K, t, S] tensor copied at every step)
    attn: list[Tensor] | None = [] if opts.attention else None
    parents: list[Tensor] = []
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    worst_kept = torch.full((batch,), float("-inf"), device=device)  # n-th best finished score
    active = torch.arange(batch, device=device)
    lp_limit = length_penalty(limits, opts.length_penalty, opts.alpha)  # [B]
    for t in range(int(limits.max())):
        log_probs, state, weights = model.step(tokens, enc, state, vocab)  # [B*K, V]
        width, n = log_probs.shape[1], len(active)
        log_probs = _restrict(log_probs, t, limits[active].repeat_interleave(k), opts.min_len,
                              eos)
        if track:
            coverage = coverage + weights.float()
        if attn is not None:
            attn.append(weights.float())
        cand = (scores.view(-1, 1) + log_probs).view(n, k * width)  # [B, K*V]
        top_s, top_i = cand.topk(min(2 * k, k * width), dim=1)  # [B, 2K]
        from_beam, token = top_i // width, top_i % width  # token: a column of log_probs
        is_eos = token == eos
        # finished hypotheses: EOS among the K best candidates
        eos_rows, eos_cols = (is_eos[:, :k] & top_s[:, :k].isfinite()).nonzero(as_tuple=True)
        if eos_rows.numel():
            source = eos_rows * k + from_beam[eos_rows, eos_cols]  # [E] rows of [B*K]
            raw = top_s[eos_rows, eos_cols]
            lp = length_penalty(torch.full_like(raw, t + 1), opts.length_penalty, opts.alpha)
            final = raw / lp
            if opts.coverage_penalty:
                final = final + coverage_penalty(coverage[source], src_mask[source],
                                                 opts.coverage_penalty)
            for e in (final > worst_kept[active[eos_rows]]).nonzero().flatten().tolist():
                sentence = int(active[eos_rows[e]])
                row = int(source[e])
                hyp = Hypothesis(history[row].tolist(), float(final[e]), float(raw[e]),
                                 _trace(attn, parents, row) if attn is not None else None)
                kept = sorted([*finished[sentence], hyp], key=lambda h: -h.score)[:nbest]
                finished[sentence] = kept
                if len(kept) == nbest:
                    worst_kept[sentence] = kept[-1].score
        # live hypotheses: the K best candidates that did not end
        live_s, pick = top_s.masked_fill(is_eos, float("-inf")).topk(k, dim=1)  # [B, K]
        rows = (torch.arange(n, device=device).unsqueeze(1) * k
                + from_beam.gather(1, pick)).view(-1)  # [B*K]
        tokens = token.gather(1, pick).view(-1)
        tokens = tokens if vocab is None else vocab[tokens]  # target ids
        history = torch.cat([history.index_select(0, rows), tokens.unsqueeze(1)], dim=1)
        state, scores = model.reorder(state, rows), live_s
        if coverage is not None:
            coverage = coverage.index_select(0, rows)
        parent = rows
        # the best score a live hypothesis can still reach: its log-prob (only falls) over the
        # largest length penalty (at the limit); coverage penalties are <= 0
        reachable = torch.where(live_s[:, 0] < 0, live_s[:, 0] / lp_limit[active],
                                live_s[:, 0])
        done = (worst_kept[active] >= reachable) | ~live_s[:, 0].isfinite()  # [B]
        if done.all():
            break
        if done.any():
            keep = (~done).nonzero().flatten()
            keep_rows = (keep.unsqueeze(1) * k + torch.arange(k, device=device)).view(-1)
            active, scores = active[keep], scores[keep]
            tokens, history = tokens[keep_rows], history[keep_rows]
            enc, state = model.reorder(enc, keep_rows), model.reorder(state, keep_rows)
            src_mask = src_mask[keep_rows]
            if coverage is not None:
                coverage = coverage[keep_rows]
            parent = rows[keep_rows]
        if attn is not None:
            parents.append(parent)
    return [hyps or [Hypothesis([], float("-inf"), float("-inf"))] for hyps in finished]


def sampler(opts: SearchOptions, device: torch.device | str = "cpu") -> torch.Generator | None:
    """The random generator of a sampling run: one per run, so that a seeded run's samples do
    not depend on how its sentences were batched."""
    if not opts.sampling or opts.seed is None:
        return None
    return torch.Generator(device=device).manual_seed(opts.seed)


def search(model, src: Tensor, src_lengths: Tensor, opts: SearchOptions = SearchOptions(),
           generator: torch.Generator | None = None, vocab: Tensor | None = None
           ) -> list[list[Hypothesis]]:
    """Up to opts.nbest hypotheses per sentence, best first. Sampling draws from `generator`
    (default: `sampler(opts)`, a new one per call). `vocab`: restrict the output to these
    target ids (a shortlist: sorted, EOS among them; see s2s.shortlist)."""
    if opts.sampling:
        generator = generator if generator is not None else sampler(opts, src.device)
        if opts.nbest <= 1:
            return greedy(model, src, src_lengths, opts, generator, vocab)
        repeat = torch.arange(src.shape[0]).repeat_interleave(opts.nbest)
        samples = greedy(model, src.index_select(0, repeat.to(src.device)),
                         src_lengths.index_select(0, repeat.to(src_lengths.device)), opts,
                         generator, vocab)
        return [sorted((s[0] for s in samples[i * opts.nbest:(i + 1) * opts.nbest]),
                       key=lambda h: -h.score) for i in range(src.shape[0])]
    if opts.beam <= 1 and not opts.coverage_penalty:
        return greedy(model, src, src_lengths, opts, vocab=vocab)
    return beam_search(model, src, src_lengths, opts, vocab)


@torch.no_grad()
def score(model, src: Tensor, src_lengths: Tensor, tgt_in: Tensor, tgt_out: Tensor) -> Tensor:
    """Forced decoding: the log-probability of each given target (EOS included). [B]"""
    enc, state = model.encode(src, src_lengths)
    total = torch.zeros(src.shape[0], device=src.device, dtype=torch.float64)
    for t in range(tgt_in.shape[1]):
        log_probs, state, _ = model.step(tgt_in[:, t], enc, state)  # [B, V]
        gold = tgt_out[:, t]
        picked = log_probs.gather(1, gold.clamp(min=0).unsqueeze(1)).squeeze(1)
        total = total + picked.masked_fill(gold == PAD, 0.0).double()
    return total


class Ensemble:
    """Several models sharing a target vocabulary, searched as one: log-probabilities (and
    attention weights) are averaged at every step."""

    def __init__(self, models: list) -> None:
        self.models = models

    def encode(self, src: Tensor, src_lengths: Tensor):
        pairs = [m.encode(src, src_lengths) for m in self.models]
        return tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)

    def step(self, tokens: Tensor, enc, state, vocab: Tensor | None = None):
        outs = [m.step(tokens, e, s, vocab) for m, e, s in zip(self.models, enc, state)]
        log_probs = torch.stack([o[0] for o in outs]).mean(dim=0)
        weights = torch.stack([o[2].float() for o in outs]).mean(dim=0)
        return log_probs, tuple(o[1] for o in outs), weights

    def reorder(self, obj, index: Tensor):
        return tuple(m.reorder(o, index) for m, o in zip(self.models, obj))
