"""Monitoring: TensorBoard event files, a JSON-lines log and a console progress bar with rate
and ETA."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _drop_partial_line(path: Path) -> None:
    """A run killed while writing its log can leave a last line without its newline (half a
    JSON record). Cut it off, so that the resumed run's records start on lines of their own and
    every line stays valid JSON."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


class Monitor:
    """TensorBoard scalars/text/images/hparams, the same scalars as JSON lines (full precision,
    for scripts), plus a tqdm bar over steps (or seconds, for a time budget)."""

    def __init__(self, log_dir: str | Path, *, jsonl: str | Path | None = None,
                 max_steps: int = 0, max_time: float = 0.0, console: bool = True,
                 start_step: int = 0, start_time: float = 0.0, purge_step: int | None = None,
                 fields: dict[str, Any] | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter  # heavy: imported on training paths only
        from tqdm import tqdm

        # purge_step: a resumed run hides the events a killed run wrote after its checkpoint
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
        if jsonl:
            _drop_partial_line(Path(jsonl))
        self.jsonl = open(jsonl, "a", encoding="utf-8") if jsonl else None
        self.by_time = not max_steps and bool(max_time)
        total = int(max_time) if self.by_time else (max_steps or None)
        self.bar = tqdm(total=total, initial=int(start_time) if self.by_time else start_step,
                        unit="s" if self.by_time else "step", dynamic_ncols=True,
                        disable=not console or not sys.stderr.isatty(), file=sys.stderr,
                        mininterval=1.0,
                        bar_format=None if not self.by_time else
                        "{l_bar}{bar}| {n:.0f}/{total_fmt}s [{elapsed}<{remaining}{postfix}]")
        self.console = console
        self.fields = fields or {}  # added to every JSON-lines record (e.g. world_size)
        self.last_n = float(int(start_time)) if self.by_time else 0.0

    def record(self, values: dict[str, Any]) -> None:
        """One line of the JSON-lines log."""
        if self.jsonl is not None:
            self.jsonl.write(json.dumps({**values, **self.fields}) + "\n")
            self.jsonl.flush()

    def scalars(self, step: int, values: dict[str, float], *,
                elapsed: float | None = None) -> None:
        """TensorBoard scalars and one JSON-lines record; `elapsed` (the run's training
        seconds, across resumes) goes into the record as elapsed_s, for time plots."""
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.record({"step": step, **values,
                     **({} if elapsed is None else {"elapsed_s": round(elapsed, 3)})})

    def text(self, step: int, tag: str, text: str) -> None:
        self.writer.add_text(tag, text, step)

    def image(self, step: int, tag: str, image) -> None:
        """image: a [H, W] array with values in [0, 1] or an [H, W, 3] uint8 RGB picture."""
        self.writer.add_image(tag, image, step, dataformats="HWC" if image.ndim == 3 else "HW")

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        self.writer.add_hparams(hparams, metrics, run_name="hparams")

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
        if self.jsonl is not None:
            self.jsonl.close()


class NoMonitor:
    """Monitor's interface, doing nothing: the ranks > 0 of a distributed run write no logs."""

    def __getattr__(self, name: str):
        if name in ("record", "scalars", "text", "image", "hparams", "advance", "say", "close"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)
