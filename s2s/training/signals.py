"""SIGINT/SIGTERM during training: the loop finishes its step, saves and exits."""
from __future__ import annotations

import signal
import threading
from typing import Any


class StopSignals:
    """SIGINT/SIGTERM during training set `received`; the loop finishes its step, saves and
    exits. A second signal interrupts at once (the last checkpoint stays intact)."""

    def __init__(self) -> None:
        self.received: str | None = None
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
