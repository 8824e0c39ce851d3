"""Checkpoints: written atomically (temp file, fsync, rename), loaded weights-only.

A checkpoint is self-contained: model weights, the resolved config, the SentencePiece model(s)
as bytes, the cell's name/distribution/version and the library versions, plus training state
(optimizer, step, ...) when saved by the trainer. Nothing in it is code.
"""
from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from s2s.errors import CheckpointError

FORMAT = 1
CHECKPOINT_DIR = "checkpoints"


def save(payload: dict[str, Any], path: str | Path) -> None:
    """Write `payload` to `path` atomically; on failure the previous file is left intact."""
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp creates 0600; checkpoints are ordinary files
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if not isinstance(exc, OSError):
            raise
        kept = "the previous checkpoint is intact" if path.exists() else "nothing was written"
        raise CheckpointError(f"writing checkpoint {path} failed ({exc.strerror or exc}); "
                              f"{kept}. Free disk space or choose another --run-dir") from exc


def load(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file without executing code from it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"checkpoint {path} is unreadable or truncated, or not an s2s "
                              f"checkpoint (not a PyTorch zip archive); point at a .pt file "
                              f"written by `s2s train`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"checkpoint {path} refused: it contains objects that would run code "
                              f"when loaded; s2s loads weights only. Use a checkpoint written by "
                              f"s2s") from exc
    except Exception as exc:  # any other failure of the unpickler: a damaged or foreign file
        raise CheckpointError(f"checkpoint {path} is unreadable or truncated ({exc}); use "
                              f"another checkpoint of the run") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "model" not in payload:
        raise CheckpointError(f"checkpoint {path}: not an s2s checkpoint (format {FORMAT})")
    return payload


def resolve(path: str | Path) -> Path:
    """A checkpoint file, or a run directory -> its best (else last) checkpoint."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / CHECKPOINT_DIR / name).is_file():
                return path / CHECKPOINT_DIR / name
        raise CheckpointError(f"{path}: no {CHECKPOINT_DIR}/best.pt or {CHECKPOINT_DIR}/last.pt; "
                              f"is it a run directory written by `s2s train`?")
    if not path.exists():
        raise CheckpointError(f"{path}: no such run directory or checkpoint file")
    return path
