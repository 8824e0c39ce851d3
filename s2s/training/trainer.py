"""The trainer: set-up, the step loop, one optimizer step, budgets and signals. Preparation,
state, checkpoint keeping, validation and the optimizer live in their own modules here."""
from __future__ import annotations

import itertools
import logging
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from s2s import checkpoint, config, console, devices
from s2s import precision as precisions
from s2s.batching import bucket_batches
from s2s.cells import registry
from s2s.errors import CheckpointError, ConfigError
from s2s.model import Seq2Seq
from s2s.ops import gemm
from s2s.ops.runtime import limit_onednn_caches, set_threads, tune_allocator
from s2s.training import distributed, finish, optim, report, step, validation
from s2s.training import state as states
from s2s.training.keeper import Keeper
from s2s.training.prepare import prepare_run
from s2s.training.signals import StopSignals
from s2s.training.state import TrainState

log = logging.getLogger("s2s")


class Trainer:
    def __init__(self, cfg: config.Config, run_dir: str | Path, *, console: bool = True,
                 resume: dict[str, Any] | None = None) -> None:
        self.world = distributed.from_env()  # torchrun's processes (rank 0 of 1 without it)
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.console = console and self.world.main  # rank 0 speaks, writes and validates
        self.resume_from = resume  # the payload of the checkpoint to continue from
        self.ckpt_dir = self.run_dir / checkpoint.CHECKPOINT_DIR
        self.state = TrainState()
        self.keeper = Keeper(self.ckpt_dir, cfg.train, self.state, self._payload, self._say,
                             writes=self.world.main)
        self.rng_ranks: list[dict] | None = None  # every rank's generators (distributed runs)
        self.started = time.monotonic()
        self.elapsed_before = 0.0  # training seconds of earlier sessions of this run
        self.validated_step = -1
        self.last_validation: dict[str, float] = {}
        self.monitor = None
        # made by setup()
        self.precision, self.device = "fp32", None
        self.tokenizer = self.train_data = self.valid_data = self.lexicon = None
        self.model = self.optimizer = self.scheduler = self.cell = None

    def _say(self, message: str, level: int = logging.INFO) -> None:
        if self.console:
            log.log(level, message)

    # -- set-up ----------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg, t = self.cfg, self.cfg.train
        if self.resume_from is None and self.ckpt_dir.is_dir() and any(self.ckpt_dir.glob("*.pt")):
            raise ConfigError(f"--run-dir {self.run_dir} already holds a trained run "
                              f"({self.ckpt_dir}); continue it with `s2s train --resume "
                              f"{self.run_dir}` or choose a new --run-dir")
        self.keeper.clean()
        cell_cls, entry = registry.load(cfg.model.cell)  # fail fast: before any data work
        registry.check_options(cell_cls, entry, dict(cfg.model.cell_options))
        self.device = distributed.join(self.world, devices.resolve(t.device, "train.device"))
        set_threads(t.threads)
        tune_allocator()
        limit_onednn_caches()
        # the precision this device trains in (auto: bf16 only where it is native)
        self.precision, note = precisions.decide(t.precision, self.device,
                                                 what="train.precision")
        states.seed_all(t.seed)
        self.tokenizer, self.train_data, self.valid_data, self.lexicon = prepare_run(
            cfg, self.run_dir, self.world, (self.resume_from or {}).get("lexicon"), self._say,
            self.console and sys.stderr.isatty())
        self.model = Seq2Seq(cfg.model, self.tokenizer.src_vocab_size,
                             self.tokenizer.tgt_vocab_size).to(self.device)
        n_params = sum(p.numel() for p in self.model.parameters())
        self._say(f"model: {cfg.model.cell} cells, {n_params / 1e6:.2f}M parameters; "
                  f"vocab {self.tokenizer.src_vocab_size}/{self.tokenizer.tgt_vocab_size}; "
                  f"on {self.device}")
        if note:
            self._say(note)
        self.world.start(self.model, self.tokenizer, t.seed)
        self.optimizer = optim.optimizer(self.model.parameters(), t)
        self.scheduler = optim.scheduler(self.optimizer, t, clock=self._elapsed)
        self.cell = states.cell_info(cfg.model.cell)
        if self.resume_from is not None:
            self._restore(self.resume_from)

    def _restore(self, payload: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(payload["model"])
            self.optimizer.load_state_dict(payload["optimizer"])
            self.scheduler.load_state_dict(payload["scheduler"])
            restored = TrainState.from_dict(payload)
            distributed.restore_rng(payload, self.world, self.cfg.train.seed, self._say)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{self.ckpt_dir / 'last.pt'} cannot be resumed ({exc}); it "
                                  f"was not written by this version's trainer") from exc
        vars(self.state).update(vars(restored))  # the keeper holds the same state object
        self.elapsed_before = restored.elapsed
        self.keeper.saved_step = restored.step
        s = self.state
        self._say(f"resuming at step {s.step} (epoch {s.epoch}, batch {s.batch_pos})")
        for note in states.changed_arithmetic(payload, self.precision, self.cfg.train.precision):
            self._say(note, logging.WARNING)

    def _sync_rng(self) -> None:
        """Collect every rank's generators on rank 0 before a checkpoint may be written."""
        if self.world.distributed:
            self.rng_ranks = self.world.gather(states.rng_state())

    def _payload(self) -> dict[str, Any]:
        self.state.elapsed = self._elapsed()
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "config": config.to_dict(self.cfg),
            "spm": self.tokenizer.to_bytes(),
            "lexicon": self.lexicon,  # for translate --shortlist (s2s.shortlist)
            **self.state.to_dict(),
            "rng": states.rng_state(),  # rank 0's
            "rng_ranks": self.rng_ranks and [states.rng_state(), *self.rng_ranks[1:]],
            "world_size": self.world.size,
            "cell": self.cell,
            "precision": self.precision,  # what train.precision resolved to on this machine
            "device": str(self.device),
            "gemm": gemm.backend(),  # the float32 product backend (kept on resume)
            "versions": states.versions(),
        }

    def _elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    # -- one step --------------------------------------------------------------------------------
    def train_step(self, group: list[np.ndarray]) -> tuple[bool, float, float, int]:
        """One optimizer step on `group` (accum_steps global batches of example indices; this
        rank computes its share of each): see step.step."""
        rows, totals = self.world.shares(self.train_data, group)
        return step.step(self.model, self.optimizer, self.scheduler, rows, self.cfg.train,
                         self.precision, self.device, totals=totals, world=self.world)

    def _batches(self) -> Iterator[Any]:
        """Training batches from the current position on, across epochs; state.epoch and
        state.batch_pos always name the next batch."""
        t, s = self.cfg.train, self.state
        while not (t.max_epochs and s.epoch >= t.max_epochs):
            batches = bucket_batches(self.train_data.src_len, self.train_data.tgt_len,
                                     t.batch_size, t.batch_type, seed=t.seed, epoch=s.epoch)
            while s.batch_pos < len(batches):
                s.batch_pos += 1
                yield batches[s.batch_pos - 1]
            s.epoch, s.batch_pos = s.epoch + 1, 0

    # -- validation ------------------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        return validation.validate(self.model, self.tokenizer, self.valid_data, self.cfg,
                                   self.precision, self.monitor, self.state.step)

    def _validate_and_keep_best(self, scheduled: bool = True) -> dict[str, float]:
        """Validate; a scheduled validation (every validate_every steps) also drives patience,
        the plateau schedule and the best-K checkpoints. An unscheduled one (the final one of
        a budget stop) only logs and, if it is the best so far, points best.pt at this step,
        so a resumed run continues exactly as an uninterrupted one would."""
        started = time.monotonic()
        # rank 0 validates; every rank gets its figures (plateau and patience decide alike)
        result = self.world.broadcast(self.validate() if self.world.main else None)
        self.last_validation = result
        self.validated_step = self.state.step
        self.monitor.scalars(self.state.step, result, elapsed=self._elapsed())
        metric = validation.metric(result, self.cfg.train.metric)
        if scheduled and self.cfg.train.schedule == "plateau":
            self.scheduler.step(metric)
        improved = self.keeper.validated(metric, scheduled)
        shown = "  ".join(f"{k.split('/')[1]} {v:.2f}" for k, v in result.items())
        self._say(f"step {self.state.step} validation: {shown}{'  (best)' if improved else ''}"
                  f"  [{time.monotonic() - started:.0f}s]")
        return result

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        if self.console:
            console.install()
        self.setup()
        t, s = self.cfg.train, self.state
        self.started = time.monotonic()
        self.monitor = report.monitor(self.run_dir, t, s.step, self.elapsed_before,
                                      self.resume_from is not None, self.world, self.console)
        window = report.Window()
        batches = self._batches()
        served = None
        try:
            with StopSignals() as signals:
                while True:
                    received, reason = self._should_stop(signals)
                    if received:
                        return self._stop_on_signal(received)
                    if reason:
                        break
                    group = list(itertools.islice(batches, t.accum_steps))
                    if not group:
                        reason = "max_epochs"
                        break
                    step_start = time.monotonic()
                    finite, nll, grad_norm, tokens = self.train_step(group)
                    if not finite:
                        self._nonfinite(nll, grad_norm)
                        continue
                    s.nonfinite = 0
                    s.step += 1
                    spent = time.monotonic() - step_start
                    window.add(nll, tokens, grad_norm, spent)
                    s.tokens_seen += tokens
                    s.step_time += spent
                    if s.step % t.log_every == 0:
                        self._log(window)
                        window = report.Window()
                    self.monitor.advance(s.step, self._elapsed(),
                                         {"ep": s.epoch, "loss": f"{nll / max(tokens, 1):.3f}"})
                    if s.step % t.validate_every == 0 or s.step % t.checkpoint_every == 0:
                        self._sync_rng()  # a checkpoint may be written now
                    if s.step % t.validate_every == 0:
                        self._validate_and_keep_best()
                    if s.step % t.checkpoint_every == 0:
                        self.keeper.save()
                if window.steps:
                    self._log(window)
                self._sync_rng()
                final = self.last_validation if self.validated_step == s.step else \
                    self._validate_and_keep_best(scheduled=False)  # not just validated
                self.keeper.save(final=True)
                self.monitor.hparams(report.hparams(self.cfg, self.precision),
                                     {f"hparam/{k.split('/')[1]}": v for k, v in final.items()})
                if self.world.main:  # averaging, the length penalty on val: serving.json
                    served = finish.finish(self.run_dir, self.cfg, self.valid_data,
                                           self.precision, self._say)
        finally:
            self.monitor.close()
            self.world.close()
        return {"step": s.step, "epoch": s.epoch, "stopped_by": reason,
                "skipped_steps": s.skipped,
                **({"serving": f"{served['checkpoint']} {served['search']}"} if served else {}),
                "train_tgt_tok_s": s.tokens_seen / max(s.step_time, 1e-9), **final}

    def _should_stop(self, signals: StopSignals) -> tuple[str | None, str]:
        """(the signal to stop on, the spent budget), agreed by every rank."""
        return self.world.agree_stop(signals.received, self._budget_spent(), self.device)

    def _budget_spent(self) -> str:
        """Why training must stop before another step ("" to go on)."""
        t, s = self.cfg.train, self.state
        if t.max_steps and s.step >= t.max_steps:
            return "max_steps"
        if t.max_time and self._elapsed() >= t.max_time:
            return "max_time"
        if self.keeper.out_of_patience():
            self._say(f"early stopping: no better val {t.metric} in {t.patience} validations")
            return "early stopping"
        return ""

    def _stop_on_signal(self, name: str) -> dict[str, Any]:
        self._sync_rng()
        self.keeper.save(final=True)
        s = self.state
        return {"step": s.step, "epoch": s.epoch, "stopped_by": name, "skipped_steps": s.skipped,
                "checkpoint": str(checkpoint.step_file(self.ckpt_dir, s.step))}

    def _nonfinite(self, nll: float, grad_norm: float) -> None:
        t, s = self.cfg.train, self.state
        s.nonfinite += 1
        s.skipped += 1
        self.monitor.scalars(s.step, {"train/skipped_steps": s.skipped}, elapsed=self._elapsed())
        self._say(f"non-finite {'loss' if not math.isfinite(nll) else 'gradient'} after step "
                  f"{s.step}: update skipped ({s.nonfinite} in a row)", logging.WARNING)
        if s.nonfinite >= t.max_nonfinite:
            raise step.nonfinite_error(s.nonfinite, s.step, t.max_nonfinite, self.ckpt_dir)

    def _log(self, window: report.Window) -> None:
        values = window.values(self.optimizer.param_groups[0]["lr"])
        self.monitor.scalars(self.state.step, values, elapsed=self._elapsed())
        if not sys.stderr.isatty():  # no progress bar: a log line with rate and ETA instead
            self._say(report.progress_line(self.state.step, values, self._elapsed(),
                                           self.cfg.train))


def train(cfg: config.Config, run_dir: str | Path, *, console: bool = True) -> dict[str, Any]:
    """Train `cfg` into the new run directory `run_dir`; returns the final figures."""
    return Trainer(cfg, run_dir, console=console).run()
