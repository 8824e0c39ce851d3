"""Recurrent cells. The core finds every cell, built-in or third-party, through the
`s2s.cells` entry-point group (see registry.py and docs/plugins.md)."""
from __future__ import annotations

from s2s.cells.base import Cell, State, StepCell

__all__ = ["Cell", "State", "StepCell"]
