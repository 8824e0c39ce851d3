"""One optimizer step: the loss of each batch (accumulated), clipping, and the update, skipped
when the loss or the gradient is not finite."""
from __future__ import annotations

import math

import torch

from s2s import config
from s2s import precision as precisions
from s2s.batching import collate


def step(model, optimizer, scheduler, groups: list[dict], t: config.TrainConfig,
         precision: str) -> tuple[bool, float, float, int]:
    """One optimizer step on `groups` (accum_steps batches of src_ids/tgt_ids rows). Returns
    (finite, summed NLL, gradient norm, target tokens)."""
    batches = [collate(rows["src_ids"], rows["tgt_ids"]) for rows in groups]
    tokens = sum(b.n_tgt_tokens for b in batches)
    divisor = tokens if t.normalization == "tokens" else sum(b.size for b in batches)
    model.train()
    total = 0.0
    for batch in batches:
        with precisions.compute(precision):
            loss, nll = model.loss(batch.src, batch.src_lengths, batch.tgt_in, batch.tgt_out,
                                   t.label_smoothing)
        (loss / divisor).backward()
        total += float(nll)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(
        model.parameters(), t.clip_norm if t.clip_norm > 0 else float("inf")))
    finite = math.isfinite(total) and math.isfinite(grad_norm)
    if finite:
        optimizer.step()
        if t.schedule != "plateau":
            scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return finite, total, grad_norm, tokens
