"""Checkpoints: written atomically (temp file, fsync, rename), loaded weights-only.

A checkpoint is self-contained: model weights, the resolved config, the SentencePiece model(s)
as bytes, the cell's name/distribution/version and the library versions, plus training state
(optimizer, step, ...) when saved by the trainer. Nothing in it is code.
"""
from __future__ import annotations

import os
import pickle
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from s2s.errors import CheckpointError

FORMAT = 1
CHECKPOINT_DIR = "checkpoints"
SERVING = "serving.json"  # what `s2s translate RUN` uses (s2s.training.finish)


STEP_FILE = re.compile(r"step-(\d+)\.pt")


def step_file(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"step-{step:07d}.pt"


def step_files(directory: str | Path) -> dict[int, Path]:
    """step -> checkpoints/step-N.pt files in `directory`."""
    directory = Path(directory)
    if not directory.is_dir():
        return {}
    found = (STEP_FILE.fullmatch(p.name) for p in directory.iterdir())
    return {int(m.group(1)): directory / m.group(0) for m in found if m}


def link(src: str | Path, dst: str | Path) -> None:
    """Point `dst` at the checkpoint `src` atomically: a hard link (no second copy on disk),
    or a copy where the file system has no hard links."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        kept = "its previous version is intact" if dst.exists() else "it was not written"
        raise CheckpointError(f"updating {dst} failed ({exc.strerror or exc}); {kept}. Free "
                              f"disk space or choose another --run-dir") from exc


def save(payload: dict[str, Any], path: str | Path) -> None:
    """Write `payload` to `path` atomically; on failure the previous file is left intact."""
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp creates 0600; checkpoints are ordinary files
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        # torch reports a failed write (a full disk) as RuntimeError from its zip writer
        if not isinstance(exc, (OSError, RuntimeError)):
            raise
        kept = "the previous checkpoint is intact" if path.exists() else "nothing was written"
        raise CheckpointError(f"writing checkpoint {path} failed "
                              f"({getattr(exc, 'strerror', None) or exc}); "
                              f"{kept}. Free disk space or choose another --run-dir") from exc


def load(path: str | Path, entry: str = "model") -> dict[str, Any]:
    """Load a checkpoint file (or another file written by `save` holding `entry`) without
    executing code from it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"checkpoint {path} is unreadable or truncated, or not an s2s "
                              f"checkpoint (not a PyTorch zip archive); point at a .pt file "
                              f"written by `s2s train`")
    try:
        # mmap: only the tensors used are read (translate never touches the optimizer state)
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"checkpoint {path} refused: it contains objects that would run code "
                              f"when loaded; s2s loads weights only. Use a checkpoint written by "
                              f"s2s") from exc
    except Exception as exc:  # any other failure of the unpickler: a damaged or foreign file
        raise CheckpointError(f"checkpoint {path} is unreadable or truncated ({exc}); use "
                              f"another checkpoint of the run") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or entry not in payload:
        kind = "checkpoint" if entry == "model" else f"file with an '{entry}' entry"
        raise CheckpointError(f"checkpoint {path}: not an s2s {kind} (format {FORMAT})")
    return payload


def run_dir_of(file: str | Path) -> Path:
    """The run directory a checkpoint file belongs to (RUN for RUN/checkpoints/X.pt)."""
    parent = Path(file).parent
    return parent.parent if parent.name == CHECKPOINT_DIR else parent


def serving(run_dir: str | Path) -> dict[str, Any] | None:
    """RUN/serving.json (written by the recipe's after-training steps, s2s.training.finish):
    {"checkpoint": a path inside the run, "search": default search options}; None without
    one."""
    file = Path(run_dir) / SERVING
    if not file.is_file():
        return None
    import json

    try:
        record = json.loads(file.read_text(encoding="utf-8"))
        name, search = record["checkpoint"], record.get("search", {})
        if not isinstance(name, str) or not isinstance(search, dict):
            raise TypeError("checkpoint must be a string and search a mapping")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{file} is damaged ({type(exc).__name__}: {exc}); delete it to "
                              f"translate with the run's best.pt, or pass a checkpoint file"
                              ) from exc
    target = (Path(run_dir) / name).resolve()
    if Path(run_dir).resolve() not in target.parents or not target.is_file():
        raise CheckpointError(f"{file} names {name!r}, which is not a checkpoint file inside "
                              f"the run; delete {file.name} or pass a checkpoint file")
    return {"checkpoint": target, "search": search}


def resolve(path: str | Path) -> Path:
    """A checkpoint file, or a run directory -> the checkpoint its serving.json names, else
    its best (else last) checkpoint."""
    path = Path(path)
    if path.is_dir():
        record = serving(path)
        if record is not None:
            return record["checkpoint"]
        for name in ("best.pt", "last.pt"):
            if (path / CHECKPOINT_DIR / name).is_file():
                return path / CHECKPOINT_DIR / name
        raise CheckpointError(f"{path}: no {CHECKPOINT_DIR}/best.pt or {CHECKPOINT_DIR}/last.pt; "
                              f"is it a run directory written by `s2s train`?")
    if not path.exists():
        raise CheckpointError(f"{path}: no such run directory or checkpoint file")
    return path


def average_run(run_dir: str | Path, last: int, output: str | Path) -> list[int]:
    """Average the model parameters of the newest `last` step checkpoints of a run into
    `output` (config, tokenizer and cell of the newest). Returns the steps averaged."""
    files = step_files(Path(run_dir) / CHECKPOINT_DIR)
    if not files:
        raise CheckpointError(f"{run_dir}: no {CHECKPOINT_DIR}/step-N.pt checkpoints to average")
    target = Path(output).resolve()
    if target.parent.name == CHECKPOINT_DIR and (step_files(target.parent)
                                                 or (target.parent / "last.pt").exists()):
        raise CheckpointError(f"-o {output} is inside a run's {CHECKPOINT_DIR}/: an averaged "
                              f"model there would replace or shadow the checkpoints `--resume` "
                              f"continues from; write it beside them, e.g. "
                              f"{Path(run_dir) / 'avg.pt'}")
    if (target.parent / CHECKPOINT_DIR).is_dir() and target.suffix != ".pt":
        raise CheckpointError(f"-o {output} would replace a file of the run in "
                              f"{target.parent} (its tokenizer, config or logs); name the "
                              f"averaged model *.pt, e.g. {target.parent / 'avg.pt'}")
    steps = sorted(files)[-last:]
    newest = load(files[steps[-1]])
    total = {k: v.double() for k, v in newest["model"].items()}
    for step in steps[:-1]:
        model = load(files[step])["model"]
        if model.keys() != total.keys() or any(model[k].shape != total[k].shape for k in total):
            raise CheckpointError(f"{files[step]} has other parameters than {files[steps[-1]]}; "
                                  f"only checkpoints of one run can be averaged")
        for k, v in model.items():
            total[k] += v.double()
    averaged = {k: (v / len(steps)).to(newest["model"][k].dtype) for k, v in total.items()}
    keep = ("config", "spm", "cell", "versions", "step", "lexicon")
    save({**{k: newest[k] for k in keep if k in newest}, "model": averaged,
          "averaged_steps": steps}, output)
    return steps
