"""The `s2s` command. Every S2SError becomes one clear line on stderr and exit status 1."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from s2s.errors import DataError, S2SError


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    log = logging.getLogger("s2s")
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


class S2SGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except S2SError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


@click.group(cls=S2SGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="s2s")
def main() -> None:
    """s2s: recurrent encoder-decoder neural machine translation with pluggable cells."""
    _setup_logging()


@main.command()
@click.argument("config_file", type=click.Path(dir_okay=False), required=False)
@click.option("--run-dir", type=click.Path(file_okay=False),
              help="Directory for checkpoints, SentencePiece models, config and TensorBoard events.")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False),
              help="Continue the run in this directory from its last checkpoint (its own config "
                   "unless CONFIG_FILE is given; --set may change budgets and intervals).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set train.max_steps=1000 (repeatable).")
@click.option("--quiet", is_flag=True, help="No progress bar or console log.")
def train(config_file: str | None, run_dir: str | None, resume_dir: str | None,
          overrides: tuple[str, ...], quiet: bool) -> None:
    """Train a model from CONFIG_FILE (YAML) into --run-dir, or continue one with --resume.

    SIGINT/SIGTERM finish the current step, save a checkpoint and exit 0."""
    from s2s import config
    from s2s import train as training

    if bool(run_dir) == bool(resume_dir):
        raise click.UsageError("give exactly one of --run-dir (a new run) and --resume RUN")
    if resume_dir:
        result = training.resume(resume_dir, config_file, overrides, console=not quiet)
    else:
        result = training.train(config.load(config_file, overrides), run_dir, console=not quiet)
    run = run_dir or resume_dir
    if str(result["stopped_by"]).startswith("SIG"):  # SIGINT / SIGTERM: saved, exit 0
        click.echo(f"{result['stopped_by']}: stopped after step {result['step']}; saved "
                   f"{result['checkpoint']}. Resume with: s2s train --resume {run}", err=True)
        return
    where = Path(run) / "checkpoints"
    shown = ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                      for k, v in result.items())
    click.echo(f"done: {shown}; checkpoints in {where}", err=True)


@main.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--last", type=click.IntRange(min=1), default=5, show_default=True,
              help="Average the newest N step checkpoints of RUN.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The averaged checkpoint (usable by `s2s translate`).")
def average(run: str, last: int, output: str) -> None:
    """Average the parameters of RUN's last N checkpoints into one checkpoint."""
    from s2s import checkpoint

    steps = checkpoint.average_run(run, last, output)
    click.echo(f"averaged steps {', '.join(map(str, steps))} into {output}", err=True)


@main.command()
@click.argument("model", type=click.Path())
@click.option("-i", "--input", "input_path", type=click.Path(dir_okay=False), default="-",
              help="Source text, one sentence per line (default: stdin).")
@click.option("-o", "--output", "output_path", type=click.Path(dir_okay=False), default="-",
              help="Where translations go, one line per input line (default: stdout).")
@click.option("--beam", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Sentences per batch.")
@click.option("--max-src-len", type=click.IntRange(min=0), default=None,
              help="Truncate longer sources (pieces); 0: never. Default: 2x the training limit.")
@click.option("--threads", type=click.IntRange(min=0), default=0,
              help="torch threads (0: torch's default).")
def translate(model: str, input_path: str, output_path: str, beam: int, batch_size: int,
              max_src_len: int | None, threads: int) -> None:
    """Translate with MODEL (a run directory or a checkpoint file)."""
    from s2s.translate import Translator, set_threads

    set_threads(threads)
    translator = Translator.from_run(model)
    options = dict(beam=beam, batch_size=batch_size, max_src_len=max_src_len)
    try:
        source = sys.stdin.buffer if input_path == "-" else open(input_path, "rb")
    except OSError as exc:
        raise DataError(f"--input {input_path}: cannot open ({exc.strerror})") from exc
    chunk = 1 if input_path == "-" and sys.stdin.isatty() else 1024
    try:
        if output_path == "-":
            translator.translate_stream(source, sys.stdout, chunk_lines=chunk, **options)
        else:
            try:
                sink = open(output_path, "w", encoding="utf-8", newline="\n")
            except OSError as exc:
                raise DataError(f"--output {output_path}: cannot open ({exc.strerror})") from exc
            with sink:
                translator.translate_stream(source, sink, chunk_lines=chunk, **options)
    except OSError as exc:
        raise DataError(f"reading {input_path} failed ({exc.strerror or exc})") from exc
    finally:
        if source is not sys.stdin.buffer:
            source.close()


@main.command()
@click.argument("hypotheses", type=click.Path(dir_okay=False))
@click.argument("references", type=click.Path(dir_okay=False))
@click.option("-m", "--metrics", multiple=True, type=click.Choice(["bleu", "chrf", "ter"]),
              default=("bleu", "chrf"), show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
def evaluate(hypotheses: str, references: str, metrics: tuple[str, ...], as_json: bool) -> None:
    """Score HYPOTHESES against REFERENCES (detokenized, line-aligned) with sacreBLEU."""
    from s2s import evaluate as scoring
    from s2s.data import read_lines

    hyps, refs = read_lines(hypotheses), read_lines(references)
    if len(hyps) != len(refs):
        raise DataError(f"{hypotheses} has {len(hyps)} lines but {references} has {len(refs)}: "
                        f"hypotheses and references must be line-aligned")
    scores = scoring.score(hyps, refs, tuple(metrics))
    if as_json:
        click.echo(json.dumps({n: {"score": s.score, "signature": s.signature}
                               for n, s in scores.items()}))
        return
    for s in scores.values():
        click.echo(f"{s.text}\n  signature: {s.signature}")


@main.command()
@click.option("--check", is_flag=True,
              help="Also run the conformance kit (s2s.testing.check_cell) on every cell that "
                   "loads; exit status 1 if any cell is broken or fails it.")
@click.pass_context
def plugins(ctx: click.Context, check: bool) -> None:
    """List the installed cell plugins (entry-point group s2s.cells) and their status."""
    from s2s.cells import registry

    rows = registry.status()
    if not rows:
        click.echo("no cells installed (is s2s installed? `pip install -e .`)")
        return
    widths = [max(len(getattr(e, key)) for e, _ in rows) for key in ("name", "dist", "version",
                                                                      "value")]
    failed = False
    for entry, state in rows:
        details: list[str] = []
        if check and state == "ok":
            from s2s.testing import CellContractError, check_cell

            try:
                check_cell(registry.load(entry.name)[0])
            except AssertionError as exc:
                reason = str(exc) or type(exc).__name__
                if isinstance(exc, CellContractError):  # the row already names the cell
                    reason = f"{exc.prop}{f' on {exc.device}' if exc.device else ''}: {exc.detail}"
                first, *details = reason.splitlines()
                state = f"fails check: {first}"
        failed = failed or state != "ok"
        cols = (entry.name, entry.dist, entry.version, entry.value)
        click.echo("  ".join(c.ljust(w) for c, w in zip(cols, widths)) + f"  {state}")
        for line in details:
            click.echo(f"    {line}")
    if check and failed:
        ctx.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
