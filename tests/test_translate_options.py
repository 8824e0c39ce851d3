"""`s2s translate` options (n-best, scores, alignments, penalties, sampling, ensembles,
--max-tokens), `s2s score`, streaming from a pipe, and SearchOptions (s2s.options): validation and
the defaults the CLI and the Python API take from it."""
from __future__ import annotations

import dataclasses
import inspect
import json
import os
import subprocess
import sys
import threading
import time

import click
import pytest
from click.testing import CliRunner

from s2s import options
from s2s.cli import main
from s2s.errors import ConfigError
from s2s.options import LENGTH_PENALTIES, SearchOptions
from s2s.translate import Translator, read_batches, translate_lines

LINES = ["a b c", "", "d e f g", "l k j"]


def _run(args, stdin: str):
    result = CliRunner().invoke(main, args, input=stdin)
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


@pytest.mark.slow
def test_nbest_scores_and_alignments_as_json_lines(toy_run):
    out = _run(["translate", str(toy_run), "--beam", "4", "--nbest", "3"], "\n".join(LINES))
    assert len(out) == len(LINES)
    records = [json.loads(line) for line in out]
    assert [r["line"] for r in records] == [1, 2, 3, 4]
    for record in records[:1] + records[2:]:
        nbest = record["nbest"]
        assert len(nbest) == 3
        assert [h["score"] for h in nbest] == sorted((h["score"] for h in nbest), reverse=True)
    best = Translator.from_run(toy_run).translate(LINES, beam=4)
    assert [r["nbest"][0]["translation"] for r in records] == best

    out = _run(["translate", str(toy_run), "--output-alignments"], "a b c\n")
    record = json.loads(out[0])
    assert record["source_pieces"] and record["target_pieces"][-1] == "</s>"
    assert len(record["alignment"]) == len(record["target_pieces"])
    assert all(len(row) == len(record["source_pieces"]) for row in record["alignment"])
    assert record["score"] == record["log_prob"] < 0


@pytest.mark.slow
def test_penalties_sampling_and_max_tokens_keep_one_line_per_input(toy_run):
    text = "\n".join(LINES * 5)
    plain = _run(["translate", str(toy_run)], text)
    for extra in (["--beam", "3", "--length-penalty", "gnmt", "--alpha", "0.8"],
                  ["--beam", "3", "--coverage-penalty", "0.2", "--output-scores"],
                  ["--sample", "--seed", "1", "--top-k", "5"],
                  ["--max-tokens", "7", "--batch-size", "3"],
                  ["--min-len", "2"],
                  ["--precision", "bf16", "--beam", "2"]):
        out = _run(["translate", str(toy_run), *extra], text)
        assert len(out) == len(LINES) * 5, extra
    assert _run(["translate", str(toy_run), "--max-tokens", "7", "--batch-size", "3"],
                text) == plain  # batching never changes a translation
    sampled = [_run(["translate", str(toy_run), "--sample", "--seed", "4", "--temperature",
                     "3"], text) for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_nbest_larger_than_beam_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["translate", str(tmp_path), "--nbest", "3"])
    assert result.exit_code == 2 and "--beam >= 3" in result.output


@pytest.mark.slow
def test_ensemble_of_one_run_twice_translates_like_the_run(toy_run):
    assert _run(["translate", str(toy_run), str(toy_run), "--beam", "3"], "\n".join(LINES)) == \
        _run(["translate", str(toy_run), "--beam", "3"], "\n".join(LINES))


def test_ensemble_members_must_share_vocabularies(toy_run, tmp_path):
    from s2s import checkpoint

    payload = checkpoint.load(toy_run / "checkpoints" / "best.pt")
    kept = json.loads(payload["spm"]["kept"])
    unused = next(i for i in range(10_000) if i not in kept["src"])
    kept["src"] = sorted([*kept["src"][:-1], unused])  # same sizes, another source vocabulary
    payload["spm"] = {**payload["spm"], "kept": json.dumps(kept)}
    other = tmp_path / "other.pt"
    checkpoint.save(payload, other)
    result = CliRunner().invoke(main, ["translate", str(toy_run), str(other)], input="a\n")
    assert result.exit_code == 1
    assert "do not share their SentencePiece" in result.output


@pytest.mark.slow
def test_score_command_is_forced_decoding(toy_run, tmp_path):
    src, tgt = tmp_path / "src.txt", tmp_path / "tgt.txt"
    translator = Translator.from_run(toy_run)
    hyps = translator.translate(LINES, beam=3)
    src.write_text("\n".join(LINES) + "\n")
    tgt.write_text("\n".join(hyps) + "\n")
    out = _run(["score", str(toy_run), "-i", str(src), "-r", str(tgt)], "")
    found = translator.search(LINES, beam=3)
    assert len(out) == len(LINES)
    for line, items, hyp in zip(out, found, hyps):
        if hyp:
            assert float(line) == pytest.approx(items[0]["log_prob"], abs=1e-3)
    tgt.write_text("x\n")
    result = CliRunner().invoke(main, ["score", str(toy_run), "-i", str(src), "-r", str(tgt)])
    assert result.exit_code == 1 and "line-aligned" in result.output


def test_read_batches_hands_over_a_batch_when_the_pipe_pauses():
    read_end, write_end = os.pipe()
    reader = os.fdopen(read_end, "rb")
    closed = threading.Event()

    def close_later():
        time.sleep(10)
        closed.set()
        os.close(write_end)

    os.write(write_end, b"one\ntwo\n")
    threading.Thread(target=close_later, daemon=True).start()
    batches = read_batches(reader, 64)
    first = next(batches)
    assert first == [b"one\n", b"two\n"] and not closed.is_set()
    assert list(batches) == []
    reader.close()


def test_read_batches_of_a_file_are_full(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"".join(b"%d\n" % i for i in range(10)) + b"last")
    with open(path, "rb") as f:
        assert [len(b) for b in read_batches(f, 4)] == [4, 4, 3]


@pytest.mark.slow
def test_translate_streams_from_a_pipe(toy_run):
    """A line's translation arrives while the input stays open."""
    proc = subprocess.Popen([sys.executable, "-m", "s2s", "translate", str(toy_run)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        proc.stdin.write(b"a b c\n")
        proc.stdin.flush()
        line = proc.stdout.readline()  # would block forever if output waited for end of input
        assert line.decode().strip() == Translator.from_run(toy_run).translate(["a b c"])[0]
        proc.stdin.write(b"d e f\n")
        proc.stdin.close()
        assert len(proc.stdout.read().splitlines()) == 1
    finally:
        proc.kill()
        proc.wait()


def test_lstm_step_under_bf16_autocast_is_close_to_fp32():
    import torch

    from s2s.cells import registry

    torch.manual_seed(0)
    cell = registry.build("lstm", 12, 16, {})
    x, h, c = torch.randn(5, 12), torch.randn(5, 16), torch.randn(5, 16)
    expected, (_, c_expected) = cell.step(x, (h, c))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, (_, c_got) = cell.step(x, (h, c))
    torch.testing.assert_close(got.float(), expected, rtol=0, atol=3e-2)
    torch.testing.assert_close(c_got.float(), c_expected, rtol=0, atol=3e-2)


# -- SearchOptions: the one validated source of decoding defaults -----------------------------

@pytest.mark.parametrize("name, value, allowed", [
    ("length_penalty", "gnmtt", "one of none, average, gnmt"),
    ("beam", 0, "an integer >= 1"), ("nbest", 0, "an integer >= 1"),
    ("alpha", -0.1, "a number >= 0"), ("coverage_penalty", -1, "a number >= 0"),
    ("min_len", -1, "an integer >= 0"), ("max_len_a", -2.0, "a number >= 0"),
    ("max_len_b", -1, "an integer >= 0"), ("temperature", 0, "a number > 0"),
    ("top_k", -1, "an integer >= 0"), ("top_p", 0, "a number in (0, 1]"),
    ("top_p", 1.5, "a number in (0, 1]"), ("beam", 2.5, "an integer >= 1"),
    ("beam", "5", "an integer >= 1"), ("alpha", float("nan"), "a number >= 0"),
])
def test_search_options_reject_bad_values_naming_what_is_allowed(name, value, allowed):
    with pytest.raises(ConfigError) as caught:
        SearchOptions(**{name: value})
    assert str(caught.value) == f"{name} {value!r} is not {allowed}"


def test_search_options_accept_the_edges_of_their_ranges():
    SearchOptions(beam=1, nbest=1, alpha=0, coverage_penalty=0, min_len=0, max_len_a=0,
                  max_len_b=0, temperature=1e-9, top_k=0, top_p=1)
    for kind in LENGTH_PENALTIES:
        SearchOptions(length_penalty=kind)


def test_cli_defaults_and_allowed_values_are_search_options():
    command = main.commands["translate"]
    params = {p.name: p for p in command.params}
    ctx = click.Context(command)
    cli_name = {"sampling": "sample", "attention": "output_alignments"}
    for field in dataclasses.fields(SearchOptions):
        param = params[cli_name.get(field.name, field.name)]
        assert param.get_default(ctx) == field.default, field.name
        meta = field.metadata
        if "choices" in meta:
            assert tuple(param.type.choices) == meta["choices"] == LENGTH_PENALTIES
        elif "min" in meta:
            ranged = click.IntRange if isinstance(field.default, int) else click.FloatRange
            assert type(param.type) is ranged, field.name
            assert (param.type.min, param.type.max, param.type.min_open) == \
                (meta["min"], meta.get("max"), meta.get("min_open", False)), field.name
    assert params["shortlist_frequent"].get_default(ctx) == options.DEFAULT_FREQUENT
    signature = inspect.signature(Translator.search)
    assert signature.parameters["shortlist_frequent"].default == options.DEFAULT_FREQUENT
    # the Python API re-types no search default: SearchOptions' apply
    for function in (translate_lines, Translator.search, Translator.translate):
        assert not set(inspect.signature(function).parameters) & set(options.FIELDS)


def test_cli_rejects_an_unknown_length_penalty_with_the_allowed_ones(tmp_path):
    result = CliRunner().invoke(main, ["translate", str(tmp_path), "--length-penalty", "bogus"])
    assert result.exit_code == 2
    assert "'bogus' is not one of 'none', 'average', 'gnmt'" in result.output


def test_length_penalty_of_an_unknown_kind_is_an_error():
    import torch

    from s2s import search

    with pytest.raises(ConfigError, match="length_penalty 'gnmtt' is not one of none, average, "
                                          "gnmt"):
        search.length_penalty(torch.tensor([3]), "gnmtt", 0.6)


def test_source_limit_is_twice_the_training_limit():
    from s2s import config

    cfg = config.from_dict({}, source="test")
    assert options.source_limit(cfg) == 2 * cfg.data.max_len


def test_cli_import_does_not_import_torch():
    code = "import sys, s2s.cli; assert 'torch' not in sys.modules and 's2s.search' not in " \
           "sys.modules, sorted(m for m in sys.modules if m.startswith(('torch', 's2s')))"
    subprocess.run([sys.executable, "-c", code], check=True)
