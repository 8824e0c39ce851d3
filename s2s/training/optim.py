"""The optimizer (train.optimizer: adam, adamw, sgd) and the learning-rate schedule
(train.schedule: constant, inverse_sqrt and linear with warm-up, or plateau)."""
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


def scheduler(opt: torch.optim.Optimizer, t: config.TrainConfig):
    """plateau: stepped with the validation metric (higher is better); the others: after
    every optimizer step."""
    if t.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="max", factor=t.decay_factor, patience=t.decay_patience,
            min_lr=t.min_lr, threshold=0.0, threshold_mode="abs", eps=0.0)  # strictly better
    return torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(t))


def lr_factor(t: config.TrainConfig) -> Callable[[int], float]:
    """LambdaLR factor for the constant, inverse_sqrt and linear schedules (after `steps`
    optimizer steps), with linear warm-up and the min_lr floor."""
    warmup, floor = t.warmup_steps, t.min_lr / t.lr

    def factor(steps: int) -> float:
        if steps < warmup:
            value = (steps + 1) / warmup
        elif t.schedule == "inverse_sqrt":
            value = math.sqrt(max(warmup, 1) / (steps + 1))
        elif t.schedule == "linear":
            value = max(0.0, (t.max_steps - steps) / max(1, t.max_steps - warmup))
        else:
            value = 1.0
        return max(value, floor)

    return factor
