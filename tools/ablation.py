"""Ablation of the model and recipe features at the 15-minute budget: the 15-minute recipe
(configs/multi30k-en-de.yaml) with each feature switched on (or off), two seeds each, scored on
test_2016_flickr with beam 5 and greedy (cased sacreBLEU); one markdown table.

    python tools/ablation.py --data ../shared/data/multi30k --out ABL [--seeds 1 2]
        [--only word_dropout --only baseline] [--stop-after MINUTES]
    python tools/ablation.py --out ABL --report      # the table of what ABL holds

Each (variant, seed) trains into ABL/VARIANT-sSEED with `s2s train` (one job at a time: 2 cores),
then `s2s translate RUN` (so RUN/serving.json is honoured where a variant writes one) and
writes ABL/VARIANT-sSEED/result.json with the CPU kind it ran on. Finished runs are skipped,
so the tool can be run again, across sessions, until every row is there; `--stop-after` starts
no run that would end after that many minutes. The report compares runs on one CPU kind only
(the figures depend on how many steps the budget buys) and gives each row's mean, its spread
(half the range of the seeds) and the difference to the baseline's mean.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CONFIG = ROOT / "configs" / "multi30k-en-de.yaml"
RUN_MINUTES = 18.0  # 15 minutes of training, set-up, validation and two test decodings

# variant -> (what it changes, --set overrides on the 15-minute recipe); "baseline" is the
# recipe as shipped; a feature that needs another feature's setting names both
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "baseline": ("the 15-minute recipe as shipped", []),
    "cosine": ("warm-up 500 then cosine decay to 1e-4 over the budget",
               ["train.schedule=cosine", "train.warmup_steps=500", "train.min_lr=0.0001"]),
    "word_dropout": ("word dropout 0.1", ["model.word_dropout=0.1"]),
    "locked_dropout": ("locked (variational) dropout instead of standard",
                       ["model.locked_dropout=true"]),
    "recurrent_dropout": ("variational recurrent dropout 0.1 on the h fed back",
                          ["model.recurrent_dropout=0.1"]),
    "tied": ("three-way tied embeddings (one joint vocabulary)",
             ["data.prune_vocab=false", "model.share_embeddings=true",
              "model.tie_embeddings=true"]),
    "bridge": ("decoder initialised through a learned bridge", ["model.decoder_init=bridge"]),
    "mean_init": ("decoder initialised from the mean encoder output",
                  ["model.decoder_init=mean"]),
    "ln_lstm": ("layer-normalised LSTM cells (ln-lstm)", ["model.cell=ln-lstm"]),
    "two_layers": ("two layers each side, no residuals", ["model.layers=2"]),
    "two_layers_residual": ("two layers each side with residual connections",
                            ["model.layers=2", "model.residual=true"]),
    "averaged": ("the average of the last 5 checkpoints (every 250 steps)",
                 ["train.checkpoint_every=250", "train.keep_last=5", "train.average_last=5"]),
    "tuned_penalty": ("checkpoint and length penalty chosen by val beam BLEU",
                      ["train.tune_length_penalty=true"]),
}


def fail(message: str) -> None:
    raise SystemExit(f"ablation: {message}")


def run_one(variant: str, seed: int, data: Path, out: Path, threads: int) -> dict:
    from s2s import evaluate
    from s2s.ops.runtime import cpu_kind

    run = out / f"{variant}-s{seed}"
    if run.exists():
        shutil.rmtree(run)  # a run that did not finish: start it again
    s2s = [sys.executable, "-m", "s2s"]
    sets = [f"data.dir={data}", f"train.seed={seed}", f"train.threads={threads}",
            *VARIANTS[variant][1]]
    log = out / f"{variant}-s{seed}.log"
    with open(log, "w") as f:
        started = time.monotonic()
        proc = subprocess.run([*s2s, "train", str(CONFIG), "--run-dir", str(run),
                               *(x for s in sets for x in ("--set", s))],
                              stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        if proc.returncode:
            fail(f"{variant} seed {seed}: training failed, see {log}")
        train_s = time.monotonic() - started
    test = out / "test"
    result = {"variant": variant, "seed": seed, "cpu": cpu_kind(), "sets": sets[3:],
              "train_s": round(train_s, 1), "date": time.strftime("%Y-%m-%d")}
    last = json.loads((run / "train_log.jsonl").read_text().splitlines()[-1])
    result["steps"] = last["step"]
    for beam in (5, 1):
        hyp = run / f"test.beam{beam}.hyp"
        proc = subprocess.run([*s2s, "translate", str(run), "-i", str(test / "src"), "-o",
                               str(hyp), "--beam", str(beam)], capture_output=True, text=True,
                              cwd=ROOT)
        if proc.returncode:
            fail(f"{variant} seed {seed}: translate failed: {proc.stderr.strip()[-500:]}")
        hyps = hyp.read_text(encoding="utf-8").splitlines()
        refs = (test / "ref").read_text(encoding="utf-8").splitlines()
        result[f"bleu_beam{beam}"] = round(evaluate.score(hyps, refs, ("bleu",))["bleu"].score, 2)
    (run / "result.json").write_text(json.dumps(result, indent=1))
    return result


def results(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*/result.json"))]


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    half = (max(values) - min(values)) / 2
    return f"{mean:.2f} ± {half:.2f}" if len(values) > 1 else f"{mean:.2f}"


def report(out: Path) -> str:
    rows = results(out)
    if not rows:
        fail(f"{out} holds no finished runs (*/result.json)")
    lines = []
    for cpu in sorted({r["cpu"] for r in rows}):
        mine = [r for r in rows if r["cpu"] == cpu]
        base = [r["bleu_beam5"] for r in mine if r["variant"] == "baseline"]
        lines += [f"CPU: {cpu}", "", "| variant | what changes | seeds | steps | BLEU beam 5 "
                  "| Δ beam 5 | BLEU greedy |", "|---|---|---|---|---|---|---|"]
        for variant, (what, _) in VARIANTS.items():
            got = [r for r in mine if r["variant"] == variant]
            if not got:
                continue
            b5 = [r["bleu_beam5"] for r in got]
            delta = f"{statistics.fmean(b5) - statistics.fmean(base):+.2f}" \
                if base and variant != "baseline" else ""
            lines.append(f"| {variant} | {what} | {len(got)} | "
                         f"{round(statistics.fmean(r['steps'] for r in got))} | {spread(b5)} | "
                         f"{delta} | {spread([r['bleu_beam1'] for r in got])} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, help="the Multi30k folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--only", action="append", choices=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stop-after", type=float, default=0.0, metavar="MINUTES")
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    if args.report:
        print(report(args.out))
        return
    if args.data is None:
        fail("--data DIR (the Multi30k folder with test_2016_flickr.{en,de}.gz) is needed")
    import gzip

    test = args.out / "test"
    test.mkdir(parents=True, exist_ok=True)
    for name, lang in (("src", "en"), ("ref", "de")):
        source = args.data / f"test_2016_flickr.{lang}.gz"
        if not source.is_file():
            fail(f"{source} is missing")
        (test / name).write_bytes(gzip.decompress(source.read_bytes()))
    done = {(r["variant"], r["seed"]) for r in results(args.out)}
    deadline = time.monotonic() + args.stop_after * 60 if args.stop_after else None
    for seed in args.seeds:  # every variant once before any second seed
        for variant in args.only or VARIANTS:
            if (variant, seed) in done:
                continue
            if deadline and time.monotonic() + RUN_MINUTES * 60 > deadline:
                print(f"stopping: no time left for {variant} seed {seed}")
                print(report(args.out))
                return
            r = run_one(variant, seed, args.data.resolve(), args.out, args.threads)
            print(json.dumps(r), flush=True)
    print(report(args.out))


if __name__ == "__main__":
    main()
