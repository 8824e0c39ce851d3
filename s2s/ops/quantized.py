"""Dynamic int8 products for inference (`--precision int8`).

Inside `int8(cache)`, s2s.ops.gemm's `linear`, `linear_cat` and `linear_rows` of float32 CPU
inputs without autograd use torch's quantized x86 kernels (fbgemm/oneDNN): each weight is
quantized once per output channel (symmetric int8, packed with its bias into `cache`), each
input per call (7-bit where the CPU has no VNNI). The cell's state math stays float32.
"""
from __future__ import annotations

import contextlib
import functools
import threading
import warnings
import weakref
from collections.abc import Iterator

import torch
from torch import Tensor

from s2s.ops.runtime import cpu_flags


def joined(weights: list[Tensor], biases: list[Tensor | None]) -> tuple[Tensor, Tensor | None]:
    """The weights of one product over cat(xs), detached: weights side by side [O, sum(I)],
    and the sum of the biases given [O] (None if none)."""
    present = [b.detach() for b in biases if b is not None]
    return torch.cat([w.detach() for w in weights], dim=1), sum(present) if present else None


_int8_local = threading.local()


@functools.lru_cache(maxsize=1)
def _quantized_ops() -> str | None:
    """None when torch's dynamic int8 linear works here, else why not (checked once)."""
    try:
        w = torch.ones(4, 8)
        packed = _pack_int8(w, None)
        out = torch.ops.quantized.linear_dynamic(torch.ones(2, 8), packed, True)
        return None if torch.allclose(out, torch.full((2, 4), 8.0), rtol=0.05) else \
            "its int8 product gave wrong results"
    except (AttributeError, RuntimeError) as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _quantize_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """weight [O, I] -> int8 values [O, I] and float64 scales [O], symmetric per output
    channel: scale = max |w| / 127."""
    w = weight.detach().float()
    scales = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12).double()  # [O]
    q = torch.round(w / scales.unsqueeze(1)).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scales


def _pack_quantized(q: Tensor, scales: Tensor, bias: Tensor | None):
    """int8 values [O, I] with their scales [O] packed for torch's dynamic int8 linear, with
    its float32 bias [O]."""
    zeros = torch.zeros(q.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # torch marks quantized tensors deprecated (2.13)
        warnings.simplefilter("ignore")
        qw = torch._make_per_channel_quantized_tensor(q.contiguous(), scales, zeros, 0)
    return torch.ops.quantized.linear_prepack(
        qw, None if bias is None else bias.detach().float().contiguous())


def _pack_int8(weight: Tensor, bias: Tensor | None):
    """weight [O, I] -> int8 per output channel, packed with its bias (see _quantize_int8)."""
    return _pack_quantized(*_quantize_int8(weight), bias)


def _reduce_range() -> bool:
    """Inputs quantized to 7 bits where the CPU has no VNNI: fbgemm's AVX2 int8 products sum
    pairs of u8*s8 products in 16 bits, which saturates with full 8-bit inputs."""
    return not cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"}


@contextlib.contextmanager
def int8(cache: dict) -> Iterator[None]:
    """Dynamic int8 products for `linear` / `linear_cat` inside the block (no autograd, float32
    CPU inputs). `cache` keeps the packed weights between blocks: keep one per model."""
    why = _quantized_ops()
    if why is not None:
        from s2s.errors import S2SError

        raise S2SError(f"--precision int8: this torch build's dynamic int8 kernels do not work "
                       f"here ({why}); use --precision fp32 or auto")
    saved = getattr(_int8_local, "cache", None)
    _int8_local.cache = (cache, _reduce_range())
    try:
        yield
    finally:
        _int8_local.cache = saved


def int8_active() -> bool:
    """True inside `int8()` without autograd: cells that call torch's fused cell ops (which
    bypass s2s.ops.gemm) take their `linear` path instead, so their weights are int8 too."""
    return getattr(_int8_local, "cache", None) is not None and not torch.is_grad_enabled()


def usable(x: Tensor, weight: Tensor) -> bool:
    """Whether `linear` of x and weight runs as an int8 product here (inside `int8()`)."""
    return int8_active() and x.dtype == torch.float32 and x.device.type == "cpu" \
        and weight.dim() == 2 and x.numel() > 0 and not torch.is_autocast_enabled("cpu")


def memo(cache: dict, tag: str, tensors: list[Tensor], make):
    """`make()` computed once per identity and version of `tensors` and kept in `cache`:
    made again when one changes in place (version) or gets new storage (data pointer), and
    dropped when one of them is freed (tensors made per batch, e.g. a shortlist)."""
    key = (tag, *(id(t) for t in tensors))
    stamp = tuple((t._version, t.data_ptr()) for t in tensors)
    entry = cache.get(key)
    if entry is None or entry[0] != stamp or any(r() is not t for r, t in zip(entry[1], tensors)):
        refs = [weakref.ref(t) for t in tensors]
        entry = cache[key] = (stamp, refs, make())
        for t in tensors:
            weakref.finalize(t, _forget, cache, key, refs)
    return entry[2]


def _forget(cache: dict, key: tuple, refs: list) -> None:
    entry = cache.get(key)
    if entry is not None and entry[1] is refs:
        del cache[key]


def linear(xs: list[Tensor], weights: list[Tensor], biases: list[Tensor | None]) -> Tensor:
    """sum_k linear(xs[k], weights[k], biases[k]) as one int8 product over cat(xs)."""
    cache, reduce_range = _int8_local.cache
    tensors = [t for t in (*weights, *biases) if t is not None]
    packed = memo(cache, "linear", tensors, lambda: _pack_int8(*joined(weights, biases)))
    x = torch.cat(xs, dim=-1) if len(xs) > 1 else xs[0]
    flat = x.reshape(-1, x.shape[-1]).contiguous()  # [N, I]
    out = torch.ops.quantized.linear_dynamic(flat, packed, reduce_range)
    return out.view(*x.shape[:-1], out.shape[-1])


def linear_rows(x: Tensor, weight: Tensor, bias: Tensor, rows: Tensor) -> Tensor:
    """linear(x, weight[rows], bias[rows]) as an int8 product, the rows packed once per `rows`
    tensor from the weight quantized once."""
    cache, reduce_range = _int8_local.cache
    q, scales = memo(cache, "quantized", [weight], lambda: _quantize_int8(weight))
    packed = memo(cache, "rows", [weight, bias, rows], lambda: _pack_quantized(
        q.index_select(0, rows), scales.index_select(0, rows), bias.index_select(0, rows)))
    flat = x.reshape(-1, x.shape[-1]).contiguous()  # [N, I]
    return torch.ops.quantized.linear_dynamic(flat, packed, reduce_range).view(
        *x.shape[:-1], len(rows))
