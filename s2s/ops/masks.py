"""Masks over padded batches."""
from __future__ import annotations

import torch
from torch import Tensor


def length_mask(lengths: Tensor, time: int, device: torch.device) -> Tensor:
    """[B, T] bool, True at each sequence's real (non-padded) positions."""
    return torch.arange(time, device=device).unsqueeze(0) < lengths.to(device).unsqueeze(1)
