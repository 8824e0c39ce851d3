"""The optimizer (train.optimizer: adam, adamw, sgd) and the learning-rate schedule
(train.schedule: constant, inverse_sqrt, linear and cosine with warm-up, or plateau)."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from s2s import config


def optimizer(params, t: config.TrainConfig) -> torch.optim.Optimizer:
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum,
                               weight_decay=t.weight_decay)
    kind = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return kind(params, lr=t.lr, betas=(t.adam_beta1, t.adam_beta2),
                weight_decay=t.weight_decay)


def scheduler(opt: torch.optim.Optimizer, t: config.TrainConfig,
              clock: Callable[[], float] | None = None):
    """plateau: stepped with the validation metric (higher is better); the others: after
    every optimizer step. `clock`: the run's training seconds so far (for a max_time budget)."""
    if t.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="max", factor=t.decay_factor, patience=t.decay_patience,
            min_lr=t.min_lr, threshold=0.0, threshold_mode="abs", eps=0.0)  # strictly better
    return torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(t, clock))


def budget_used(t: config.TrainConfig, steps: int, seconds: float) -> float:
    """The fraction [0, 1] of the decay budget used after `steps` optimizer steps and `seconds`
    of training: steps after warm-up over max_steps' after warm-up, or seconds over max_time,
    whichever is further along."""
    used = 0.0
    if t.max_steps:
        used = (steps - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps)
    if t.max_time:
        used = max(used, seconds / t.max_time)
    return min(1.0, max(0.0, used))


def lr_factor(t: config.TrainConfig, clock: Callable[[], float] | None = None
              ) -> Callable[[int], float]:
    """LambdaLR factor for the constant, inverse_sqrt, linear and cosine schedules (after
    `steps` optimizer steps), with linear warm-up and the min_lr floor. linear and cosine
    decay over the budget (budget_used; `clock` gives the training seconds for max_time):
    linear to 0 (then the floor), cosine from lr to min_lr."""
    warmup, floor = t.warmup_steps, t.min_lr / t.lr

    def factor(steps: int) -> float:
        if steps < warmup:
            value = (steps + 1) / warmup
        elif t.schedule == "inverse_sqrt":
            value = math.sqrt(max(warmup, 1) / (steps + 1))
        elif t.schedule in ("linear", "cosine"):
            used = budget_used(t, steps, clock() if clock is not None else 0.0)
            if t.schedule == "cosine":
                return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * used))
            value = 1.0 - used
        else:
            value = 1.0
        return max(value, floor)

    return factor
