"""Resume rules: which config keys may change when a run continues (the fields marked
resumable in s2s.config), the differences that refuse a resume, and `resume` itself."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from s2s import checkpoint, config
from s2s.config import RESUMABLE
from s2s.errors import CheckpointError, ConfigError
from s2s.ops import gemm
from s2s.training.state import cell_info
from s2s.training.trainer import Trainer


def flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as {dotted key: value} (cell_options stays one value)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "cell_options":
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Keys (outside RESUMABLE) whose values differ between two config dicts."""
    defaults = flat(config.to_dict(config.Config()))  # keys newer than the run: their default
    a, b = {**defaults, **flat(old)}, {**defaults, **flat(new)}
    keys = sorted(a.keys() | b.keys())
    return [f"{key} (run: {a.get(key)!r}, now: {b.get(key)!r})" for key in keys
            if key not in RESUMABLE and a.get(key) != b.get(key)]


def changed_arithmetic(payload: dict[str, Any], precision: str, requested: str) -> list[str]:
    """Warnings for a resume that computes differently from the run so far (another product
    backend or precision): its losses will not match an uninterrupted run exactly."""
    notes = []
    if payload.get("gemm") and not gemm.prefer(payload["gemm"]):
        notes.append(f"the run used {payload['gemm']} products so far and continues with "
                     f"{gemm.backend()} (S2S_GEMM); losses will not match an uninterrupted "
                     f"run exactly")
    before = payload.get("precision")
    if before is not None and before != precision:
        notes.append(f"the run trained in {before} so far and continues in {precision} "
                     f"(train.precision={requested} on this machine); losses will not match an "
                     f"uninterrupted run exactly")
    return notes


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
    cell = cell_info(cfg.model.cell)
    old = payload.get("cell", {})
    if old.get("dist") != cell["dist"] or old.get("value") != cell["value"]:
        raise ConfigError(f"--resume {run_dir}: the run's cell '{cfg.model.cell}' came from "
                          f"{old.get('dist')} {old.get('version')} ({old.get('value')}) but now "
                          f"resolves to {cell['dist']} {cell['version']} ({cell['value']}); "
                          f"install the original plugin or start a new --run-dir")
    return Trainer(cfg, run_dir, console=console, resume=payload).run()
