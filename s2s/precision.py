"""Which number format the model computes in: chosen from what the hardware does natively.

- `auto` (the default everywhere): bf16 autocast only where the hardware computes bf16 natively
  (x86 CPUs with `avx512_bf16` or AMX-BF16, Arm CPUs with the BF16 extension, CUDA GPUs that
  report bf16 support) and oneDNN/torch can use it; fp32 otherwise. On a CPU without it bf16 is
  emulated: products ran 4-5x slower than fp32 on an AVX2 EPYC (docs/benchmarks.md).
- `fp32`, `bf16`: as asked; `bf16` where it is emulated warns once that it is slow.
- `int8` (inference only: `s2s translate` / `score`): dynamic int8 products for every weight
  that goes through `s2s.ops.gemm` (decoder cell steps, attention, output layer; see
  `s2s.ops.quantized`), with the cells' state math and the encoder's sequence pass in fp32.

`resolve` says what it chose, once per process and choice, on the `s2s` logger.
"""
from __future__ import annotations

import contextlib
import logging
from contextlib import AbstractContextManager as ContextManager
from functools import lru_cache

import torch

from s2s.ops.runtime import cpu_flags, cpu_kind  # noqa: F401  (re-exported)

log = logging.getLogger("s2s")

INFER_CHOICES = ("auto", "fp32", "bf16", "int8")

_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 (/proc/cpuinfo), Arm ("bf16")
_said: set[tuple[str, str, str]] = set()


@lru_cache(maxsize=1)
def _onednn_bf16() -> bool:
    from s2s.ops import gemm

    return gemm.onednn_bf16()


def _cuda_bf16() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # older torch: no emulation argument
        return torch.cuda.is_bf16_supported()


def native_bf16(device: torch.device | str = "cpu") -> tuple[bool, str]:
    """(whether `device` computes bf16 natively, why: the features it has or lacks)."""
    device = torch.device(device)
    if device.type == "cuda":
        ok = _cuda_bf16()
        return ok, "the GPU supports bf16" if ok else "the GPU has no native bf16"
    if device.type != "cpu":
        return False, f"no bf16 rule for {device.type} devices"
    found = sorted(cpu_flags() & _BF16_FLAGS)
    if not found:
        return False, f"this CPU ({cpu_kind()}) has no native bf16 (avx512_bf16, amx_bf16 or " \
                      f"Arm bf16)"
    if not _onednn_bf16():
        return False, f"this CPU has {', '.join(found)} but torch's oneDNN reports no bf16 support"
    return True, f"this CPU has native bf16 ({', '.join(found)})"


def decide(requested: str, device: torch.device | str = "cpu", *, what: str = "precision"
           ) -> tuple[str, str]:
    """(the precision to compute in for `requested` (auto, fp32, bf16, int8) on `device`, a
    message to show: the choice made by auto, a warning for emulated bf16, or ''). `what`
    names the setting in messages (e.g. 'train.precision', '--precision')."""
    if requested not in INFER_CHOICES:
        raise ValueError(f"{what}: unknown precision {requested!r}")
    device = torch.device(device)
    if requested in ("fp32", "int8"):
        return requested, ""
    native, why = native_bf16(device)
    if requested == "auto":
        chosen = "bf16" if native else "fp32"
        return chosen, f"{what} auto: {chosen} ({why})"
    if not native:
        return "bf16", f"warning: {what} bf16: {why}, so bf16 is emulated and several times " \
                       f"slower than fp32; use {what} auto (or fp32)"
    return "bf16", ""


def resolve(requested: str, device: torch.device | str = "cpu", *, what: str = "precision"
            ) -> str:
    """`decide`, with its message on the `s2s` logger once per process and choice."""
    chosen, message = decide(requested, device, what=what)
    key = (what, requested, str(device))
    if message and key not in _said:
        _said.add(key)
        if message.startswith("warning: "):
            log.warning("%s", message[len("warning: "):])
        else:
            log.info("%s", message)
    return chosen


def compute(precision: str, device: torch.device | str = "cpu", *,
            int8_cache: dict | None = None) -> ContextManager:
    """The context that runs a model in a resolved precision: bf16 autocast, int8 products
    (weights packed once into `int8_cache`, kept by the caller with the model), or nothing."""
    device = torch.device(device)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "int8":
        from s2s.ops import gemm

        return gemm.int8(int8_cache if int8_cache is not None else {})
    return contextlib.nullcontext()
