"""Deferred weight gradients for recurrent loops.

A decoder trained with teacher forcing applies the same weights at every target step. Left to
autograd, each step's backward computes its own weight gradient: a skinny GEMM with only B rows
(B = batch), repeated T times and summed. Inside `deferred_weight_grads()`, `linear` records each
step's input and output gradient instead, and the weight gradient of all steps is ONE GEMM over
B*T rows when backward reaches the weight: the same sum, computed where a CPU is efficient.

    with deferred_weight_grads():          # the core wraps its teacher-forced decoder loop
        for x_t in xs:
            y_t = linear(x_t, weight, bias)  # cells and the core call this instead of F.linear

Outside the context (inference, no grad) `linear` is `F.linear`. Cells may use it in `step`;
it is an optional speed-up, not part of the contract. Double backward is not supported.
Legend: B batch, I input size, O output size, N = sum over steps of B.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

_local = threading.local()


class _Entry:
    """One weight's use within one context: its compute-dtype copy and the (input, output-grad)
    pairs recorded by backward."""

    def __init__(self, weight: Tensor, bias: Tensor | None, dtype: torch.dtype) -> None:
        self.weight = weight.detach().to(dtype)  # [O, I]
        self.bias = bias.detach().to(dtype) if bias is not None else None
        self.inputs: list[Tensor] = []
        self.grads: list[Tensor] = []
        self.token = _Gate.apply(weight, bias, self)  # 0-d; every use of the weight hangs on it


class _Gate(torch.autograd.Function):
    """weight (, bias) -> a 0-d token. Its backward runs after every recorded use's backward and
    turns the recorded pairs into the weight and bias gradients."""

    @staticmethod
    def forward(ctx, weight: Tensor, bias: Tensor | None, entry: _Entry) -> Tensor:
        ctx.entry = entry
        ctx.has_bias = bias is not None
        return weight.new_zeros(())

    @staticmethod
    def backward(ctx, _grad: Tensor):
        entry: _Entry = ctx.entry
        if not entry.grads:
            return None, None, None
        x = torch.cat(entry.inputs)  # [N, I]
        g = torch.cat(entry.grads)  # [N, O]
        entry.inputs, entry.grads = [], []
        d_weight = g.t() @ x  # [O, I]
        d_bias = g.sum(dim=0) if ctx.has_bias else None
        return d_weight, d_bias, None


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, token: Tensor, entry: _Entry) -> Tensor:
        x = x.to(entry.weight.dtype)
        ctx.entry = entry
        ctx.save_for_backward(x, token)
        return F.linear(x, entry.weight, entry.bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, token = ctx.saved_tensors
        entry: _Entry = ctx.entry
        grad = grad.to(entry.weight.dtype)
        entry.inputs.append(x)
        entry.grads.append(grad.clone())
        d_x = grad @ entry.weight if ctx.needs_input_grad[0] else None
        return d_x, torch.zeros_like(token), None


class _Context:
    def __init__(self) -> None:
        self.entries: dict[int, _Entry] = {}


@contextmanager
def deferred_weight_grads(enabled: bool = True) -> Iterator[None]:
    """Defer the weight gradients of every `linear` call inside (when grad mode is on)."""
    if not (enabled and torch.is_grad_enabled()):
        yield
        return
    stack = _local.__dict__.setdefault("stack", [])
    stack.append(_Context())
    try:
        yield
    finally:
        stack.pop()


def active() -> bool:
    """True inside `deferred_weight_grads()` with grad mode on."""
    return bool(getattr(_local, "stack", None)) and torch.is_grad_enabled()


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """F.linear; inside `deferred_weight_grads()` its weight (and bias) gradient is deferred."""
    if not active() or not weight.requires_grad:
        return F.linear(x, weight, bias)
    context = _local.stack[-1]
    entry = context.entries.get(id(weight))
    if entry is None:
        kind = x.device.type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype
        entry = context.entries[id(weight)] = _Entry(weight, bias, dtype)
    with torch.autocast(x.device.type, enabled=False):
        return _Linear.apply(x, entry.token, entry)
