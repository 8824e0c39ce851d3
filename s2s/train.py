"""Training: data preparation, the step loop, budgets, validation and checkpoints.

The trainer never decodes itself: validation BLEU goes through translate.translate_lines and
evaluate.score.
"""
from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from s2s import __version__, checkpoint, config, evaluate
from s2s.batching import bucket_batches, collate
from s2s.cells import registry
from s2s.errors import ConfigError, DataError
from s2s.model import Seq2Seq
from s2s.tokenizer import Tokenizer
from s2s.translate import set_threads, translate_lines

CONFIG_FILE = "config.yaml"
TB_DIR = "tensorboard"


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


class Trainer:
    def __init__(self, cfg: config.Config, run_dir: str | Path, *, console: bool = True) -> None:
        self.cfg, self.run_dir, self.console = cfg, Path(run_dir), console
        self.step = self.epoch = 0
        self.best: float | None = None
        self.history: list[dict[str, float]] = []  # validation results
        self.tokens_seen, self.step_time = 0, 0.0  # for the run's target tokens/s

    # -- set-up ----------------------------------------------------------------------------------
    def _say(self, message: str) -> None:
        if getattr(self, "monitor", None) is not None:
            self.monitor.say(message)
        elif self.console:
            print(message, file=sys.stderr, flush=True)

    def _check_run_dir(self) -> None:
        ckpt_dir = self.run_dir / checkpoint.CHECKPOINT_DIR
        if ckpt_dir.is_dir() and any(ckpt_dir.glob("*.pt")):
            raise ConfigError(f"--run-dir {self.run_dir} already holds a trained run "
                              f"({ckpt_dir}); choose a new --run-dir so nothing is overwritten")

    def setup(self) -> None:
        cfg = self.cfg
        self._check_run_dir()
        cell_cls, entry = registry.load(cfg.model.cell)  # fail fast: before any data work
        registry.check_options(cell_cls, entry, dict(cfg.model.cell_options))
        set_threads(cfg.train.threads)
        random.seed(cfg.train.seed)
        np.random.seed(cfg.train.seed)
        torch.manual_seed(cfg.train.seed)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config.dump(cfg, self.run_dir / CONFIG_FILE)
        self.tokenizer, self.train_data, self.valid_data = prepare(cfg, self.run_dir, self._say)
        self.model = Seq2Seq(cfg.model, self.tokenizer.src_vocab_size,
                             self.tokenizer.tgt_vocab_size)
        n_params = sum(p.numel() for p in self.model.parameters())
        self._say(f"model: {cfg.model.cell} cells, {n_params / 1e6:.2f}M parameters; "
                  f"vocab {self.tokenizer.src_vocab_size}/{self.tokenizer.tgt_vocab_size}")
        t = cfg.train
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=t.lr,
                                          betas=(t.adam_beta1, t.adam_beta2),
                                          weight_decay=t.weight_decay)
        self.cell = _cell_info(cfg.model.cell)

    # -- one step --------------------------------------------------------------------------------
    def train_step(self, rows: dict) -> tuple[float, float, int]:
        """One optimizer step on a batch; returns (summed NLL, grad norm, target tokens)."""
        t = self.cfg.train
        batch = collate(rows["src_ids"], rows["tgt_ids"])
        self.model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=t.precision == "bf16"):
            loss, nll = self.model.loss(batch.src, batch.src_lengths, batch.tgt_in,
                                        batch.tgt_out, t.label_smoothing)
        norm = batch.n_tgt_tokens if t.normalization == "tokens" else batch.size
        (loss / norm).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), t.clip_norm if t.clip_norm > 0 else float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(nll), float(grad_norm), batch.n_tgt_tokens

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
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=t.precision == "bf16"):
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
                                  list(zip(valid.raw_src, valid.raw_tgt, hyps))[:5])
            self.monitor.text(self.step, "val/samples", samples)
        self.model.train()
        return result

    def _metric(self, result: dict[str, float]) -> float:
        """Higher is better."""
        return result["val/bleu"] if "val/bleu" in result else -result["val/loss"]

    # -- checkpoints -----------------------------------------------------------------------------
    def _payload(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "config": config.to_dict(self.cfg),
            "spm": self.tokenizer.to_bytes(),
            "step": self.step,
            "epoch": self.epoch,
            "best": self.best,
            "cell": self.cell,
            "versions": _versions(),
        }

    def save(self, name: str) -> Path:
        path = self.run_dir / checkpoint.CHECKPOINT_DIR / name
        checkpoint.save(self._payload(), path)
        return path

    def _validate_and_keep_best(self) -> dict[str, float]:
        started = time.monotonic()
        result = self.validate()
        self.monitor.scalars(self.step, result)
        metric = self._metric(result)
        improved = self.best is None or metric > self.best
        if improved:
            self.best = metric
            self.save("best.pt")
        self.history.append({"step": self.step, **result})
        shown = "  ".join(f"{k.split('/')[1]} {v:.2f}" for k, v in result.items())
        self._say(f"step {self.step} validation: {shown}{'  (best)' if improved else ''}  "
                  f"[{time.monotonic() - started:.0f}s]")
        return result

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> dict[str, float]:
        from s2s.monitor import Monitor

        self.setup()
        t = self.cfg.train
        self.monitor = Monitor(self.run_dir / TB_DIR, max_steps=t.max_steps, max_time=t.max_time,
                               console=self.console, start_step=self.step)
        started = self.started = time.monotonic()
        window = {"nll": 0.0, "tokens": 0, "time": 0.0, "norm": 0.0, "steps": 0}
        stop = False
        try:
            while not stop:
                batches = bucket_batches(self.train_data.src_len, self.train_data.tgt_len,
                                         t.batch_size, t.batch_type, seed=t.seed,
                                         epoch=self.epoch)
                for idx in batches:
                    step_start = time.monotonic()
                    nll, norm, tokens = self.train_step(self.train_data.data[idx.tolist()])
                    self.step += 1
                    window["nll"] += nll
                    window["tokens"] += tokens
                    window["norm"] += norm
                    window["steps"] += 1
                    window["time"] += time.monotonic() - step_start
                    self.tokens_seen += tokens
                    self.step_time += time.monotonic() - step_start
                    elapsed = time.monotonic() - started
                    if self.step % t.log_every == 0:
                        self._log(window)
                        window = {k: 0 for k in window}
                    self.monitor.advance(self.step, elapsed,
                                         {"ep": self.epoch, "loss": f"{nll / max(tokens, 1):.3f}"})
                    stop = bool((t.max_steps and self.step >= t.max_steps)
                                or (t.max_time and elapsed >= t.max_time))
                    if stop:
                        break
                    if self.step % t.validate_every == 0:
                        self._validate_and_keep_best()
                    if self.step % t.checkpoint_every == 0:
                        self.save("last.pt")
                else:
                    self.epoch += 1
                    stop = bool(t.max_epochs and self.epoch >= t.max_epochs)
            if window["steps"]:
                self._log(window)
            final = self._validate_and_keep_best()
            self.save("last.pt")
        finally:
            self.monitor.close()
        return {"step": self.step, "epoch": self.epoch,
                "train_tgt_tok_s": self.tokens_seen / max(self.step_time, 1e-9), **final}

    def _log(self, window: dict[str, float]) -> None:
        loss = window["nll"] / max(1, window["tokens"])
        values = {"train/loss": loss, "train/ppl": math.exp(min(loss, 50.0)),
                  "train/lr": self.optimizer.param_groups[0]["lr"],
                  "train/grad_norm": window["norm"] / max(1, window["steps"]),
                  "train/tgt_tokens_per_s": window["tokens"] / max(window["time"], 1e-9)}
        self.monitor.scalars(self.step, values)
        if not sys.stderr.isatty():  # no progress bar: a log line with rate and ETA instead
            t, elapsed = self.cfg.train, time.monotonic() - self.started
            rate = self.step / max(elapsed, 1e-9)
            left = [x for x in ((t.max_steps - self.step) / rate if t.max_steps else 0,
                                t.max_time - elapsed if t.max_time else 0) if x > 0]
            eta = f"  ETA {min(left) / 60:.1f} min" if left else ""
            self._say(f"step {self.step}  loss {loss:.3f}  ppl {values['train/ppl']:.2f}  "
                      f"{values['train/tgt_tokens_per_s']:.0f} tgt tok/s  {rate:.2f} steps/s  "
                      f"grad norm {values['train/grad_norm']:.2f}{eta}")


def train(cfg: config.Config, run_dir: str | Path, *, console: bool = True) -> dict[str, float]:
    return Trainer(cfg, run_dir, console=console).run()
