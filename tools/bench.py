"""Benchmark: train a config for a fixed number of steps (or seconds), then translate a test file
with each beam size asked, and print one JSON line.

    python tools/bench.py configs/peer-matched.yaml --set data.dir=../shared/data/multi30k \
        --train-steps 400 --translate test.en --beam 1 --beam 5 [--reference test.de]

Training runs in this process (train_tgt_tok_s = non-pad target pieces incl. EOS per second of
training steps, the peers' own counter; peak_rss_mb = this process's peak). Translation runs
`s2s translate` as a separate process per beam, timed whole (start-up and model load included,
as the peer scripts time theirs): translate_sents_s[beam] = input lines / wall seconds.
Set threads with --threads (default 2, the machine's cores); never run two benchmarks at once.
`--translate-precision {auto,fp32,bf16,int8} --translate-batch-size 128` are passed to
`s2s translate` (repeat --translate-precision to time several, each with every beam), as is
`--translate-shortlist K` (repeatable; 0: the whole vocabulary; keys gain "/slK");
`--skip-train --run-dir RUN` translates with an already trained run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE")
    parser.add_argument("--train-steps", type=int, default=0)
    parser.add_argument("--train-seconds", type=float, default=0.0)
    parser.add_argument("--translate", metavar="FILE", help="source file to translate")
    parser.add_argument("--reference", metavar="FILE", help="reference to score with sacreBLEU")
    parser.add_argument("--beam", type=int, action="append", default=[])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--translate-precision", choices=["auto", "fp32", "bf16", "int8"],
                        action="append", default=[], help="s2s translate --precision "
                        "(repeatable; default auto)")
    parser.add_argument("--translate-shortlist", type=int, action="append", default=[],
                        help="s2s translate --shortlist K (repeatable; 0: off)")
    parser.add_argument("--translate-batch-size", type=int, default=64,
                        help="s2s translate --batch-size")
    parser.add_argument("--run-dir", help="keep the run here (default: a temporary directory)")
    parser.add_argument("--skip-train", action="store_true",
                        help="translate with the trained run in --run-dir instead of training")
    args = parser.parse_args()
    if args.skip_train:
        if not (args.run_dir and args.translate):
            parser.error("--skip-train needs --run-dir (a trained run) and --translate")
    elif not (args.train_steps or args.train_seconds):
        parser.error("give --train-steps or --train-seconds (or --skip-train)")

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from s2s import config
    from s2s.errors import S2SError
    from s2s.train import train

    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="s2s-bench-"))
    overrides = [*args.overrides, f"train.max_steps={args.train_steps}",
                 f"train.max_time={args.train_seconds}", f"train.threads={args.threads}",
                 "train.valid_bleu=false", "train.metric=loss"]
    from s2s.ops.runtime import cpu_kind

    out = {"config": args.config, "overrides": args.overrides, "threads": args.threads,
           "cpu": cpu_kind(), "run_dir": str(run_dir)}
    if not args.skip_train:
        try:
            cfg = config.load(args.config, overrides)
            started = time.monotonic()
            result = train(cfg, run_dir, console=False)
        except S2SError as exc:
            sys.exit(f"error: {exc}")
        from s2s import checkpoint

        used = checkpoint.load(run_dir / "checkpoints" / "last.pt").get("precision")
        out.update({"cell": cfg.model.cell, "precision": cfg.train.precision,
                    "precision_used": used,
                    "steps": result["step"],
                    "train_wall_s": round(time.monotonic() - started, 1),
                    "train_tgt_tok_s": round(result["train_tgt_tok_s"], 1),
                    "val_ppl": round(result["val/ppl"], 3),
                    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                         / 1024, 1)})
    if args.translate:
        n_lines = sum(1 for _ in open(args.translate, "rb"))
        out["translate_sents_s"], out["translate_wall_s"], out["bleu"] = {}, {}, {}
        runs = [(p, b, k) for p in args.translate_precision or ["auto"]
                for k in args.translate_shortlist or [0] for b in args.beam or [1]]
        for prec, beam, k in runs:
            key = f"{prec}/beam{beam}" + (f"/sl{k}" if k else "")
            hyp = run_dir / f"hyp.{key.replace('/', '.')}.txt"
            started = time.monotonic()
            subprocess.run([sys.executable, "-m", "s2s", "translate", str(run_dir), "-i",
                            args.translate, "-o", str(hyp), "--beam", str(beam),
                            "--threads", str(args.threads), "--precision", prec,
                            "--shortlist", str(k),
                            "--batch-size", str(args.translate_batch_size)], check=True)
            wall = time.monotonic() - started
            out["translate_wall_s"][key] = round(wall, 2)
            out["translate_sents_s"][key] = round(n_lines / wall, 1)
            if args.reference:
                from s2s import evaluate
                from s2s.data import read_lines

                scores = evaluate.score(read_lines(hyp), read_lines(args.reference))
                out["bleu"][key] = round(scores["bleu"].score, 2)
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        out["translate_peak_rss_mb"] = round(children, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
