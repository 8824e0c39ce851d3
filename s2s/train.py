"""Training: data preparation, the step loop, budgets, validation, checkpoints and resume.

A run never loses work: checkpoints are atomic and hold everything a resumed run needs to continue
bitwise where the checkpoint left off (optimizer, schedule, RNG states, the data position,
early-stopping state); SIGINT/SIGTERM finish the current step, save and exit cleanly.
The trainer never decodes itself: validation BLEU goes through translate.translate_lines and
evaluate.score.
"""
from __future__ import annotations

import itertools
import math
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from s2s import __version__, checkpoint, config, evaluate, precision as precisions, shortlist
from s2s.ops import gemm
from s2s.batching import bucket_batches, collate
from s2s.cells import registry
from s2s.errors import CheckpointError, ConfigError, DataError, TrainingError
from s2s.model import Seq2Seq
from s2s.tokenizer import Tokenizer
from s2s.ops.runtime import limit_onednn_caches, set_threads, tune_allocator
from s2s.translate import translate_lines

CONFIG_FILE = "config.yaml"
TB_DIR = "tensorboard"
LOG_FILE = "train_log.jsonl"
N_SAMPLES = 3  # validation sentences shown as text and attention images in TensorBoard
# config keys a resumed run may change; any other difference refuses the resume
RESUMABLE = {"train.max_steps", "train.max_time", "train.max_epochs", "train.log_every",
             "train.validate_every", "train.checkpoint_every", "train.keep_last",
             "train.keep_best", "train.patience", "train.threads", "train.valid_batch_size",
             "train.max_nonfinite", "train.precision"}


@dataclass
class Corpus:
    """A tokenized split: datasets.Dataset with src_ids/tgt_ids plus lengths as arrays."""

    data: Any
    src_len: np.ndarray
    tgt_len: np.ndarray
    raw_src: list[str] = field(default_factory=list)  # validation only: every line, for BLEU
    raw_tgt: list[str] = field(default_factory=list)


class _Column:
    """A re-iterable view of one text column of a datasets.Dataset."""

    def __init__(self, ds, name: str) -> None:
        self.ds, self.name = ds, name

    def __iter__(self):
        for chunk in self.ds.select_columns([self.name]).iter(batch_size=10_000):
            yield from chunk[self.name]


def _encode(ds, tokenizer: Tokenizer, max_len: int, name: str, say: Callable[[str], None]
            ) -> Corpus:
    import hashlib

    def encode(batch: dict) -> dict:
        src, tgt = tokenizer.encode_src(batch["src"]), tokenizer.encode_tgt(batch["tgt"])
        return {"src_ids": src, "tgt_ids": tgt, "src_len": [len(s) for s in src],
                "tgt_len": [len(t) for t in tgt]}

    digest = hashlib.sha256()
    digest.update(str(ds._fingerprint).encode())
    for blob in tokenizer.to_bytes().values():
        digest.update(blob if isinstance(blob, bytes) else blob.encode())
    ds = ds.map(encode, batched=True, batch_size=2000, new_fingerprint=digest.hexdigest()[:32],
                desc=f"tokenizing {name}")
    src_len, tgt_len = np.asarray(ds["src_len"]), np.asarray(ds["tgt_len"])
    empty = (src_len == 0) | (tgt_len == 0)
    long = ~empty & ((src_len > max_len) | (tgt_len > max_len))
    keep = np.flatnonzero(~(empty | long))
    say(f"{name}: {len(ds)} pairs, {int(empty.sum())} empty and {int(long.sum())} longer than "
        f"{max_len} pieces dropped, {len(keep)} kept")
    if len(keep) == 0:
        raise DataError(f"{name}: no usable pairs left (all empty or longer than data.max_len="
                        f"{max_len}); check the data files and data.max_len")
    data = ds.select(keep).select_columns(["src_ids", "tgt_ids"])
    return Corpus(data, src_len[keep], tgt_len[keep])


def prepare(cfg: config.Config, run_dir: Path, say: Callable[[str], None]
            ) -> tuple[Tokenizer, Corpus, Corpus]:
    """The run's tokenizer (trained unless the run has one) and its encoded splits."""
    from s2s import data

    train_raw = data.load_split(cfg.data, cfg.data.train)
    valid_raw = data.load_split(cfg.data, cfg.data.valid)
    if len(train_raw) == 0:
        raise DataError(f"training split '{cfg.data.train}' is empty")
    if Tokenizer.exists(run_dir):
        tokenizer = Tokenizer.load(run_dir)
    else:
        say(f"training SentencePiece ({cfg.data.spm_model_type}, {cfg.data.vocab_size} pieces, "
            f"{'joint' if cfg.data.joint_vocab else 'separate'}) ...")
        tokenizer = Tokenizer.train(_Column(train_raw, "src"), _Column(train_raw, "tgt"),
                                    cfg.data, run_dir)
    train = _encode(train_raw, tokenizer, cfg.data.max_len, "train", say)
    valid = _encode(valid_raw, tokenizer, cfg.data.max_len, "valid", say)
    valid.raw_src, valid.raw_tgt = list(valid_raw["src"]), list(valid_raw["tgt"])
    return tokenizer, train, valid


def build_lexicon(tokenizer: Tokenizer, train: Corpus, seed: int,
                  say: Callable[[str], None]) -> dict[str, torch.Tensor]:
    """The target-vocabulary lexicon of `s2s translate --shortlist`, from the encoded training
    split (stored in every checkpoint; `s2s lexicon` rebuilds it for older runs)."""
    return shortlist.build_for(train.data, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size,
                               seed, say)


def _cell_info(name: str) -> dict[str, str]:
    entry = registry.find(name)
    return {"name": entry.name, "value": entry.value, "dist": entry.dist, "version": entry.version}


def _versions() -> dict[str, str]:
    out = {"s2s": __version__, "torch": str(torch.__version__), "python": sys.version.split()[0]}
    for dist in ("sentencepiece", "sacrebleu"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "cell_options":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Keys (outside RESUMABLE) whose values differ between two config dicts."""
    a, b = _flat(old), _flat(new)
    keys = sorted(a.keys() | b.keys())
    return [f"{key} (run: {a.get(key)!r}, now: {b.get(key)!r})" for key in keys
            if key not in RESUMABLE and a.get(key) != b.get(key)]


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [kind, keys.tolist(), pos, has_gauss, cached]}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _lr_factor(t: config.TrainConfig) -> Callable[[int], float]:
    """LambdaLR factor for the constant, inverse_sqrt and linear schedules (after `steps`
    optimizer steps), with linear warm-up and the min_lr floor."""
    warmup, floor = t.warmup_steps, t.min_lr / t.lr

    def factor(steps: int) -> float:
        if steps < warmup:
            value = (steps + 1) / warmup
        elif t.schedule == "inverse_sqrt":
            value = math.sqrt(max(warmup, 1) / (steps + 1))
        elif t.schedule == "linear":
            value = max(0.0, (t.max_steps - steps) / max(1, t.max_steps - warmup))
        else:
            value = 1.0
        return max(value, floor)

    return factor


class _StopSignals:
    """SIGINT/SIGTERM during training set `received`; the loop finishes its step, saves and
    exits. A second signal interrupts at once (the last checkpoint stays intact)."""

    def __init__(self) -> None:
        self.received: str | None = None
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __enter__(self) -> "_StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


@torch.no_grad()
def attention_map(model: Seq2Seq, src_ids: list[int], tgt_ids: list[int]) -> torch.Tensor:
    """Attention weights [T, S] of the model reading the reference (teacher forcing)."""
    batch = collate([src_ids], [tgt_ids])
    enc, state = model.encode(batch.src, batch.src_lengths)
    rows = []
    for token in batch.tgt_in[0]:
        _, state, weights = model.step(token.view(1), enc, state)
        rows.append(weights[0].float())
    return torch.stack(rows)  # [T, S]


class Trainer:
    def __init__(self, cfg: config.Config, run_dir: str | Path, *, console: bool = True,
                 resume: dict[str, Any] | None = None) -> None:
        self.cfg, self.run_dir, self.console = cfg, Path(run_dir), console
        self.resume_from = resume  # the payload of the checkpoint to continue from
        self.ckpt_dir = self.run_dir / checkpoint.CHECKPOINT_DIR
        self.step = self.epoch = self.batch_pos = 0  # batch_pos: next batch of this epoch
        self.best_kept: list[list[float]] = []  # [metric, step] of the kept best, best first
        self.bad_validations = 0  # validations since the last improvement
        self.nonfinite = self.skipped = 0  # non-finite steps in a row / in total
        self.elapsed_before = 0.0  # training seconds of earlier sessions of this run
        self.tokens_seen, self.step_time = 0, 0.0  # for the run's target tokens/s
        self.saved_step = self.validated_step = -1
        self.monitor = None

    # -- set-up ----------------------------------------------------------------------------------
    def _say(self, message: str) -> None:
        if self.monitor is not None:
            self.monitor.say(message)
        elif self.console:
            print(message, file=sys.stderr, flush=True)

    def _check_run_dir(self) -> None:
        if self.ckpt_dir.is_dir() and any(self.ckpt_dir.glob("*.pt")):
            raise ConfigError(f"--run-dir {self.run_dir} already holds a trained run "
                              f"({self.ckpt_dir}); continue it with `s2s train --resume "
                              f"{self.run_dir}` or choose a new --run-dir")

    def setup(self) -> None:
        cfg = self.cfg
        if self.resume_from is None:
            self._check_run_dir()
        cell_cls, entry = registry.load(cfg.model.cell)  # fail fast: before any data work
        registry.check_options(cell_cls, entry, dict(cfg.model.cell_options))
        set_threads(cfg.train.threads)
        tune_allocator()
        limit_onednn_caches()
        # the precision this machine trains in (auto: bf16 only where it is native)
        self.precision, note = precisions.decide(cfg.train.precision, "cpu",
                                                 what="train.precision")
        random.seed(cfg.train.seed)
        np.random.seed(cfg.train.seed)
        torch.manual_seed(cfg.train.seed)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config.dump(cfg, self.run_dir / CONFIG_FILE)
        self.tokenizer, self.train_data, self.valid_data = prepare(cfg, self.run_dir, self._say)
        kept = (self.resume_from or {}).get("lexicon")  # a resumed run keeps its lexicon
        self.lexicon = kept if kept is not None else build_lexicon(
            self.tokenizer, self.train_data, cfg.train.seed, self._say)
        self.model = Seq2Seq(cfg.model, self.tokenizer.src_vocab_size,
                             self.tokenizer.tgt_vocab_size)
        n_params = sum(p.numel() for p in self.model.parameters())
        self._say(f"model: {cfg.model.cell} cells, {n_params / 1e6:.2f}M parameters; "
                  f"vocab {self.tokenizer.src_vocab_size}/{self.tokenizer.tgt_vocab_size}")
        if note:
            self._say(note)
        t = cfg.train
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=t.lr,
                                          betas=(t.adam_beta1, t.adam_beta2),
                                          weight_decay=t.weight_decay)
        if t.schedule == "plateau":
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, mode="max", factor=t.decay_factor, patience=t.decay_patience,
                min_lr=t.min_lr, threshold=0.0, threshold_mode="abs", eps=0.0)  # strictly better
        else:
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_factor(t))
        self.cell = _cell_info(cfg.model.cell)
        if self.resume_from is not None:
            self._restore(self.resume_from)

    def _restore(self, payload: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(payload["model"])
            self.optimizer.load_state_dict(payload["optimizer"])
            self.scheduler.load_state_dict(payload["scheduler"])
            for name in ("step", "epoch", "batch_pos", "best_kept", "bad_validations",
                         "nonfinite", "skipped", "tokens_seen", "step_time"):
                setattr(self, name, payload[name])
            self.elapsed_before = payload["elapsed"]
            _set_rng_state(payload["rng"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{self.ckpt_dir / 'last.pt'} cannot be resumed ({exc}); it "
                                  f"was not written by this version's trainer") from exc
        self.saved_step = self.step
        self._say(f"resuming at step {self.step} (epoch {self.epoch}, batch {self.batch_pos})")
        if payload.get("gemm") and not gemm.prefer(payload["gemm"]):
            self._say(f"warning: the run used {payload['gemm']} products so far and continues "
                      f"with {gemm.backend()} (S2S_GEMM); losses will not match an "
                      f"uninterrupted run exactly")
        before = payload.get("precision")
        if before is not None and before != self.precision:
            self._say(f"warning: the run trained in {before} so far and continues in "
                      f"{self.precision} (train.precision={self.cfg.train.precision} on this "
                      f"machine); losses will not match an uninterrupted run exactly")

    # -- one step --------------------------------------------------------------------------------
    def train_step(self, groups: list[dict]) -> tuple[bool, float, float, int]:
        """One optimizer step on `groups` (accum_steps batches). Returns (finite, summed NLL,
        grad norm, target tokens). A non-finite loss or gradient skips the update."""
        t = self.cfg.train
        batches = [collate(rows["src_ids"], rows["tgt_ids"]) for rows in groups]
        tokens = sum(b.n_tgt_tokens for b in batches)
        norm = tokens if t.normalization == "tokens" else sum(b.size for b in batches)
        self.model.train()
        total = 0.0
        for batch in batches:
            with precisions.compute(self.precision):
                loss, nll = self.model.loss(batch.src, batch.src_lengths, batch.tgt_in,
                                            batch.tgt_out, t.label_smoothing)
            (loss / norm).backward()
            total += float(nll)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), t.clip_norm if t.clip_norm > 0 else float("inf")))
        finite = math.isfinite(total) and math.isfinite(grad_norm)
        if finite:
            self.optimizer.step()
            if t.schedule != "plateau":
                self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return finite, total, grad_norm, tokens

    def _batches(self) -> Iterator[Any]:
        """Training batches from the current position on, across epochs; self.epoch and
        self.batch_pos always name the next batch."""
        t = self.cfg.train
        while not (t.max_epochs and self.epoch >= t.max_epochs):
            batches = bucket_batches(self.train_data.src_len, self.train_data.tgt_len,
                                     t.batch_size, t.batch_type, seed=t.seed, epoch=self.epoch)
            while self.batch_pos < len(batches):
                self.batch_pos += 1
                yield batches[self.batch_pos - 1]
            self.epoch, self.batch_pos = self.epoch + 1, 0

    # -- validation ------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        t = self.cfg.train
        valid = self.valid_data
        self.model.eval()
        total_nll, total_tokens = 0.0, 0
        for idx in bucket_batches(valid.src_len, valid.tgt_len, t.valid_batch_size, "sents",
                                  shuffle=False):
            rows = valid.data[idx.tolist()]
            batch = collate(rows["src_ids"], rows["tgt_ids"])
            with precisions.compute(self.precision):
                _, nll = self.model.loss(batch.src, batch.src_lengths, batch.tgt_in, batch.tgt_out)
            total_nll += float(nll)
            total_tokens += batch.n_tgt_tokens
        loss = total_nll / max(1, total_tokens)
        result = {"val/loss": loss, "val/ppl": math.exp(min(loss, 50.0))}
        if t.valid_bleu:
            hyps = translate_lines(self.model, self.tokenizer, valid.raw_src, beam=1,
                                   batch_size=t.valid_batch_size,
                                   max_src_len=self.cfg.data.max_len * 2)
            scores = evaluate.score(hyps, valid.raw_tgt, ("bleu", "chrf"))
            result["val/bleu"], result["val/chrf"] = scores["bleu"].score, scores["chrf"].score
            samples = "\n\n".join(f"src: {s}  \nref: {r}  \nhyp: {h}" for s, r, h in
                                  list(zip(valid.raw_src, valid.raw_tgt, hyps))[:N_SAMPLES])
            self.monitor.text(self.step, "val/samples", samples)
        for i in range(min(N_SAMPLES, len(valid.src_len))):
            row = valid.data[i]
            weights = attention_map(self.model, row["src_ids"], row["tgt_ids"])  # [T, S]
            pixels = weights.repeat_interleave(8, 0).repeat_interleave(8, 1)  # 8x8 px per cell
            self.monitor.image(self.step, f"attention/{i}", pixels)
        self.model.train()
        return result

    def _metric(self, result: dict[str, float]) -> float:
        """The configured metric, higher is better."""
        metric = self.cfg.train.metric
        return -result["val/loss"] if metric == "loss" else result[f"val/{metric}"]

    def _validate_and_keep_best(self, scheduled: bool = True) -> dict[str, float]:
        """Validate; a scheduled validation (every validate_every steps) also drives patience,
        the plateau schedule and the best-K checkpoints. An unscheduled one (the final one of
        a budget stop) only logs and, if it is the best so far, points best.pt at this step,
        so a resumed run continues exactly as an uninterrupted one would."""
        t = self.cfg.train
        started = time.monotonic()
        result = self.last_validation = self.validate()
        self.validated_step = self.step
        self.monitor.scalars(self.step, result)
        metric = self._metric(result)
        improved = not self.best_kept or metric > self.best_kept[0][0]
        if scheduled:
            self.bad_validations = 0 if improved else self.bad_validations + 1
            if t.schedule == "plateau":
                self.scheduler.step(metric)
            if len(self.best_kept) < t.keep_best or metric > self.best_kept[-1][0]:
                previous = self.best_kept  # the checkpoint written now must list itself
                self.best_kept = sorted([*self.best_kept, [metric, self.step]],
                                        key=lambda kept: -kept[0])[:t.keep_best]
                if not self._save_step():
                    self.best_kept = previous  # never name a checkpoint that was not written
        if improved and self._save_step():
            try:
                self._link("best.pt")
            except CheckpointError as exc:
                self._say(f"warning: {exc}")
        shown = "  ".join(f"{k.split('/')[1]} {v:.2f}" for k, v in result.items())
        self._say(f"step {self.step} validation: {shown}{'  (best)' if improved else ''}  "
                  f"[{time.monotonic() - started:.0f}s]")
        return result

    # -- checkpoints -----------------------------------------------------------------------------
    def _payload(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "config": config.to_dict(self.cfg),
            "spm": self.tokenizer.to_bytes(),
            "lexicon": self.lexicon,  # for translate --shortlist (s2s.shortlist)
            "step": self.step, "epoch": self.epoch, "batch_pos": self.batch_pos,
            "best_kept": self.best_kept, "bad_validations": self.bad_validations,
            "nonfinite": self.nonfinite, "skipped": self.skipped,
            "elapsed": self._elapsed(), "tokens_seen": self.tokens_seen,
            "step_time": self.step_time,
            "rng": _rng_state(),
            "cell": self.cell,
            "precision": self.precision,  # what train.precision resolved to on this machine
            "gemm": gemm.backend(),  # the float32 product backend (kept on resume)
            "versions": _versions(),
        }

    def _elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    def _link(self, name: str) -> None:
        checkpoint.link(checkpoint.step_file(self.ckpt_dir, self.step), self.ckpt_dir / name)

    def _save_step(self, *, final: bool = False) -> bool:
        """Save checkpoints/step-N.pt (once per step), point last.pt at it and drop checkpoints
        neither among the last `keep_last` nor the best `keep_best`. A failed write is a
        warning (training goes on; the previous checkpoints are intact) unless `final`."""
        if self.saved_step == self.step:
            return True
        try:
            checkpoint.save(self._payload(), checkpoint.step_file(self.ckpt_dir, self.step))
            self._link("last.pt")
        except CheckpointError as exc:
            if final:
                raise
            self._say(f"warning: {exc}; training goes on and retries at the next checkpoint")
            return False
        self.saved_step = self.step
        t = self.cfg.train
        keep = set(sorted(checkpoint.step_files(self.ckpt_dir))[-t.keep_last:])
        keep |= {int(step) for _, step in self.best_kept}
        for step, path in checkpoint.step_files(self.ckpt_dir).items():
            if step not in keep:
                path.unlink(missing_ok=True)
        return True

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from s2s.monitor import Monitor

        self.setup()
        t = self.cfg.train
        self.started = time.monotonic()
        self.monitor = Monitor(self.run_dir / TB_DIR, jsonl=self.run_dir / LOG_FILE,
                               max_steps=t.max_steps, max_time=t.max_time, console=self.console,
                               start_step=self.step, start_time=self.elapsed_before,
                               purge_step=self.step + 1 if self.resume_from else None)
        if self.resume_from is not None:
            self.monitor.record({"resumed_from": self.step})
        window = {"nll": 0.0, "tokens": 0, "time": 0.0, "norm": 0.0, "steps": 0}
        batches = self._batches()
        try:
            with _StopSignals() as signals:
                while True:
                    if signals.received:
                        return self._stop_on_signal(signals.received)
                    reason = self._budget_spent()
                    if reason:
                        break
                    group = list(itertools.islice(batches, t.accum_steps))
                    if not group:
                        reason = "max_epochs"
                        break
                    step_start = time.monotonic()
                    finite, nll, norm, tokens = self.train_step(
                        [self.train_data.data[idx.tolist()] for idx in group])
                    if not finite:
                        self._nonfinite(nll, norm)
                        continue
                    self.nonfinite = 0
                    self.step += 1
                    spent = time.monotonic() - step_start
                    for key, value in (("nll", nll), ("tokens", tokens), ("norm", norm),
                                       ("steps", 1), ("time", spent)):
                        window[key] += value
                    self.tokens_seen += tokens
                    self.step_time += spent
                    if self.step % t.log_every == 0:
                        self._log(window)
                        window = {k: 0 for k in window}
                    self.monitor.advance(self.step, self._elapsed(),
                                         {"ep": self.epoch, "loss": f"{nll / max(tokens, 1):.3f}"})
                    if self.step % t.validate_every == 0:
                        self._validate_and_keep_best()
                    if self.step % t.checkpoint_every == 0:
                        self._save_step()
                if window["steps"]:
                    self._log(window)
                final = self._final_validation()
                self._save_step(final=True)
                self._hparams(final)
        finally:
            self.monitor.close()
        return {"step": self.step, "epoch": self.epoch, "stopped_by": reason,
                "skipped_steps": self.skipped,
                "train_tgt_tok_s": self.tokens_seen / max(self.step_time, 1e-9), **final}

    def _budget_spent(self) -> str:
        """Why training must stop before another step ("" to go on)."""
        t = self.cfg.train
        if t.max_steps and self.step >= t.max_steps:
            return "max_steps"
        if t.max_time and self._elapsed() >= t.max_time:
            return "max_time"
        if t.patience and self.bad_validations >= t.patience:
            self._say(f"early stopping: no better val {t.metric} in {t.patience} validations")
            return "early stopping"
        return ""

    def _final_validation(self) -> dict[str, float]:
        if self.validated_step == self.step:  # the last step was a scheduled validation
            return self.last_validation
        return self._validate_and_keep_best(scheduled=False)

    def _stop_on_signal(self, name: str) -> dict[str, Any]:
        self._save_step(final=True)
        return {"step": self.step, "epoch": self.epoch, "stopped_by": name,
                "skipped_steps": self.skipped,
                "checkpoint": str(checkpoint.step_file(self.ckpt_dir, self.step))}

    def _nonfinite(self, nll: float, norm: float) -> None:
        t = self.cfg.train
        self.nonfinite += 1
        self.skipped += 1
        self.monitor.scalars(self.step, {"train/skipped_steps": self.skipped})
        self._say(f"warning: non-finite {'loss' if not math.isfinite(nll) else 'gradient'} "
                  f"after step {self.step}: update skipped ({self.nonfinite} in a row)")
        if self.nonfinite >= t.max_nonfinite:
            kept = (f"the last checkpoint ({self.ckpt_dir / 'last.pt'}) is intact"
                    if (self.ckpt_dir / "last.pt").exists() else "no checkpoint was written")
            raise TrainingError(f"training stopped: {self.nonfinite} non-finite losses or "
                                f"gradients in a row after step {self.step} "
                                f"(train.max_nonfinite={t.max_nonfinite}); {kept}. Lower "
                                f"train.lr, add train.warmup_steps, lower train.clip_norm or "
                                f"use train.precision=fp32")

    def _hparams(self, final: dict[str, float]) -> None:
        values = {k: v for k, v in _flat(config.to_dict(self.cfg)).items()
                  if isinstance(v, (int, float, str, bool))}
        values["train.precision_used"] = self.precision  # what `auto` chose here
        self.monitor.hparams(values, {f"hparam/{k.split('/')[1]}": v for k, v in final.items()})

    def _log(self, window: dict[str, float]) -> None:
        loss = window["nll"] / max(1, window["tokens"])
        values = {"train/loss": loss, "train/ppl": math.exp(min(loss, 50.0)),
                  "train/lr": self.optimizer.param_groups[0]["lr"],
                  "train/grad_norm": window["norm"] / max(1, window["steps"]),
                  "train/tgt_tokens_per_s": window["tokens"] / max(window["time"], 1e-9)}
        self.monitor.scalars(self.step, values)
        if not sys.stderr.isatty():  # no progress bar: a log line with rate and ETA instead
            t, elapsed = self.cfg.train, self._elapsed()
            rate = self.step / max(elapsed, 1e-9)
            left = [x for x in ((t.max_steps - self.step) / rate if t.max_steps else 0,
                                t.max_time - elapsed if t.max_time else 0) if x > 0]
            eta = f"  ETA {min(left) / 60:.1f} min" if left else ""
            self._say(f"step {self.step}  loss {loss:.3f}  ppl {values['train/ppl']:.2f}  "
                      f"{values['train/tgt_tokens_per_s']:.0f} tgt tok/s  {rate:.2f} steps/s  "
                      f"grad norm {values['train/grad_norm']:.2f}{eta}")


def train(cfg: config.Config, run_dir: str | Path, *, console: bool = True) -> dict[str, Any]:
    return Trainer(cfg, run_dir, console=console).run()


def resume(run_dir: str | Path, config_file: str | Path | None = None,
           overrides: tuple[str, ...] | list[str] = (), *, console: bool = True
           ) -> dict[str, Any]:
    """Continue the run in `run_dir` from checkpoints/last.pt. The config is the run's own
    (or `config_file`), with `overrides`; only RESUMABLE keys may differ from the run's."""
    run_dir = Path(run_dir)
    last = run_dir / checkpoint.CHECKPOINT_DIR / "last.pt"
    if not last.exists():
        raise CheckpointError(f"--resume {run_dir}: no {checkpoint.CHECKPOINT_DIR}/last.pt "
                              f"(is it a run directory written by `s2s train`?)")
    payload = checkpoint.load(last)
    saved = payload.get("config")
    if not isinstance(saved, dict) or "scheduler" not in payload:
        raise CheckpointError(f"{last} holds no resumable training state; start a new run")
    cfg = config.load(config_file, overrides) if config_file else \
        config.from_dict(saved, overrides, source=f"the config of {last}")
    changed = config_differences(saved, config.to_dict(cfg))
    if changed:
        raise ConfigError(f"--resume {run_dir}: the config differs from the run's in "
                          f"{'; '.join(changed)}. Only {', '.join(sorted(RESUMABLE))} may change "
                          f"on resume; start a new --run-dir for anything else")
    if cfg.train.schedule == "linear" and cfg.train.max_steps != saved["train"]["max_steps"]:
        raise ConfigError(f"--resume {run_dir}: the linear schedule decays to 0 at "
                          f"train.max_steps={saved['train']['max_steps']}; changing it on resume "
                          f"would make the learning rate jump. Keep train.max_steps")
    cell = _cell_info(cfg.model.cell)
    old = payload.get("cell", {})
    if old.get("dist") != cell["dist"] or old.get("value") != cell["value"]:
        raise ConfigError(f"--resume {run_dir}: the run's cell '{cfg.model.cell}' came from "
                          f"{old.get('dist')} {old.get('version')} ({old.get('value')}) but now "
                          f"resolves to {cell['dist']} {cell['version']} ({cell['value']}); "
                          f"install the original plugin or start a new --run-dir")
    return Trainer(cfg, run_dir, console=console, resume=payload).run()
