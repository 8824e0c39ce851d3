"""A checkpoint that runs code when unpickled (tests/test_checkpoint.py, tests/test_cli.py,
tests/test_training.py): what weights-only loading must refuse."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from s2s import checkpoint

MARKER_NAME = "pwned"


class RunsCode:
    """Unpickling this calls os.mkdir(marker): stands for arbitrary code execution."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def malicious_checkpoint(directory: Path, marker: Path) -> Path:
    """directory/evil.pt: a well-formed checkpoint except that loading it creates `marker`."""
    path = directory / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "model": {}, "payload": RunsCode(str(marker))}, path)
    return path
