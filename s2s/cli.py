"""The `s2s` command. Every S2SError becomes one clear line on stderr and exit status 1."""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from s2s import console, devices, streams  # torch-free, as is options: the decoding defaults
from s2s import options as search_options
from s2s.errors import DataError, S2SError

log = logging.getLogger("s2s")


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
    console.install(replace=True)


@main.command()
@click.argument("config_file", type=click.Path(dir_okay=False), required=False)
@click.option("--run-dir", type=click.Path(file_okay=False),
              help="New run directory: checkpoints, SentencePiece models, config, TensorBoard.")
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
    from s2s import config, training

    if bool(run_dir) == bool(resume_dir):
        raise click.UsageError("give exactly one of --run-dir (a new run) and --resume RUN")
    if resume_dir:
        result = training.resume(resume_dir, config_file, overrides, console=not quiet)
    else:
        result = training.train(config.load(config_file, overrides), run_dir, console=not quiet)
    run = run_dir or resume_dir
    if os.environ.get("RANK", "0") not in ("", "0"):  # torchrun: rank 0 reports for all
        return
    if str(result["stopped_by"]).startswith("SIG"):  # SIGINT / SIGTERM: saved, exit 0
        click.echo(f"{result['stopped_by']}: stopped after step {result['step']}; saved "
                   f"{result['checkpoint']}. Resume with: s2s train --resume {run}", err=True)
        return
    where = Path(run) / "checkpoints"
    shown = ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                      for k, v in result.items())
    click.echo(f"done: {shown}; checkpoints in {where}", err=True)


@main.command("export")
@click.argument("run", type=click.Path(exists=True))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Folder for encoder.onnx, step.onnx, the SentencePiece model, manifest.json.")
def export_cmd(run: str, output: str) -> None:
    """Export RUN (a run directory or checkpoint) to ONNX for onnxruntime; `s2s translate DIR`
    and `s2s serve DIR` run the exported folder."""
    from s2s import export

    manifest = export.export(run, output)
    click.echo(f"exported {run} ({manifest['cell']} cells) to {output}", err=True)


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
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a value of the run's config, e.g. --set data.dir=PATH.")
def lexicon(run: str, overrides: tuple[str, ...]) -> None:
    """(Re)build RUN's target-vocabulary lexicon (for `s2s translate --shortlist`) from its
    training data; runs trained by this version have one already."""
    from s2s import config, shortlist, training
    from s2s.tokenizer import Tokenizer

    cfg_file = Path(run) / training.CONFIG_FILE
    if not cfg_file.is_file() or not Tokenizer.exists(run):
        raise DataError(f"{run}: no {training.CONFIG_FILE} or SentencePiece model; is it a run "
                        f"directory written by `s2s train`?")
    cfg = config.load(cfg_file, overrides)
    tokenizer, train_data, _ = training.prepare(cfg, Path(run), log.info)
    built = training.build_lexicon(tokenizer, train_data, cfg.train.seed, log.info)
    shortlist.save(built, Path(run) / shortlist.LEXICON_FILE)
    log.info(f"wrote {Path(run) / shortlist.LEXICON_FILE}; `s2s translate RUN --shortlist K` "
             f"uses it")


@main.command("config")
@click.argument("config_file", type=click.Path(dir_okay=False), required=False)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set train.max_steps=1000 (repeatable).")
def show_config(config_file: str | None, overrides: tuple[str, ...]) -> None:
    """Print the resolved config (CONFIG_FILE, or the defaults, with --set) as YAML: every key
    with a one-line help, and its default where the value differs."""
    from s2s import config

    click.echo(config.describe(config.load(config_file, overrides)), nl=False)


def _search_option(name: str, more_help: str = ""):
    """The `s2s translate` option --NAME of SearchOptions field NAME: its default, allowed
    values (choices or range) and help text are the field's (s2s.options)."""
    spec = search_options.FIELDS[name]
    meta = spec.metadata
    if "choices" in meta:
        kind = click.Choice(meta["choices"])
    else:
        ranged = click.IntRange if isinstance(spec.default, int) else click.FloatRange
        kind = ranged(min=meta.get("min"), max=meta.get("max"),
                      min_open=meta.get("min_open", False))
    return click.option(f"--{name.replace('_', '-')}", type=kind, default=spec.default,
                        show_default=True, help=f"{meta['help']} {more_help}".strip())


def _check_device(ctx, param, value: str) -> str:
    found = devices.problem(value)
    if found:
        raise click.BadParameter(found)
    return value


def _device_for(device: str, precision: str) -> str:
    """--device auto with --precision int8 (CPU only) is the CPU, also where there is a GPU."""
    return "cpu" if device == "auto" and precision == "int8" else device


_device_option = click.option("--device", default="auto", show_default=True,
                              callback=_check_device, help=f"Where to compute: {devices.HELP}.")


@main.command()
@click.argument("models", nargs=-1, required=True, type=click.Path())
@click.option("-i", "--input", "input_path", type=click.Path(dir_okay=False), default="-",
              help="Source text, one sentence per line (default: stdin).")
@click.option("-o", "--output", "output_path", type=click.Path(dir_okay=False), default="-",
              help="Where translations go, one line per input line (default: stdout).")
@_search_option("beam")
@_search_option("nbest", ">1 writes JSON lines.")
@_search_option("length_penalty")
@_search_option("alpha")
@_search_option("coverage_penalty")
@_search_option("min_len")
@_search_option("max_len_a")
@_search_option("max_len_b")
@click.option("--sample", is_flag=True, help=search_options.FIELDS["sampling"].metadata["help"])
@_search_option("temperature")
@_search_option("top_k")
@_search_option("top_p")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=None,
              help="Seed for --sample.")
@click.option("--output-scores", is_flag=True,
              help="JSON lines with translation, score and log_prob.")
@click.option("--output-alignments", is_flag=True,
              help="JSON lines with the attention alignment and the pieces (implies scores).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Sentences per batch (the input is sorted by length within a batch window).")
@click.option("--max-tokens", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also cap a batch at this many padded source pieces (0: no cap).")
@click.option("--max-src-len", type=click.IntRange(min=0), default=None,
              help=f"Truncate longer sources (pieces); 0: never. Default: "
                   f"{search_options.SOURCE_LIMIT_FACTOR}x the training limit.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "int8"]),
              default="auto", show_default=True,
              help="auto: bf16 where the CPU/GPU computes it natively, else fp32; int8: dynamic "
                   "int8 products (CPU), fastest (docs/benchmarks.md has BLEU and speed).")
@click.option("--shortlist", type=click.IntRange(min=0), default=0, show_default=True,
              help="Search each batch over the K best translations of its source pieces (the "
                   "run's lexicon) plus the --shortlist-frequent most frequent target pieces: "
                   "faster, approximate (0: the whole vocabulary).")
@click.option("--shortlist-frequent", type=click.IntRange(min=0),
              default=search_options.DEFAULT_FREQUENT, show_default=True,
              help="Most frequent target pieces every shortlist keeps.")
@click.option("--threads", type=click.IntRange(min=0), default=0,
              help="torch threads (0: torch's default).")
@_device_option
def translate(models: tuple[str, ...], input_path: str, output_path: str, beam: int, nbest: int,
              length_penalty: str, alpha: float, coverage_penalty: float, min_len: int,
              max_len_a: float, max_len_b: int, sample: bool, temperature: float, top_k: int,
              top_p: float, seed: int | None, output_scores: bool, output_alignments: bool,
              batch_size: int, max_tokens: int, max_src_len: int | None, precision: str,
              shortlist: int, shortlist_frequent: int, threads: int, device: str) -> None:
    """Translate with MODELS (run directories or checkpoint files; several: an ensemble).

    Writes exactly one line per input line: the translation, or a JSON object with
    --output-scores / --output-alignments / --nbest > 1."""
    from s2s.ops.runtime import set_threads, tune_allocator
    from s2s.translate import Translator

    if nbest > beam and not sample:
        raise click.BadParameter(f"--nbest {nbest} needs --beam >= {nbest} (or --sample)",
                                 param_hint="--nbest")
    set_threads(threads)
    tune_allocator()
    translator = Translator.from_run(list(models), device=_device_for(device, precision))
    options = dict(beam=beam, nbest=nbest, length_penalty=length_penalty, alpha=alpha,
                   coverage_penalty=coverage_penalty, min_len=min_len, max_len_a=max_len_a,
                   max_len_b=max_len_b, sampling=sample, temperature=temperature, top_k=top_k,
                   top_p=top_p, seed=seed, attention=output_alignments,
                   max_tokens=max_tokens, max_src_len=max_src_len, precision=precision,
                   shortlist=shortlist, shortlist_frequent=shortlist_frequent)
    _use_run_defaults(options, translator.search_defaults)
    json_lines = output_scores or output_alignments or nbest > 1
    streams.not_the_same(input_path, output_path, *models)
    source = streams.open_input(input_path)
    try:
        with streams.writing(output_path) as sink:
            translator.translate_stream(source, sink, window=max(1024, 16 * batch_size),
                                        json_lines=json_lines, batch_size=batch_size, **options)
    except (OSError, EOFError) as exc:  # EOFError: a truncated .gz
        raise DataError(f"reading {input_path} failed ({getattr(exc, 'strerror', None) or exc})"
                        ) from exc
    finally:
        if source is not sys.stdin.buffer:
            source.close()


def _use_run_defaults(options: dict, run_defaults: dict) -> None:
    """Drop the options left at their defaults on the command line that the run's
    serving.json sets (its tuned length penalty), so that the run's values apply."""
    ctx = click.get_current_context()
    for name in run_defaults:
        if name in options and ctx.get_parameter_source(name) is ParameterSource.DEFAULT:
            del options[name]


@main.command()
@click.argument("models", nargs=-1, required=True, type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Lines per search: concurrent requests are merged up to this.")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="How long a search waits for more requests after the first.")
@click.option("--max-lines", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Lines per request (more: 413).")
@click.option("--max-chars", type=click.IntRange(min=1), default=200_000, show_default=True,
              help="Characters per request, all lines together (more: 413).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "int8"]),
              default="auto", show_default=True, help="As for `s2s translate`.")
@click.option("--threads", type=click.IntRange(min=0), default=0,
              help="torch threads (0: torch's default).")
@_device_option
def serve(models: tuple[str, ...], host: str, port: int, batch_size: int, max_wait_ms: float,
          max_lines: int, max_chars: int, precision: str, threads: int, device: str) -> None:
    """Serve MODELS (run directories or checkpoints; several: an ensemble) over HTTP:
    POST /translate {"text": [...]} -> {"translations": [...]}; GET /health, /info; the API
    is documented at /docs. Concurrent requests are batched together. Needs the `serve` extra
    (pip install 's2s[serve]')."""
    from s2s import serve as service

    cfg = service.ServeConfig(batch_size=batch_size, max_wait_ms=max_wait_ms,
                              max_lines=max_lines, max_chars=max_chars, precision=precision)
    service.main(list(models), host, port, cfg, threads, _device_for(device, precision))


@main.command()
@click.argument("models", nargs=-1, required=True, type=click.Path())
@click.option("-i", "--input", "input_path", required=True, type=click.Path(dir_okay=False),
              help="Source sentences, one per line.")
@click.option("-r", "--targets", "targets_path", required=True,
              type=click.Path(dir_okay=False), help="Target sentences to score, line-aligned.")
@click.option("-o", "--output", "output_path", type=click.Path(dir_okay=False), default="-",
              help="One log-probability per line (default: stdout).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "int8"]),
              default="auto", show_default=True, help="As for `s2s translate`.")
@_device_option
def score(models: tuple[str, ...], input_path: str, targets_path: str, output_path: str,
          batch_size: int, precision: str, device: str) -> None:
    """Forced decoding: the log-probability of each target line given its source line."""
    from s2s.data import read_lines
    from s2s.translate import Translator

    streams.not_the_same(input_path, output_path, targets_path, *models)
    sources, targets = read_lines(input_path), read_lines(targets_path)
    if len(sources) != len(targets):
        raise DataError(f"{input_path} has {len(sources)} lines but {targets_path} has "
                        f"{len(targets)}: sources and targets must be line-aligned")
    translator = Translator.from_run(list(models), device=_device_for(device, precision))
    values = translator.score(sources, targets, batch_size=batch_size,
                              precision=precision)
    with streams.writing(output_path) as sink:
        for value in values:
            sink.write(f"{value:.6f}\n")


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
