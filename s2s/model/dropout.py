"""Inverted dropout drawn with `torch.rand` (on CPU about twice as fast as nn.Dropout's
bernoulli_ for the [B, H] tensors the decoder drops at every step)."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class Dropout(nn.Module):
    """nn.Dropout's semantics: in training, zero each element with probability p and scale the
    rest by 1 / (1 - p); identity in eval mode or with p = 0."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or not self.p:
            return x
        keep = torch.rand(x.shape, device=x.device) >= self.p
        return x * keep.to(x.dtype) * (1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"
