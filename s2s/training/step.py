"""One optimizer step: the loss of each batch (accumulated), clipping, and the update, skipped
when the loss or the gradient is not finite. Under torchrun each rank runs its share of every
batch and the gradients are summed over the ranks (s2s.training.distributed)."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from s2s import config
from s2s import precision as precisions
from s2s.batching import collate
from s2s.errors import TrainingError
from s2s.training.distributed import World


def step(model, optimizer, scheduler, groups: list[dict], t: config.TrainConfig,
         precision: str, device: torch.device = torch.device("cpu"), *,
         totals: tuple[int, int] | None = None, world: World = World()
         ) -> tuple[bool, float, float, int]:
    """One optimizer step on `groups` (accum_steps batches of src_ids/tgt_ids rows: this
    rank's share; a share may be empty) on `device`. `totals`: (target tokens, sentences) of
    the whole global batch, when the rows are only a share of it. Returns (finite, summed NLL,
    gradient norm, target tokens) of the global batch."""
    batches = [collate(rows["src_ids"], rows["tgt_ids"]).to(device)
               for rows in groups if len(rows["src_ids"])]
    tokens, sents = totals if totals is not None else \
        (sum(b.n_tgt_tokens for b in batches), sum(b.size for b in batches))
    divisor = tokens if t.normalization == "tokens" else sents
    model.train()
    total = 0.0
    for batch in batches:
        with precisions.compute(precision, device):
            loss, nll = model.loss(batch.src, batch.src_lengths, batch.tgt_in, batch.tgt_out,
                                   t.label_smoothing)
        (loss / divisor).backward()
        total += float(nll)
    params = [p for p in model.parameters() if p.requires_grad]
    (total,) = world.sum_gradients(params, [total])
    grad_norm = float(torch.nn.utils.clip_grad_norm_(
        params, t.clip_norm if t.clip_norm > 0 else float("inf")))
    finite = math.isfinite(total) and math.isfinite(grad_norm)
    if finite:
        optimizer.step()
        if t.schedule != "plateau":
            scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return finite, total, grad_norm, tokens


def nonfinite_error(count: int, step: int, limit: int, ckpt_dir: Path) -> TrainingError:
    """The error that stops a run after `count` non-finite steps in a row."""
    kept = (f"the last checkpoint ({ckpt_dir / 'last.pt'}) is intact"
            if (ckpt_dir / "last.pt").exists() else "no checkpoint was written")
    return TrainingError(f"training stopped: {count} non-finite losses or gradients in a row "
                         f"after step {step} (train.max_nonfinite={limit}); {kept}. Lower "
                         f"train.lr, add train.warmup_steps, lower train.clip_norm or use "
                         f"train.precision=fp32")
