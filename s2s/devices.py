"""Which device a run, a translation or a score computes on.

A device is written `auto` (CUDA when torch sees a GPU, else the CPU), `cpu`, `cuda` or `cuda:N`:
`train.device` in configs, `--device` for `s2s translate` and `s2s score`. Checkpoints are
always loaded onto the CPU first (s2s.checkpoint) and moved, so a run trained on a GPU
translates on a CPU and the other way round. Asking for CUDA where there is none is one
ConfigError naming the setting, not a traceback.
"""
from __future__ import annotations

import re

from s2s.errors import ConfigError

HELP = "auto (CUDA when available, else the CPU), cpu, cuda or cuda:N"
_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def problem(spec: object) -> str:
    """Why `spec` is not a device setting ('' if it is one). No torch needed."""
    if isinstance(spec, str) and _PATTERN.fullmatch(spec):
        return ""
    return f"{spec!r} is not a device: use {HELP}"


def resolve(spec: str, what: str = "--device"):
    """The torch.device `spec` names on this machine (ConfigError if it has no such device)."""
    import torch

    found = problem(spec)
    if found:
        raise ConfigError(f"{what}: {found}")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        why = "this torch is a CPU-only build" if torch.version.cuda is None else \
            "torch sees no CUDA GPU (check the driver and CUDA_VISIBLE_DEVICES)"
        raise ConfigError(f"{what} {spec}: no CUDA device on this machine ({why}); use "
                          f"{what} cpu or auto")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(f"{what} {spec}: this machine has {count} CUDA device(s), "
                          f"cuda:0 .. cuda:{count - 1}")
    return torch.device("cuda", device.index if device.index is not None
                        else torch.cuda.current_device())

