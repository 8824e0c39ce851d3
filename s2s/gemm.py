"""float32 matrix products through oneDNN on CPU.

torch's float32 `mm`/`addmm`/`F.linear` call MKL. On this project's benchmark machine (AMD EPYC)
oneDNN's kernels, which torch also ships, run the same products 1.1-1.4× faster, most for the
skinny per-step GEMMs of a decoder (B=64 rows): docs/benchmarks.md has the figures. `mm` and
`linear` use oneDNN for float32 CPU tensors outside autocast and torch's own ops otherwise
(other dtypes, devices, autocast, or a torch built without oneDNN); the result is the same
product in float32.

`linear` is differentiable (its backward uses `mm` too); `mm` is not (call it inside autograd
Functions). `S2S_GEMM=torch` turns the oneDNN route off.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable


def _find():
    if os.environ.get("S2S_GEMM", "").lower() == "torch":
        return None
    try:
        op = torch.ops.mkldnn._linear_pointwise
        if not torch.backends.mkldnn.is_available():
            return None
        probe = torch.ones(2, 3)
        if not torch.equal(op(probe, probe, None, "none", [], ""), probe @ probe.t()):
            return None
        return op
    except (AttributeError, RuntimeError):
        return None


_UNSET = object()
_op = _UNSET  # found on first use, not at import: s2s.runtime may set oneDNN's options first


def available() -> bool:
    """True when float32 CPU products go through oneDNN."""
    global _op
    if _op is _UNSET:
        _op = _find()
    return _op is not None


def _usable(*tensors: Tensor) -> bool:
    return available() and torch._C._get_mkldnn_enabled() \
        and all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors) \
        and not torch.is_autocast_enabled("cpu")


def _plain_bias(bias: Tensor | None, n: int) -> bool:
    """No bias, or a float32 CPU [n] vector: oneDNN reads any bias as one (no broadcasting)."""
    return bias is None or (bias.dim() == 1 and bias.shape[0] == n and _usable(bias))


def _dense(t: Tensor) -> Tensor:
    """t itself if row- or column-major without gaps, else a contiguous copy: with other
    strides (a column slice, an expanded gradient) oneDNN falls back to a reference kernel
    that is 100× slower."""
    return t if t.is_contiguous() or t.t().is_contiguous() else t.contiguous()


def mm(a: Tensor, b: Tensor) -> Tensor:
    """a [M, K] @ b [K, N] (no autograd). Pass b with dense strides (see `_dense`) to avoid a
    copy."""
    return addmm(None, a, b)


def addmm(bias: Tensor | None, a: Tensor, b: Tensor) -> Tensor:
    """bias [N] + a [M, K] @ b [K, N] (no autograd).

    torch (MKL) computes it when oneDNN cannot or should not: empty shapes (oneDNN rejects
    them), a bias that is not a plain [N] vector (oneDNN would read it as one), and an `a` that
    is not row-major, such as the transposed gradient of a weight-gradient product (oneDNN
    copies it first; MKL reads it in place and is as fast there)."""
    if not (_usable(a, b) and _plain_bias(bias, b.shape[1]) and a.numel() and b.numel()
            and a.is_contiguous()):
        return a @ b if bias is None else torch.addmm(bias, a, b)
    return _op(a, _dense(b.t()), None if bias is None else bias.contiguous(), "none", [], "")


class _OneDnnLinear(torch.autograd.Function):
    # backward: oneDNN products have no autograd formula, so double backward is an error (not
    # a silent zero); autocast off, so gradients stay float32 like the forward
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        flat = x.reshape(-1, x.shape[-1])
        return addmm(bias, flat, weight.t()).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @once_differentiable
    @torch.autocast("cpu", enabled=False)
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])  # [N, O]
        d_x = mm(g, weight).view_as(x) if ctx.needs_input_grad[0] else None
        d_w = mm(g.t(), x.reshape(-1, x.shape[-1])) if ctx.needs_input_grad[1] else None
        d_b = g.sum(dim=0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return d_x, d_w, d_b


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """F.linear (x [..., I], weight [O, I], bias [O]) with its GEMMs through `mm`."""
    if not (_usable(x, weight) and _plain_bias(bias, weight.shape[0]) and x.numel()
            and weight.numel()):
        return F.linear(x, weight, bias)
    return _OneDnnLinear.apply(x, weight, bias)
