"""The compiled fused-lstm kernels (lstm_kernels.cpp): built on first use, loaded after that.

`ops()` returns `torch.ops.s2s_fused`, or None when the kernels cannot be used here — then
fused-lstm runs its pure-PyTorch path (same math, slower), after one warning that says why.

- Built with torch.utils.cpp_extension (needs a C++ compiler and ninja) into
  `$S2S_CACHE/kernels/` (default `~/.cache/s2s/kernels/`), one directory per source, torch
  version and machine, so a built library is reused by every later process without rebuilding.
- The build takes about 15 s, once, in a private directory; the library is then moved into
  place atomically. `S2S_FUSED_KERNELS=0` disables the kernels (the
  pure-PyTorch path runs instead).
- The kernels are float32 on CPU (the step's gate pointwise work also bfloat16); other dtypes
  and devices take the pure-PyTorch path.
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import tempfile
import threading
from pathlib import Path

import torch

from s2s.ops.runtime import cache_dir

log = logging.getLogger("s2s")

_SOURCE = Path(__file__).with_name("lstm_kernels.cpp")
# -fno-finite-math-only: NaN checks stay (a NaN pre-activation gives NaN, as in torch);
# -fopenmp: the thread team and at::parallel_for
_FLAGS = ["-O3", "-ffast-math", "-fno-finite-math-only", "-march=native", "-fopenmp"]
_lock = threading.Lock()
_state: dict[str, object] = {}


def _cpu_flags() -> bytes:
    """-march=native code runs only on CPUs with these features."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line.encode()
    except OSError:
        pass
    return platform.processor().encode()


def _build_dir() -> tuple[str, Path]:
    key = hashlib.sha256(b"\0".join([_SOURCE.read_bytes(), torch.__version__.encode(),
                                     platform.machine().encode(), _cpu_flags(),
                                     " ".join(_FLAGS).encode()])).hexdigest()[:16]
    root = cache_dir("kernels")
    name = f"s2s_fused_{key}"
    return name, root / name


def _build(name: str, library: Path) -> None:
    """Compile into a private directory, then move the library into place atomically: a killed
    build leaves no lock and no half-written library behind, and concurrent builds only
    duplicate work."""
    from torch.utils import cpp_extension

    library.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"{name}.build-", dir=library.parent.parent))
    try:
        log.warning("fused-lstm: compiling its CPU kernels once (about 15 s) into %s",
                    library.parent)
        cpp_extension.load(name, [str(_SOURCE)], extra_cflags=_FLAGS,
                           extra_ldflags=["-fopenmp"], build_directory=str(scratch),
                           is_python_module=False, verbose=False)
        os.replace(scratch / library.name, library)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _reason(error: Exception) -> str:
    """The line of a failed build that says why: a compiler diagnostic ("file:line: error: ..."),
    else the first line that mentions an error, else the last line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    found = next((line for line in lines if "error:" in line.lower()),
                 next((line for line in lines if "error" in line.lower()),
                      lines[-1] if lines else ""))
    return f"{type(error).__name__}: {found}"


def _load():
    if os.environ.get("S2S_FUSED_KERNELS", "1") == "0":
        return None, "S2S_FUSED_KERNELS=0"
    try:
        name, directory = _build_dir()
        library = directory / f"{name}.so"
        if library.is_file():
            try:
                torch.ops.load_library(str(library))
                return torch.ops.s2s_fused, None
            except OSError:  # damaged (say, copied half-way): build it again
                library.unlink(missing_ok=True)
        _build(name, library)  # loads it into this process too
        return torch.ops.s2s_fused, None
    except Exception as e:  # no compiler, no ninja, a failed build: the slow path still works
        return None, _reason(e)


def ops():
    """torch.ops.s2s_fused, or None (the pure-PyTorch path runs; warned about once)."""
    if "ops" not in _state:
        with _lock:
            if "ops" not in _state:
                result, why = _load()
                if result is None and why != "S2S_FUSED_KERNELS=0":
                    log.warning("fused-lstm: compiled kernels unavailable (%s); using the "
                                "pure-PyTorch path, which is slower", why)
                _state["ops"] = result
    return _state["ops"]


# the sequence kernels' product paths: the two register-tiled builds, or the products of
# s2s.ops.gemm's backend (oneDNN or MKL, whichever it chose)
PANEL_BUILDS = {"avx512": 2, "avx2": 1, "gemm": 0}


def panels() -> int:
    """The sequence kernels' product path asked for: the best register-tiled build the CPU
    runs (AVX-512, else AVX2+FMA; the default), or what `S2S_FUSED_PANELS` names: `avx2`, or
    `0` for s2s.ops.gemm's products (comparisons and tests). The kernels clamp it to what the CPU
    has (`panel_path`)."""
    setting = os.environ.get("S2S_FUSED_PANELS", "").strip().lower()
    if setting in ("0", "onednn", "gemm"):
        return 0
    if setting not in ("", "1", *PANEL_BUILDS):
        if setting not in _state.setdefault("warned", set()):
            _state["warned"].add(setting)
            log.warning("S2S_FUSED_PANELS=%s is not one of avx512, avx2, 0; using the best "
                        "build this CPU runs", setting)
    return PANEL_BUILDS.get(setting, PANEL_BUILDS["avx512"])


def panel_path(asked: int | None = None) -> str:
    """The product path that runs for `asked` (default: `panels()`) on this CPU: avx512,
    avx2 or gemm (also without the compiled kernels)."""
    lib = ops()
    level = 0 if lib is None else lib.panel_isa(panels() if asked is None else asked)
    return {v: k for k, v in PANEL_BUILDS.items()}[level]


def usable(*tensors: torch.Tensor, bf16: bool = False) -> bool:
    """True when the kernels handle these tensors (float32, or also bfloat16 where `bf16`, on
    CPU) and are available."""
    dtypes = (torch.float32, torch.bfloat16) if bf16 else (torch.float32,)
    return all(t.dtype in dtypes and t.device.type == "cpu" for t in tensors) \
        and ops() is not None
