"""Monitoring: TensorBoard event files and a console progress bar with rate and ETA."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any


class Monitor:
    """TensorBoard scalars/text plus a tqdm bar over steps (or seconds, for a time budget)."""

    def __init__(self, log_dir: str | Path, *, max_steps: int = 0, max_time: float = 0.0,
                 console: bool = True, start_step: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter  # heavy: imported on training paths only
        from tqdm import tqdm

        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.by_time = not max_steps and bool(max_time)
        total = int(max_time) if self.by_time else (max_steps or None)
        self.bar = tqdm(total=total, initial=0 if self.by_time else start_step,
                        unit="s" if self.by_time else "step", dynamic_ncols=True,
                        disable=not console or not sys.stderr.isatty(), file=sys.stderr, mininterval=1.0,
                        bar_format=None if not self.by_time else
                        "{l_bar}{bar}| {n:.0f}/{total_fmt}s [{elapsed}<{remaining}{postfix}]")
        self.console = console
        self.started = time.monotonic()
        self.last_n = 0.0

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def text(self, step: int, tag: str, text: str) -> None:
        self.writer.add_text(tag, text, step)

    def advance(self, step: int, elapsed: float, postfix: dict[str, Any]) -> None:
        if self.by_time:
            self.bar.update(max(0.0, min(elapsed, self.bar.total) - self.last_n))
            self.last_n = min(elapsed, self.bar.total)
            postfix = {"step": step, **postfix}
        else:
            self.bar.update(step - self.bar.n)
        self.bar.set_postfix(postfix, refresh=False)

    def say(self, message: str) -> None:
        if self.console:
            self.bar.write(message, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()
        self.writer.flush()
        self.writer.close()
