"""The custom fused cells (built in as `fused-lstm`): the math and parameter layout of `lstm`,
with hand-written backward passes so fewer, larger kernels do the work."""
from __future__ import annotations

from s2s.cells.fused.lstm import FusedLSTMCell

__all__ = ["FusedLSTMCell"]
