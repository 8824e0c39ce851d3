"""s2s: recurrent encoder-decoder neural machine translation with pluggable cells."""
from __future__ import annotations

__version__ = "0.1.0"
