"""Inverted dropout drawn with `torch.rand` (on CPU about twice as fast as nn.Dropout's
bernoulli_ for the [B, H] tensors the decoder drops at every step), in three kinds:

- standard: every element on its own (nn.Dropout's semantics);
- locked (variational, Gal and Ghahramani 2016): one mask per sequence, the same at every time
  step: x [B, T, H] gets a mask [B, 1, H]; a per-step x [B, H] reuses the mask drawn at the first
  step until `reset()` (the model resets its dropouts at the start of every batch);
- word: whole vectors: x [B, T, H] gets a mask [B, T, 1] (a dropped word's embedding is zero).
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

Kind = Literal["standard", "locked", "word"]


class Dropout(nn.Module):
    """In training, zero with probability p (elements, or per `kind`) and scale the rest by
    1 / (1 - p); identity in eval mode or with p = 0."""

    def __init__(self, p: float, kind: Kind = "standard") -> None:
        super().__init__()
        self.p, self.kind = p, kind
        self._keep: Tensor | None = None  # locked: the mask of per-step inputs

    def reset(self) -> None:
        """Forget the locked mask: the next per-step input draws a new one."""
        self._keep = None

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or not self.p:
            return x
        if self.kind == "standard":
            shape = x.shape
        elif self.kind == "word":
            shape = (*x.shape[:-1], 1)
        elif x.dim() == 3:  # locked, a whole sequence [B, T, H]
            shape = (x.shape[0], 1, x.shape[2])
        else:  # locked, one step of a sequence
            if self._keep is None or self._keep.shape != x.shape:
                self._keep = (torch.rand(x.shape, device=x.device) >= self.p)
            return x * self._keep.to(x.dtype) * (1.0 / (1.0 - self.p))
        keep = torch.rand(shape, device=x.device) >= self.p
        return x * keep.to(x.dtype) * (1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}" + (f", kind={self.kind}" if self.kind != "standard" else "")


def site_kind(locked: bool) -> Kind:
    """The kind of the model's dropout sites (embeddings, between layers, outputs):
    model.locked_dropout."""
    return "locked" if locked else "standard"


def reset_all(module: nn.Module) -> None:
    """Reset the locked masks of every Dropout in `module`."""
    for m in module.modules():
        if isinstance(m, Dropout):
            m.reset()
