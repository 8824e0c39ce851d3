"""What training reports besides checkpoints: the logged window of steps, the console line
that stands in for the progress bar when stderr is not a terminal, and the run's hparams."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from s2s import config

TB_DIR = "tensorboard"
LOG_FILE = "train_log.jsonl"


@dataclass
class Window:
    """The steps since the last log line, summed."""

    nll: float = 0.0
    tokens: int = 0
    grad_norm: float = 0.0
    time: float = 0.0
    steps: int = 0

    def add(self, nll: float, tokens: int, grad_norm: float, seconds: float) -> None:
        self.nll, self.tokens = self.nll + nll, self.tokens + tokens
        self.grad_norm, self.time, self.steps = self.grad_norm + grad_norm, self.time + seconds, \
            self.steps + 1

    def values(self, lr: float) -> dict[str, float]:
        """The TensorBoard scalars of the window."""
        loss = self.nll / max(1, self.tokens)
        return {"train/loss": loss, "train/ppl": math.exp(min(loss, 50.0)), "train/lr": lr,
                "train/grad_norm": self.grad_norm / max(1, self.steps),
                "train/tgt_tokens_per_s": self.tokens / max(self.time, 1e-9)}


def progress_line(step: int, values: dict[str, float], elapsed: float,
                  t: config.TrainConfig) -> str:
    """A log line with rate and ETA (the budget that ends first)."""
    rate = step / max(elapsed, 1e-9)
    left = [x for x in ((t.max_steps - step) / rate if t.max_steps else 0,
                        t.max_time - elapsed if t.max_time else 0) if x > 0]
    eta = f"  ETA {min(left) / 60:.1f} min" if left else ""
    return (f"step {step}  loss {values['train/loss']:.3f}  ppl {values['train/ppl']:.2f}  "
            f"{values['train/tgt_tokens_per_s']:.0f} tgt tok/s  {rate:.2f} steps/s  "
            f"grad norm {values['train/grad_norm']:.2f}{eta}")


def hparams(cfg: config.Config, precision: str) -> dict[str, Any]:
    """Every scalar config value by dotted key, plus the precision `auto` chose here."""
    values = {k: v for k, v in config.flat(config.to_dict(cfg)).items()
              if isinstance(v, (int, float, str, bool))}
    values["train.precision_used"] = precision
    return values


def monitor(run_dir, t: config.TrainConfig, step: int, elapsed: float, resumed: bool, world,
            console: bool):
    """The run's Monitor (TensorBoard, train_log.jsonl whose records carry world_size, the bar)
    on rank 0; a NoMonitor on the other ranks of a distributed run."""
    from s2s.monitor import Monitor, NoMonitor

    if not world.main:
        return NoMonitor()
    out = Monitor(run_dir / TB_DIR, jsonl=run_dir / LOG_FILE, max_steps=t.max_steps,
                  max_time=t.max_time, console=console, start_step=step, start_time=elapsed,
                  purge_step=step + 1 if resumed else None, fields={"world_size": world.size})
    if resumed:
        out.record({"resumed_from": step})
    return out
