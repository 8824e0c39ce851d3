"""Plot validation BLEU against training time for s2s runs and the peers, into one PNG.

    python tools/plot_bleu.py -o bleu.png s2s=RUN onmt=onmt_curve.tsv joey=JOEY_RUN/train.log

Each curve is LABEL=PATH (or PATH alone: its name is the label), PATH one of:
  - an s2s run directory: the val/bleu records of its train_log.jsonl at their elapsed
    training time (elapsed_s; runs older than that field fall back to the TensorBoard event
    times, counted from the run's first event);
  - a JoeyNMT train.log: its "Evaluation result (greedy) bleu" lines at their log time, counted
    from the log's first line;
  - a table of "seconds BLEU" rows (tab, comma or space separated; # comments), e.g. what
    tools/peers/onmt_curve.sh writes for OpenNMT-py, which logs no BLEU while training.
Time is shown in minutes. Every source is read before anything is drawn; an unreadable one
stops the tool with a message naming it.
"""
from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

Curve = tuple[list[float], list[float]]  # minutes, BLEU

JOEY_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})")
JOEY_BLEU = re.compile(r"Evaluation result \(greedy\).*?bleu:\s*([\d.]+)")


def fail(message: str) -> None:
    raise SystemExit(f"plot_bleu: {message}")


def _tensorboard_times(run: Path) -> dict[int, float]:
    """step -> seconds since the run's first event, from the val/bleu scalar events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    if "val/bleu" not in tags:
        return {}
    start = min(e.wall_time for tag in tags for e in acc.Scalars(tag)[:1])
    return {e.step: e.wall_time - start for e in acc.Scalars("val/bleu")}


def read_s2s(run: Path) -> Curve:
    log = run / "train_log.jsonl"
    points, lines = [], log.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if n < len(lines):  # only the last line may be half written (a running run)
                fail(f"{log} line {n} is not JSON")
            continue
        if "val/bleu" in record:
            points.append((record["step"], record.get("elapsed_s"), record["val/bleu"]))
    if not points:
        fail(f"{log} has no val/bleu records (train.valid_bleu: true logs them)")
    if any(t is None for _, t, _ in points):
        times = _tensorboard_times(run)
        points = [(s, times.get(s), b) for s, _, b in points]
        points = [p for p in points if p[1] is not None]
    return [t / 60.0 for _, t, _ in points], [b for _, _, b in points]


def read_joey(path: Path, text: str) -> Curve:
    start, xs, ys = None, [], []
    for line in text.splitlines():
        stamp = JOEY_TIME.match(line)
        if not stamp:
            continue
        t = datetime.datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S").timestamp() \
            + int(stamp.group(2)) / 1000
        start = t if start is None else start
        bleu = JOEY_BLEU.search(line)
        if bleu:
            xs.append((t - start) / 60.0)
            ys.append(float(bleu.group(1)))
    if not xs:
        fail(f"{path} has no 'Evaluation result (greedy) ... bleu' lines")
    return xs, ys


def read_table(path: Path, text: str) -> Curve:
    xs, ys = [], []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = re.split(r"[\t, ]+", line)
        try:
            seconds, bleu = float(fields[0]), float(fields[1])
        except (ValueError, IndexError):
            fail(f"{path} line {n}: expected 'seconds BLEU', got {line!r}")
        xs.append(seconds / 60.0)
        ys.append(bleu)
    if not xs:
        fail(f"{path} has no 'seconds BLEU' rows")
    return xs, ys


def read_curve(path: Path) -> Curve:
    """The (minutes, BLEU) points of one source, sorted by time."""
    path = Path(path)
    if path.is_dir():
        if not (path / "train_log.jsonl").is_file():
            fail(f"{path} is a directory without train_log.jsonl (not an s2s run)")
        xs, ys = read_s2s(path)
    else:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            fail(f"cannot read {path}: {exc.strerror or exc}")
        xs, ys = (read_joey if JOEY_TIME.search(text[:4096]) and "joeynmt" in text[:65536]
                  else read_table)(path, text)
    pairs = sorted(zip(xs, ys))
    return [x for x, _ in pairs], [y for _, y in pairs]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("curves", nargs="+", metavar="LABEL=PATH")
    parser.add_argument("-o", "--output", required=True, help="the PNG to write")
    parser.add_argument("--title", default="validation BLEU against training time")
    args = parser.parse_args(argv)
    curves = {}
    for item in args.curves:
        label, _, path = item.rpartition("=")
        curves[label or Path(path).name] = read_curve(Path(path))
    from s2s import plots

    fig = plots.line_plot(curves, xlabel="training time (minutes)", ylabel="BLEU",
                          title=args.title)
    try:
        fig.savefig(args.output, format="png")
    except OSError as exc:
        fail(f"cannot write {args.output}: {exc.strerror or exc}")
    print(f"wrote {args.output}: " + ", ".join(
        f"{name} ({len(xs)} points, best {max(ys):.2f})" for name, (xs, ys) in curves.items()))


if __name__ == "__main__":
    main()
