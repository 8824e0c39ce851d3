"""Data-parallel training across processes and nodes: torch.distributed, launched by torchrun.

`torchrun --nproc-per-node N -m s2s train CONFIG --run-dir RUN` starts N copies of the trainer;
each finds its rank in the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
...) and joins one process group: gloo on CPU, NCCL on CUDA (one GPU per process, cuda:LOCAL_RANK).

- `train.batch_size` is the global batch of one optimizer step: every rank computes the same
  batch order and takes every WORLD_SIZE-th row of each batch (its share), so a run's result
  does not depend on how many processes ran it. The loss is divided by the global batch's
  target tokens (known on every rank from the corpus lengths), the gradients are summed over
  the ranks after backward (one all-reduce over a flat buffer, as OpenNMT-py does; the deferred
  weight-gradient GEMMs of s2s.ops.deferred have run by then), and every rank then clips and
  steps the same gradient: the parameters stay identical without being broadcast.
- Rank 0 alone writes the run (config, SentencePiece model, checkpoints, logs, TensorBoard) and
  validates; the others wait and receive its validation figures, so plateau schedules and
  patience decide the same everywhere. Whether to stop (a signal on any rank, rank 0's clock for
  train.max_time) is agreed on at every step.
- Checkpoints hold every rank's random generators, so a killed run resumed with the same number
  of processes continues bitwise as if never interrupted.

Without torchrun (WORLD_SIZE unset or 1) `World()` is the single process and nothing here talks
to torch.distributed.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from s2s.errors import ConfigError

# how long ranks wait for each other (rank 0's validation and checkpoint writes included)
TIMEOUT = datetime.timedelta(hours=2)


@dataclass
class World:
    """This process's place among the training processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def share(self, idx: np.ndarray) -> np.ndarray:
        """This rank's rows of a global batch (every size-th one; maybe none)."""
        return idx[self.rank::self.size]

    def shares(self, corpus, group: list[np.ndarray]
               ) -> tuple[list[dict], tuple[int, int] | None]:
        """This rank's rows of each global batch in `group` (read from `corpus`, a
        training.prepare.Corpus) and, in a distributed run, the global batches' (target
        tokens, sentences), which every rank knows from the corpus lengths."""
        rows = [corpus.data[self.share(idx).tolist()] for idx in group]
        if not self.distributed:
            return rows, None
        return rows, (int(sum(int((corpus.tgt_len[idx] + 1).sum()) for idx in group)),
                      sum(len(idx) for idx in group))

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj`, on every rank."""
        if not self.distributed:
            return obj
        box = [obj if self.main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's `obj` as a list on rank 0 (None elsewhere)."""
        if not self.distributed:
            return [obj]
        out = [None] * self.size if self.main else None
        torch.distributed.gather_object(obj, out, dst=0)
        return out

    def agree(self, flags: list[int], device: torch.device) -> list[int]:
        """The element-wise maximum of every rank's small integer `flags`."""
        if not self.distributed:
            return flags
        t = torch.tensor(flags, dtype=torch.int64, device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return [int(v) for v in t.tolist()]

    _SIGNALS = ("", "SIGINT", "SIGTERM")
    _REASONS = ("", "max_steps", "max_time", "early stopping")

    def agree_stop(self, signal: str | None, reason: str, device: torch.device
                   ) -> tuple[str | None, str]:
        """(the signal to stop on, the spent budget) of all ranks: a signal to any of them
        stops all, and every rank stops at the same step."""
        if not self.distributed:
            return signal, reason
        sig, why = self.agree([self._SIGNALS.index(signal or ""), self._REASONS.index(reason)],
                              device)
        return self._SIGNALS[sig] or None, self._REASONS[why]

    def sum_gradients(self, params: list[torch.Tensor], extra: list[float]) -> list[float]:
        """Sum every parameter's gradient over the ranks, in place (a parameter without a
        gradient on this rank counts as zeros), together with a few floats (`extra`: e.g.
        the summed NLL); returns the summed `extra`."""
        if not self.distributed:
            return extra
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        has = [float(p.grad is not None) for p in params]  # a gradient on any rank at all?
        flat = torch.cat([g.reshape(-1).float() for g in grads] + [
            torch.tensor(has + list(extra), dtype=torch.float32, device=params[0].device)])
        torch.distributed.all_reduce(flat)
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(g).to(g.dtype)
            offset += n
        for p, count in zip(params, flat[offset:offset + len(params)].tolist()):
            if not count:  # no rank had one: as in one process, the optimizer skips it
                p.grad = None
        return flat[offset + len(params):].tolist()

    def start(self, model: torch.nn.Module, tokenizer, seed: int) -> None:
        """Before the first step of a distributed run: every rank has rank 0's tokenizer
        (ConfigError if not: the nodes do not share the run directory), starts from rank 0's
        parameters and buffers (built from the same seed; this guards against a random draw
        that differs between ranks) and uses rank 0's product backend (s2s.ops.gemm); then
        each rank gets its own dropout stream."""
        if not self.distributed:
            return
        from s2s.ops import gemm

        blob = json.dumps(tokenizer.to_bytes(), default=bytes.hex, sort_keys=True).encode()
        digest = hashlib.sha256(blob).hexdigest()
        if self.broadcast(digest) != digest:
            raise ConfigError(f"rank {self.rank} has another tokenizer than rank 0: every node "
                              f"must see the same run directory (--run-dir on a shared file "
                              f"system)")
        with torch.no_grad():
            for t in [*model.parameters(), *model.buffers()]:
                torch.distributed.broadcast(t.data, src=0)
        gemm.prefer(self.broadcast(gemm.backend()))
        torch.manual_seed(seed + 1_000_003 * self.rank)

    def close(self) -> None:
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def from_env() -> World:
    """The world torchrun describes in the environment (the single process without it)."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if size <= 1:
            return World()
        return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} but WORLD_SIZE, RANK or "
                          f"LOCAL_RANK is missing or not a number ({exc}); start several "
                          f"processes with torchrun") from exc


def join(world: World, device: torch.device) -> torch.device:
    """Join the process group (gloo on CPU, NCCL on CUDA); returns this rank's device (on CUDA:
    cuda:LOCAL_RANK)."""
    if not world.distributed:
        return device
    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {world.local_rank} but this node has "
                              f"{torch.cuda.device_count()} GPU(s): start at most that many "
                              f"processes per node (torchrun --nproc-per-node)")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            torch.distributed.init_process_group(backend, timeout=TIMEOUT)
        except (ValueError, RuntimeError) as exc:
            raise ConfigError(f"cannot join the {backend} process group of {world.size} "
                              f"processes ({str(exc).splitlines()[0]}); start them with torchrun "
                              f"(it sets MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE)") from exc
    if torch.distributed.get_world_size() != world.size:
        raise ConfigError(f"WORLD_SIZE={world.size} but the process group has "
                          f"{torch.distributed.get_world_size()} processes")
    return device


def restore_rng(payload: dict[str, Any], world: World, seed: int,
                say: Callable[..., None]) -> None:
    """Set this rank's generators from a checkpoint. When the run had another number of
    processes it continues with a warning (not bitwise as an uninterrupted run would): rank
    0's generators, each rank's torch stream reseeded from (seed, step, rank)."""
    from s2s.training.state import set_rng_state

    ranks, size = payload.get("rng_ranks"), payload.get("world_size", 1)
    if ranks and size == world.size:
        set_rng_state(ranks[world.rank])
        return
    set_rng_state(payload["rng"])
    if size != world.size:
        say(f"the run trained with {size} process(es) so far and continues with {world.size}: "
            f"the same global batches, but dropout draws and summation order differ from an "
            f"uninterrupted run", logging.WARNING)
        if world.distributed:
            torch.manual_seed(hash((seed, int(payload.get("step", 0)), world.rank)) % 2**63)
