"""The training state a checkpoint holds besides weights and optimizer: counters, the kept
best checkpoints, the random generators, and the run's provenance (cell, versions)."""
from __future__ import annotations

import random
import sys
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata
from typing import Any, NamedTuple

import numpy as np
import torch

from s2s import __version__
from s2s.cells import registry
from s2s.ops import gemm


class Kept(NamedTuple):
    """A best checkpoint kept on disk: its validation metric (higher is better) and step."""

    metric: float
    step: int


@dataclass
class TrainState:
    """Everything a resumed run needs to continue where its checkpoint left off, besides the
    model, optimizer and schedule. Stored flat in the checkpoint (to_dict / from_dict)."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_pos: int = 0  # the next batch of this epoch
    best_kept: list[Kept] = field(default_factory=list)  # best first
    bad_validations: int = 0  # validations since the last improvement
    nonfinite: int = 0  # non-finite steps in a row
    skipped: int = 0  # non-finite steps in total
    elapsed: float = 0.0  # training seconds of the run so far (at the last save / restore)
    tokens_seen: int = 0  # for the run's target tokens/s
    step_time: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["best_kept"] = [[float(k.metric), int(k.step)] for k in self.best_kept]
        return out

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> TrainState:
        """The state of a checkpoint payload (KeyError / TypeError / ValueError if it has
        none)."""
        values = {f.name: payload[f.name] for f in fields(cls)}
        values["best_kept"] = [Kept(float(metric), int(step)) for metric, step in
                               values["best_kept"]]
        return cls(**values)


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out = {"torch": torch.get_rng_state(), "python": random.getstate(),
           "numpy": [kind, keys.tolist(), pos, has_gauss, cached]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()  # dropout on GPUs draws from these
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)  # a resume on the same kind of machine is exact
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cell_info(name: str) -> dict[str, str]:
    """Where the cell `name` comes from: entry-point value, distribution and its version."""
    entry = registry.find(name)
    return {"name": entry.name, "value": entry.value, "dist": entry.dist, "version": entry.version}


def versions() -> dict[str, str]:
    out = {"s2s": __version__, "torch": str(torch.__version__), "python": sys.version.split()[0]}
    for dist in ("sentencepiece", "sacrebleu"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def changed_arithmetic(payload: dict[str, Any], precision: str, requested: str) -> list[str]:
    """Warnings for a resume that computes differently from the run so far (another product
    backend or precision): its losses will not match an uninterrupted run exactly."""
    notes = []
    if payload.get("gemm") and not gemm.prefer(payload["gemm"]):
        notes.append(f"the run used {payload['gemm']} products so far and continues with "
                     f"{gemm.backend()} (S2S_GEMM); losses will not match an uninterrupted "
                     f"run exactly")
    before = payload.get("precision")
    if before is not None and before != precision:
        notes.append(f"the run trained in {before} so far and continues in {precision} "
                     f"(train.precision={requested} on this machine); losses will not match an "
                     f"uninterrupted run exactly")
    return notes
