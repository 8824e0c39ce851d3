"""Deferred weight gradients for recurrent loops.

A decoder trained with teacher forcing applies the same weights at every target step. Left to
autograd, each step's backward computes its own weight gradient: a skinny GEMM with only B rows
(B = batch), repeated T times and summed. Inside `deferred_weight_grads()`, `linear` records each
step's input and output gradient instead, and the weight gradient of all steps is ONE GEMM over
B*T rows when backward reaches the weight: the same sum, computed where a CPU is efficient.

    with deferred_weight_grads():          # the core wraps its teacher-forced decoder loop
        for x_t in xs:
            y_t = linear(x_t, weight, bias)  # cells and the core call this instead of F.linear

Outside the context (inference, no grad) `linear` is `F.linear` (computed by `s2s.ops.gemm`).
Cells may use it in `step`; it is an optional speed-up, not part of the contract. Double
backward is not supported.
Legend: B batch, I input size, O output size, N = sum over steps of B.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from s2s.ops import gemm

_local = threading.local()


class _Entry:
    """One use-site's weights within one context: their concatenated compute-dtype copy and the
    (input, output-grad) pairs recorded by backward."""

    def __init__(self, weights: list[Tensor], biases: list[Tensor | None],
                 dtype: torch.dtype) -> None:
        self.sizes = [w.shape[1] for w in weights]
        weight, bias = gemm.joined(weights, biases)
        self.weight = weight.to(dtype)  # [O, sum(I)]
        present = [b for b in biases if b is not None]
        self.n_weights, self.n_biases = len(weights), len(present)
        self.bias = bias.to(dtype) if bias is not None else None  # [O]
        self._parts: list[Tensor] | None = None
        self.inputs: list[Tensor] = []
        self.grads: list[Tensor] = []
        # 0-d; every use of these weights hangs on it
        self.token = _Gate.apply(self, *weights, *present)

    def parts(self) -> list[Tensor]:
        """The weight's column blocks, one per input, each contiguous (made once)."""
        if self._parts is None:
            self._parts = [w.contiguous() for w in self.weight.split(self.sizes, dim=1)]
        return self._parts


class _Gate(torch.autograd.Function):
    """weights and biases -> a 0-d token. Its backward runs after every recorded use's backward
    and turns the recorded pairs into the weight and bias gradients."""

    @staticmethod
    def forward(ctx, entry: _Entry, *params: Tensor) -> Tensor:
        ctx.entry = entry
        return params[0].new_zeros(())

    @staticmethod
    def backward(ctx, _grad: Tensor):
        entry: _Entry = ctx.entry
        if not entry.grads:
            return (None,) * (1 + entry.n_weights + entry.n_biases)
        x = torch.cat(entry.inputs)  # [N, sum(I)]
        g = torch.cat(entry.grads)  # [N, O]
        entry.inputs, entry.grads = [], []
        d_weights = gemm.mm(g.t(), x).split(entry.sizes, dim=1)  # each [O, I_k]
        d_bias = g.sum(dim=0) if entry.n_biases else None
        return (None, *d_weights, *([d_bias] * entry.n_biases))


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, token: Tensor, entry: _Entry, *xs: Tensor) -> Tensor:
        dtype = entry.weight.dtype
        x = torch.cat([x.to(dtype) for x in xs], dim=1) if len(xs) > 1 else xs[0].to(dtype)
        ctx.entry = entry
        ctx.save_for_backward(x, token)
        return gemm.addmm(entry.bias, x, entry.weight.t())

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, token = ctx.saved_tensors
        entry: _Entry = ctx.entry
        grad = grad.to(entry.weight.dtype)
        entry.inputs.append(x)
        entry.grads.append(grad)
        needs = ctx.needs_input_grad[2:]
        if all(needs):
            d_xs = gemm.mm(grad, entry.weight).split(entry.sizes, dim=1)
        else:  # only the inputs that need a gradient: no GEMM work for the others
            d_xs = [gemm.mm(grad, part) if need else None
                    for part, need in zip(entry.parts(), needs)]
        return (torch.zeros_like(token), None, *d_xs)


class _Context:
    def __init__(self) -> None:
        self.entries: dict[tuple[int, ...], _Entry] = {}


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
    return linear_cat([x], [weight], [bias])


def linear_cat(xs: list[Tensor], weights: list[Tensor], biases: list[Tensor | None]
               ) -> Tensor:
    """sum_k F.linear(xs[k], weights[k], biases[k]) as ONE GEMM: cat(xs) @ cat(weights)^T.
    Inside `deferred_weight_grads()` the weight and bias gradients are deferred as well."""
    if not active() or not weights[0].requires_grad:
        return gemm.linear_cat(xs, weights, biases)
    context = _local.stack[-1]
    key = tuple(id(p) for p in (*weights, *biases))
    entry = context.entries.get(key)
    if entry is None:
        kind = xs[0].device.type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) \
            else xs[0].dtype
        entry = context.entries[key] = _Entry(weights, biases, dtype)
    if not torch.is_autocast_enabled(xs[0].device.type):
        return _Linear.apply(entry.token, entry, *xs)
    with torch.autocast(xs[0].device.type, enabled=False):  # the entry holds the cast weights
        return _Linear.apply(entry.token, entry, *xs)
