"""Checkpoint keeping: checkpoints/step-N.pt written once per step, last.pt and best.pt
pointing at the newest and the best, the best `keep_best` by validation metric and the newest
`keep_last` kept on disk, and patience (validations since the last improvement)."""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from s2s import checkpoint, config
from s2s.errors import CheckpointError
from s2s.training.state import Kept, TrainState

log = logging.getLogger("s2s")


class Keeper:
    def __init__(self, ckpt_dir: Path, cfg: config.TrainConfig, state: TrainState,
                 payload: Callable[[], dict[str, Any]], say: Callable[..., None], *,
                 writes: bool = True) -> None:
        self.dir, self.cfg, self.state = ckpt_dir, cfg, state
        self.payload, self.say = payload, say  # the checkpoint of the current step
        self.writes = writes  # False on ranks > 0 of a distributed run: state only, no files
        self.saved_step = self.failed_step = -1

    def clean(self) -> None:
        """Remove the temporary files of writes a killed run left behind (.NAME.*.tmp)."""
        if self.writes and self.dir.is_dir():
            for stale in self.dir.glob(".*.tmp"):
                stale.unlink(missing_ok=True)

    def save(self, *, final: bool = False) -> bool:
        """Save step-N.pt of the current step (once), point last.pt at it and drop checkpoints
        neither among the last `keep_last` nor the best `keep_best`. A failed write is a
        warning (training goes on; the previous checkpoints are intact) unless `final`."""
        step = self.state.step
        if self.saved_step == step:
            return True
        if self.failed_step == step and not final:
            return False  # failed at this step already (and said so): retry at the next one
        if not self.writes:
            self.saved_step = step
            return True
        try:
            checkpoint.save(self.payload(), checkpoint.step_file(self.dir, step))
            self.link("last.pt")
        except CheckpointError as exc:
            if final:
                raise
            self.say(f"{exc}; training goes on and retries at the next checkpoint",
                     logging.WARNING)
            self.failed_step = step
            return False
        self.saved_step = step
        keep = set(sorted(checkpoint.step_files(self.dir))[-self.cfg.keep_last:])
        keep |= {kept.step for kept in self.state.best_kept}
        for kept_step, path in checkpoint.step_files(self.dir).items():
            if kept_step not in keep:
                path.unlink(missing_ok=True)
        return True

    def link(self, name: str) -> None:
        if self.writes:
            checkpoint.link(checkpoint.step_file(self.dir, self.state.step), self.dir / name)

    def validated(self, metric: float, scheduled: bool) -> bool:
        """Record a validation's metric (higher is better); True if it is the best so far. A
        scheduled validation also counts patience and may enter the best-K checkpoints (saved
        now, so that the checkpoint lists itself); the best so far becomes best.pt."""
        state = self.state
        improved = not state.best_kept or metric > state.best_kept[0].metric
        if scheduled:
            state.bad_validations = 0 if improved else state.bad_validations + 1
            if len(state.best_kept) < self.cfg.keep_best or metric > state.best_kept[-1].metric:
                previous = state.best_kept
                state.best_kept = sorted([*state.best_kept, Kept(metric, state.step)],
                                         key=lambda kept: -kept.metric)[:self.cfg.keep_best]
                if not self.save():
                    state.best_kept = previous  # never name a checkpoint that was not written
        if improved and self.save():
            try:
                self.link("best.pt")
            except CheckpointError as exc:
                self.say(str(exc), logging.WARNING)
        return improved

    def out_of_patience(self) -> bool:
        return bool(self.cfg.patience) and self.state.bad_validations >= self.cfg.patience
