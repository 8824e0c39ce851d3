"""The recipe's steps after training (train.average_last, train.tune_length_penalty):
average the newest periodic checkpoints into RUN/averaged.pt, then beam-decode the validation
set with each candidate checkpoint (best.pt, averaged.pt) and each length penalty of a small
grid, and record the winner in RUN/serving.json. `s2s translate RUN` (and `s2s serve RUN`)
then use that checkpoint and that penalty unless told otherwise (s2s.checkpoint.serving)."""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from s2s import checkpoint, config, evaluate
from s2s.options import source_limit

AVERAGED = "averaged.pt"
# the length penalties tried on the validation set: (length_penalty, alpha)
GRID: tuple[tuple[str, float], ...] = (("none", 0.0), ("average", 0.0),
                                       *(("gnmt", a / 10) for a in range(2, 16, 2)))


def finish(run_dir: Path, cfg: config.Config, valid, precision: str,
           say: Callable[[str], None]) -> dict[str, Any] | None:
    """Run the configured after-training steps; returns what serving.json records (None when
    neither step is configured)."""
    t = cfg.train
    candidates: list[str] = []
    ckpt = checkpoint.CHECKPOINT_DIR
    if (run_dir / ckpt / "best.pt").is_file():
        candidates.append(f"{ckpt}/best.pt")
    if t.average_last and len(checkpoint.step_files(run_dir / ckpt)) >= 2:
        steps = checkpoint.average_run(run_dir, t.average_last, run_dir / AVERAGED)
        say(f"averaged steps {', '.join(map(str, steps))} into {run_dir / AVERAGED}")
        candidates.append(AVERAGED)
    if not t.tune_length_penalty:
        if AVERAGED not in candidates:
            return None
        record: dict[str, Any] = {"checkpoint": AVERAGED, "search": {}}
    else:
        record = tune(run_dir, cfg, valid, candidates, precision, say)
    write_serving(run_dir, record)
    return record


def tune(run_dir: Path, cfg: config.Config, valid, candidates: list[str], precision: str,
         say: Callable[[str], None]) -> dict[str, Any]:
    """Beam BLEU on the validation set for every candidate x GRID; the best (ties: the
    earlier, i.e. best.pt before averaged.pt, no penalty before one) is the record."""
    from s2s.translate import Translator

    t, table = cfg.train, []
    for name in candidates:
        translator = Translator.from_run(run_dir / name)
        for penalty, alpha in GRID:
            hyps = translator.translate(valid.raw_src, beam=t.tune_beam, length_penalty=penalty,
                                        alpha=alpha, batch_size=t.valid_batch_size,
                                        max_src_len=source_limit(cfg), precision=precision)
            bleu = evaluate.score(hyps, valid.raw_tgt, ("bleu",))["bleu"].score
            table.append({"checkpoint": name, "length_penalty": penalty, "alpha": alpha,
                          "bleu": round(bleu, 2)})
            say(f"val beam {t.tune_beam}: {name} length_penalty {penalty}"
                f"{f' alpha {alpha:.1f}' if penalty == 'gnmt' else ''}: BLEU {bleu:.2f}")
    best = max(table, key=lambda row: row["bleu"])  # max keeps the first of equals
    search = {"length_penalty": best["length_penalty"]}
    if best["length_penalty"] == "gnmt":
        search["alpha"] = best["alpha"]
    say(f"serving {best['checkpoint']} with {search} (val BLEU {best['bleu']:.2f} at beam "
        f"{t.tune_beam}); recorded in {run_dir / checkpoint.SERVING}")
    return {"checkpoint": best["checkpoint"], "search": search, "tuned_beam": t.tune_beam,
            "valid": table}


def write_serving(run_dir: Path, record: dict[str, Any]) -> None:
    """RUN/serving.json, written atomically."""
    fd, tmp = tempfile.mkstemp(prefix=".serving.", suffix=".tmp", dir=run_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
            f.write("\n")
        os.replace(tmp, run_dir / checkpoint.SERVING)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
