"""Greedy and batched beam search. Search sees only the model's encode / step / reorder.

Legend: B batch (sentences still searching), K beam, V target vocabulary, S source length.
Scores are sums of token log-probabilities, EOS included.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from s2s.tokenizer import BOS, EOS


@dataclass
class Hypothesis:
    tokens: list[int]  # without BOS/EOS
    score: float


def max_lengths(src_lengths: Tensor, a: float, b: int) -> Tensor:
    """Per-sentence output limit a*|src| + b (at least 1), EOS included. [B]"""
    return (src_lengths.float() * a + b).floor().long().clamp(min=1)


@torch.no_grad()
def greedy(model, src: Tensor, src_lengths: Tensor, *, max_len_a: float = 2.0,
           max_len_b: int = 10) -> list[Hypothesis]:
    enc, state = model.encode(src, src_lengths)
    limits = max_lengths(src_lengths, max_len_a, max_len_b)
    batch = src.shape[0]
    results: list[Hypothesis | None] = [None] * batch
    active = torch.arange(batch)  # original positions of the rows still decoding
    tokens = torch.full((batch,), BOS, dtype=torch.long, device=src.device)
    history = tokens.new_empty(batch, 0)  # [B, t]
    scores = torch.zeros(batch)
    for t in range(int(limits.max())):
        log_probs, state, _ = model.step(tokens, enc, state)  # [B, V]
        at_limit = (limits[active] <= t + 1).to(log_probs.device)
        if at_limit.any():
            log_probs[at_limit] = torch.where(
                torch.arange(log_probs.shape[1], device=log_probs.device) == EOS,
                log_probs[at_limit], float("-inf"))
        best, tokens = log_probs.max(dim=-1)  # [B]
        scores = scores + best.cpu()
        history = torch.cat([history, tokens.unsqueeze(1)], dim=1)
        ended = (tokens == EOS).cpu()
        if ended.any():
            for row in ended.nonzero().flatten().tolist():
                results[active[row]] = Hypothesis(history[row, :-1].tolist(), float(scores[row]))
            keep = (~ended).nonzero().flatten()
            if keep.numel() == 0:
                break
            active, scores, history = active[keep], scores[keep], history[keep]
            idx = keep.to(src.device)
            tokens, enc, state = tokens[idx], model.reorder(enc, idx), model.reorder(state, idx)
    return [r if r is not None else Hypothesis([], float("-inf")) for r in results]


@torch.no_grad()
def beam_search(model, src: Tensor, src_lengths: Tensor, *, beam: int = 5,
                max_len_a: float = 2.0, max_len_b: int = 10) -> list[Hypothesis]:
    """Batched beam search over [B*K] rows. A hypothesis finishes when EOS is among the K best
    candidates of its sentence (so beam 1 equals greedy); a sentence is done when its best
    finished score is at least its best live score (scores only fall, so this is exact)."""
    if beam == 1:
        return greedy(model, src, src_lengths, max_len_a=max_len_a, max_len_b=max_len_b)
    device, batch, k = src.device, src.shape[0], beam
    enc, state = model.encode(src, src_lengths)
    expand = torch.arange(batch, device=device).repeat_interleave(k)  # [B*K]
    enc, state = model.reorder(enc, expand), model.reorder(state, expand)
    limits = max_lengths(src_lengths, max_len_a, max_len_b).to(device)  # [B]
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: keep one
    tokens = torch.full((batch * k,), BOS, dtype=torch.long, device=device)
    history = tokens.new_empty(batch * k, 0)  # [B*K, t]
    best_score = torch.full((batch,), float("-inf"), device=device)
    best: list[list[int]] = [[] for _ in range(batch)]
    active = torch.arange(batch, device=device)
    for t in range(int(limits.max())):
        log_probs, state, _ = model.step(tokens, enc, state)  # [B*K, V]
        vocab = log_probs.shape[1]
        at_limit = (limits[active] <= t + 1).repeat_interleave(k)  # [B*K]
        if at_limit.any():
            only_eos = torch.full_like(log_probs[0], float("-inf"))
            only_eos[EOS] = 0.0
            log_probs = torch.where(at_limit.unsqueeze(1), log_probs + only_eos, log_probs)
        n = len(active)
        cand = (scores.view(-1, 1) + log_probs).view(n, k * vocab)  # [B, K*V]
        top_s, top_i = cand.topk(min(2 * k, k * vocab), dim=1)  # [B, 2K]
        from_beam, token = top_i // vocab, top_i % vocab
        is_eos = token == EOS
        # finished hypotheses: EOS among the K best candidates
        eos_s = top_s.masked_fill(~is_eos, float("-inf"))[:, :k]  # [B, K]
        eos_best, eos_at = eos_s.max(dim=1)
        improved = (eos_best > best_score[active]).nonzero().flatten()
        for row in improved.tolist():
            source = row * k + int(from_beam[row, eos_at[row]])
            best[int(active[row])] = history[source].tolist()
            best_score[active[row]] = eos_best[row]
        # live hypotheses: the K best candidates that did not end
        live_s, pick = top_s.masked_fill(is_eos, float("-inf")).topk(k, dim=1)  # [B, K]
        rows = (torch.arange(n, device=device).unsqueeze(1) * k
                + from_beam.gather(1, pick)).view(-1)  # [B*K]
        tokens = token.gather(1, pick).view(-1)
        history = torch.cat([history.index_select(0, rows), tokens.unsqueeze(1)], dim=1)
        state, scores = model.reorder(state, rows), live_s
        done = best_score[active] >= live_s[:, 0]  # [B]
        if done.all():
            break
        if done.any():
            keep = (~done).nonzero().flatten()
            keep_rows = (keep.unsqueeze(1) * k + torch.arange(k, device=device)).view(-1)
            active, scores = active[keep], scores[keep]
            tokens, history = tokens[keep_rows], history[keep_rows]
            enc, state = model.reorder(enc, keep_rows), model.reorder(state, keep_rows)
    return [Hypothesis(best[i], float(best_score[i])) for i in range(batch)]


def search(model, src: Tensor, src_lengths: Tensor, *, beam: int = 1, max_len_a: float = 2.0,
           max_len_b: int = 10) -> list[Hypothesis]:
    if beam <= 1:
        return greedy(model, src, src_lengths, max_len_a=max_len_a, max_len_b=max_len_b)
    return beam_search(model, src, src_lengths, beam=beam, max_len_a=max_len_a,
                       max_len_b=max_len_b)
