"""float32 matrix products through the faster of oneDNN and MKL on this CPU, and int8 products.

torch's float32 `mm`/`addmm`/`F.linear` call MKL; torch also ships oneDNN. Which is faster
depends on the CPU: on an AVX-512 EPYC oneDNN ran the products 1.1-1.4x faster, most for the
skinny per-step GEMMs of a decoder (B=64 rows); on an AVX2 EPYC 1.34-1.42x at 2 threads but 1.1x
at 1 (docs/benchmarks.md). So the backend is measured, not assumed: the first process on a machine
times a few decoder-shaped products both ways (about 0.2 s) and keeps the winner in
`$S2S_CACHE/gemm/` (default `~/.cache/s2s/gemm/`), per CPU, torch version and thread count.
`S2S_GEMM=onednn` or `S2S_GEMM=torch` (MKL) overrides the measurement.

`mm` and `linear` use oneDNN (when chosen) for float32 CPU tensors outside autocast and torch's
own ops otherwise (other dtypes, devices, autocast, or a torch built without oneDNN); the
result is the same product in float32. `linear` is differentiable (its backward uses `mm` too);
`mm` is not (call it inside autograd Functions).

Inside `int8(cache)` (inference: `--precision int8`), `linear`, `linear_cat` and `linear_rows`
of float32 CPU inputs without autograd use dynamic int8 products instead (s2s.ops.quantized).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from s2s.ops import quantized
from s2s.ops.quantized import int8, int8_active, joined  # noqa: F401  (this module's API)
from s2s.ops.runtime import cache_dir, cpu_flags

log = logging.getLogger("s2s")
BACKENDS = ("onednn", "torch")


def _onednn_op():
    """oneDNN's linear op, if this torch has a working one."""
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


_bf16: list[bool] = []


def onednn_bf16() -> bool:
    """Whether torch's oneDNN computes bf16 on this CPU at all (natively or emulated on
    AVX-512; not on AVX2-only CPUs). Asked once."""
    if not _bf16:
        try:
            _bf16.append(torch.backends.mkldnn.is_available()
                         and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))
        except (AttributeError, RuntimeError):
            _bf16.append(False)
    return _bf16[0]


# decoder-shaped products (rows, inputs, outputs): a cell step, attention output, the output
# layer, and a larger training-sized one
_PROBE_SHAPES = ((64, 1280, 2048), (64, 1024, 512), (64, 512, 8000), (512, 512, 2048))


@torch.no_grad()
@torch.autocast("cpu", enabled=False)  # the first product may come inside autocast
def _measure(op) -> dict[str, float]:
    """Seconds per round of _PROBE_SHAPES for each backend: the median of interleaved rounds."""
    gen = torch.Generator().manual_seed(0)
    cases = [(torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen))
             for m, k, n in _PROBE_SHAPES]
    runs = {"onednn": lambda x, w: op(x, w, None, "none", [], ""),
            "torch": lambda x, w: F.linear(x, w)}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for rep in range(6):  # the first round warms both up and is not counted
        for name, run in runs.items():
            start = time.perf_counter()
            for x, w in cases:
                run(x, w)
            if rep:
                times[name].append(time.perf_counter() - start)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def _cache_file() -> Path:
    key = hashlib.sha256("\0".join([" ".join(sorted(cpu_flags())), torch.__version__,
                                     str(torch.get_num_threads()), repr(_PROBE_SHAPES)]
                                    ).encode()).hexdigest()[:16]
    return cache_dir("gemm") / f"{key}.json"


def _choose(op) -> str:
    """The measured faster backend on this machine (cached on disk; measured when not)."""
    file = _cache_file()
    try:
        chosen = json.loads(file.read_text(encoding="utf-8"))["backend"]
        if chosen in BACKENDS:
            return chosen
    except (OSError, ValueError, KeyError, TypeError):
        pass
    seconds = _measure(op)
    ratio = seconds["torch"] / seconds["onednn"]
    chosen = "onednn" if ratio >= 1.03 else "torch"  # a tie goes to torch's own default (MKL)
    log.info("matrix products: %s (oneDNN %.2fx MKL on this CPU, %d threads; measured once, "
             "kept in %s; S2S_GEMM=onednn|torch overrides)", "oneDNN" if chosen == "onednn"
             else "MKL", ratio, torch.get_num_threads(), file.parent)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=file.parent, delete=False,
                                         suffix=".tmp") as tmp:
            json.dump({"backend": chosen, "onednn_over_mkl": round(ratio, 4),
                       "seconds": seconds, "threads": torch.get_num_threads()}, tmp)
        os.replace(tmp.name, file)
    except OSError:  # an unwritable cache: measured again next time, nothing else changes
        pass
    return chosen


_UNSET = object()
_op = _UNSET  # found on first use, not at import: s2s.ops.runtime may set oneDNN's options first
_lock = threading.Lock()


def _setting() -> str:
    setting = os.environ.get("S2S_GEMM", "auto").strip().lower() or "auto"
    if setting not in (*BACKENDS, "auto"):
        log.warning("S2S_GEMM=%s is not one of onednn, torch, auto; measuring (auto)", setting)
        return "auto"
    return setting


def _find():
    setting = _setting()
    if setting == "torch":
        return None
    op = _onednn_op()
    if op is None or setting == "onednn":
        return op
    return op if _choose(op) == "onednn" else None


def available() -> bool:
    """True when float32 CPU products go through oneDNN (chosen on this CPU, or S2S_GEMM)."""
    global _op
    if _op is _UNSET:
        with _lock:
            if _op is _UNSET:
                _op = _find()
    return _op is not None


def backend() -> str:
    """'onednn' or 'torch' (MKL): where float32 CPU products go."""
    return "onednn" if available() else "torch"


def _op_for(name: str):
    """The `_op` value for backend `name` (oneDNN's op, or None for torch's own)."""
    return _onednn_op() if name == "onednn" else None


def prefer(name: str) -> bool:
    """Use backend `name` from now on in this process unless S2S_GEMM fixes one (a resumed
    run keeps the backend it trained with: the products' rounding differs between the two).
    Returns whether `name` is in use."""
    global _op
    if name not in BACKENDS:
        return False
    if _setting() == "auto":
        with _lock:
            _op = _op_for(name)
    return backend() == name


@contextlib.contextmanager
def use(name: str) -> Iterator[None]:
    """Force a backend ('onednn' or 'torch') inside the block (tests, benchmarks)."""
    global _op
    if name not in BACKENDS:
        raise ValueError(f"unknown GEMM backend {name!r}; choose one of {', '.join(BACKENDS)}")
    available()
    saved = _op
    _op = _op_for(name)
    try:
        yield
    finally:
        _op = saved


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
    """F.linear (x [..., I], weight [O, I], bias [O]) with its GEMMs through `mm` (or int8
    inside `int8()`)."""
    if quantized.usable(x, weight):
        return quantized.linear([x], [weight], [bias])
    if not (_usable(x, weight) and _plain_bias(bias, weight.shape[0]) and x.numel()
            and weight.numel()):
        return F.linear(x, weight, bias)
    return _OneDnnLinear.apply(x, weight, bias)


def linear_cat(xs: list[Tensor], weights: list[Tensor], biases: list[Tensor | None]) -> Tensor:
    """sum_k linear(xs[k], weights[k], biases[k]); inside `int8()` one int8 product over
    cat(xs) with the weights concatenated once."""
    if quantized.usable(xs[0], weights[0]) and all(x.shape[:-1] == xs[0].shape[:-1] for x in xs):
        return quantized.linear(xs, weights, biases)
    out = linear(xs[0], weights[0], biases[0])
    for x, w, b in zip(xs[1:], weights[1:], biases[1:]):
        out = out + linear(x, w, b)
    return out


_rows_cache: dict = {}  # float32 row subsets of linear_rows


def linear_rows(x: Tensor, weight: Tensor, bias: Tensor, rows: Tensor) -> Tensor:
    """linear(x, weight[rows], bias[rows]) for a row subset rows [O'] used at many calls (a
    shortlist of the output layer): the subset is taken (inside `int8()`: packed from the
    weight quantized once) once per `rows` tensor. No autograd through the subset."""
    if quantized.usable(x, weight):
        return quantized.linear_rows(x, weight, bias, rows)
    with torch.no_grad():
        sub_w, sub_b = quantized.memo(_rows_cache, "rows", [weight, bias, rows], lambda: (
            weight.index_select(0, rows), bias.index_select(0, rows)))
    return linear(x, sub_w, sub_b)
