"""Resume rules: which config keys may change when a run continues (the fields marked
resumable in s2s.config), the differences that refuse a resume, and `resume` itself."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from s2s import checkpoint, config
from s2s.config import RESUMABLE
from s2s.errors import CheckpointError, ConfigError
from s2s.training.state import cell_info
from s2s.training.trainer import Trainer

log = logging.getLogger("s2s")


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Keys (outside RESUMABLE) whose values differ between two config dicts."""
    defaults = config.flat(config.to_dict(config.Config()))  # keys newer than the run
    a, b = {**defaults, **config.flat(old)}, {**defaults, **config.flat(new)}
    keys = sorted(a.keys() | b.keys())
    return [f"{key} (run: {a.get(key)!r}, now: {b.get(key)!r})" for key in keys
            if key not in RESUMABLE and a.get(key) != b.get(key)]


def _newest_step(run_dir: Path) -> Path:
    """The newest step checkpoint that loads, for a run killed between writing a step file and
    pointing last.pt at it (CheckpointError if there is none)."""
    for _, path in sorted(checkpoint.step_files(run_dir / checkpoint.CHECKPOINT_DIR).items(),
                          reverse=True):
        try:
            checkpoint.load(path)
        except CheckpointError:
            continue
        log.warning("%s has no last.pt; resuming from its newest checkpoint, %s", run_dir,
                    path.name)
        return path
    raise CheckpointError(f"--resume {run_dir}: no {checkpoint.CHECKPOINT_DIR}/last.pt and no "
                          f"readable step checkpoint (is it a run directory written by `s2s "
                          f"train`?)")


def resume(run_dir: str | Path, config_file: str | Path | None = None,
           overrides: tuple[str, ...] | list[str] = (), *, console: bool = True
           ) -> dict[str, Any]:
    """Continue the run in `run_dir` from checkpoints/last.pt. The config is the run's own
    (or `config_file`), with `overrides`; only RESUMABLE keys may differ from the run's."""
    run_dir = Path(run_dir)
    last = run_dir / checkpoint.CHECKPOINT_DIR / "last.pt"
    if not last.exists():
        last = _newest_step(run_dir)
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
    cell = cell_info(cfg.model.cell)
    old = payload.get("cell", {})
    if old.get("dist") != cell["dist"] or old.get("value") != cell["value"]:
        raise ConfigError(f"--resume {run_dir}: the run's cell '{cfg.model.cell}' came from "
                          f"{old.get('dist')} {old.get('version')} ({old.get('value')}) but now "
                          f"resolves to {cell['dist']} {cell['version']} ({cell['value']}); "
                          f"install the original plugin or start a new --run-dir")
    return Trainer(cfg, run_dir, console=console, resume=payload).run()
