"""Process set-up for CPU-heavy work: torch's thread count and the C allocator.

glibc's malloc hands large blocks (autograd buffers, logits) back to the kernel as soon as they
are freed and takes fresh, zero-filled pages for the next step: in training that was 1.8 million
page faults in 150 steps and 13% of the time. `tune_allocator` keeps freed memory in the process
(mmap threshold 32 MiB, trim threshold 1 GiB), so steps reuse it. Peak RSS grows by a few
percent. Set S2S_MALLOC=system to leave the allocator alone; other C libraries are left alone.

`limit_onednn_caches` (training): oneDNN keeps a compiled primitive per product shape, up to
1024 of them, and training's shapes change every batch (the number of target tokens). That grew
peak RSS from 1.1 to 1.75 GB in 150 steps; 32 entries gave 1.36 GB at the same speed. It only
sets the environment variables oneDNN reads when it creates its first primitive (explicit
settings win), so it must run before any oneDNN work.
"""
from __future__ import annotations

import ctypes
import os
import platform
import sys
from pathlib import Path

import torch

_M_TRIM_THRESHOLD = -1  # glibc malloc.h
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit
_TRIM_THRESHOLD = 1 << 30

_tuned: bool | None = None


def cache_dir(name: str) -> Path:
    """`$S2S_CACHE/name` (default `~/.cache/s2s/name`): where s2s keeps what it computes once
    per machine (compiled kernels, the product-backend choice, prepared training data)."""
    return Path(os.environ.get("S2S_CACHE") or Path.home() / ".cache" / "s2s") / name


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


def limit_onednn_caches(capacity: int = 32) -> None:
    """Cap oneDNN's and ideep's primitive caches (unless set already); see the module docstring."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(capacity))
    os.environ.setdefault("LRU_CACHE_CAPACITY", str(capacity))


def tune_allocator() -> bool:
    """Keep freed heap memory for reuse (glibc only; once per process). True if applied."""
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if os.environ.get("S2S_MALLOC", "").lower() == "system" or not sys.platform.startswith("linux"):
        return _tuned
    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):  # musl and others: leave them alone
            return _tuned
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return _tuned
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _tuned = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
                  and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return _tuned


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (x86 `flags`, Arm `Features`); empty
    where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


def cpu_kind() -> str:
    """A short name of the CPU's vector features, as benchmarks and messages name it."""
    flags = cpu_flags()
    if not flags:
        return platform.machine() or "unknown CPU"
    wanted = ("avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "avx2", "fma", "avx_vnni",
              "asimd", "sve", "bf16")
    return "+".join(f for f in wanted if f in flags) or platform.machine()
