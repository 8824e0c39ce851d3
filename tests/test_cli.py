"""The `s2s` command end to end: translate / train / evaluate / plugins, their error paths, and
what a training run leaves in its run directory."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import synthetic
from click.testing import CliRunner
from conftest import ROOT
from malicious import MARKER_NAME, malicious_checkpoint

from s2s import checkpoint
from s2s.cli import main

TOY = ROOT / "configs" / "toy.yaml"


def cli(*args: str, input: bytes | str | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def subprocess_s2s(*args, input: bytes | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "s2s", *map(str, args)], input=input,
                          capture_output=True, cwd=cwd, timeout=300, env={**os.environ})


def assert_user_error(result, *needles: str) -> str:
    """Exit status 1, exactly one line on stderr starting 'error:', no traceback; returns it."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not a crash
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    # the message itself may span lines (config problems are listed one per line)
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)
    return result.stderr


def exact_match(hyps: list[str], refs: list[str]) -> float:
    return sum(h == r for h, r in zip(hyps, refs)) / len(refs)


def read(path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


# -- translate: robust line handling ----------------------------------------------------------


@pytest.mark.slow
def test_translate_awkward_input_subprocess(toy_run, tmp_path):
    long_line = " ".join(synthetic.SOURCE[i % 12] for i in range(1000)).encode()
    lines = [b"a b c", b"", long_line, b"a \xff\xfe b \xc3", b"d e f g", b"l k j i h"]
    source = tmp_path / "input.bin"
    source.write_bytes(b"\n".join(lines) + b"\n")
    proc = subprocess_s2s("translate", toy_run, "-i", source, cwd=tmp_path)
    stderr = proc.stderr.decode("utf-8", errors="replace")
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    out = proc.stdout.decode("utf-8").split("\n")
    assert out[-1] == "" and len(out) - 1 == len(lines), out  # one line per input line
    assert out[1] == ""  # empty in, empty out
    from s2s.translate import Translator  # normal lines: as the Python API translates them

    assert [out[0], out[4], out[5]] == Translator.from_run(toy_run).translate(
        ["a b c", "d e f g", "l k j i h"])
    warnings = [line for line in stderr.splitlines() if line.startswith("warning:")]
    assert any("line 4" in w and "invalid UTF-8" in w for w in warnings), stderr
    assert any("line 3" in w and "truncated" in w for w in warnings), stderr


@pytest.mark.slow
def test_translate_stdin_to_stdout_subprocess(toy_run, tmp_path):
    # CRLF and a missing final newline are still one line each
    proc = subprocess_s2s("translate", toy_run, input=b"a b c\r\n\nd e f", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    from s2s.translate import Translator

    expected = Translator.from_run(toy_run).translate(["a b c", "", "d e f"])
    assert expected[1] == "" and expected[0] and expected[2]
    assert proc.stdout.decode("utf-8").split("\n") == [*expected, ""]
    stderr = proc.stderr.decode()
    assert "warning:" not in stderr and "Traceback" not in stderr  # nothing to warn about


@pytest.mark.slow
def test_translate_stdin_to_stdout_clirunner(toy_run):
    result = cli("translate", toy_run, "--beam", "3", input="a b c\nh g f e\n")
    assert result.exit_code == 0, result.output
    from s2s.translate import Translator

    assert result.stdout.splitlines() == Translator.from_run(toy_run).translate(
        ["a b c", "h g f e"], beam=3)


@pytest.mark.slow
def test_translate_source_length_limit(toy_run):
    line = " ".join(synthetic.SOURCE[i % 12] for i in range(60)) + "\n"
    default = cli("translate", toy_run, input=line)  # 2x data.max_len = 40 pieces
    assert default.exit_code == 0 and len(default.stdout.splitlines()) == 1
    assert "warning: line 1: 60 source pieces, truncated to 40" in default.stderr
    ten = cli("translate", toy_run, "--max-src-len", "10", input=line)
    assert ten.exit_code == 0 and "truncated to 10" in ten.stderr
    never = cli("translate", toy_run, "--max-src-len", "0", input=line)
    assert never.exit_code == 0 and len(never.stdout.splitlines()) == 1
    assert "truncated" not in never.stderr


@pytest.mark.slow
def test_translate_empty_input(toy_run, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    result = cli("translate", toy_run, "-i", empty)
    assert result.exit_code == 0 and result.stdout == ""


# -- translate: the toy model learned the task ------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("beam", [1, 5])
def test_toy_model_translates_the_test_split(toy_run, toy_data, tmp_path, beam):
    out = tmp_path / "hyp.txt"
    result = cli("translate", toy_run, "-i", toy_data / "test.src", "-o", out, "--beam", beam)
    assert result.exit_code == 0, result.output
    hyps, refs = read(out), read(toy_data / "test.tgt")
    assert len(hyps) == len(refs) == 200
    # 0.935-1.0 over seeds and rounding-level changes of the arithmetic (one toy run of 600
    # steps); a model that did not learn the task scores near 0
    assert exact_match(hyps, refs) >= 0.9


@pytest.mark.slow
def test_batch_size_does_not_change_translations(toy_run, toy_data):
    from s2s.translate import Translator

    translator = Translator.from_run(toy_run)
    lines = read(toy_data / "val.src")[:40]
    for beam in (1, 4):
        together = translator.translate(lines, beam=beam, batch_size=64)
        assert translator.translate(lines, beam=beam, batch_size=1) == together
        assert translator.translate(lines, beam=beam, batch_size=7) == together


@pytest.mark.slow
def test_python_api_matches_cli(toy_run, toy_data, tmp_path):
    from s2s.translate import Translator

    lines = read(toy_data / "val.src")[:30] + ["", "a b c"]
    source = tmp_path / "in.txt"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for beam in ("1", "5"):
        result = cli("translate", toy_run, "-i", source, "--beam", beam)
        assert result.exit_code == 0, result.output
        api = Translator.from_run(toy_run).translate(lines, beam=int(beam))
        assert result.stdout.splitlines() == api
    # a checkpoint file works as well as the run directory
    best = toy_run / "checkpoints" / "best.pt"
    expected = Translator.from_run(toy_run).translate(lines)
    assert Translator.from_run(best).translate(lines) == expected


# -- translate: errors --------------------------------------------------------------------------


def test_translate_missing_model(tmp_path):
    assert_user_error(cli("translate", tmp_path / "nowhere", input="a b\n"),
                      "no such run directory or checkpoint")


def test_translate_directory_without_checkpoints(tmp_path):
    assert_user_error(cli("translate", tmp_path, input="a b\n"), "best.pt", "s2s train")


def test_translate_malicious_checkpoint(tmp_path):
    marker = tmp_path / MARKER_NAME
    evil = malicious_checkpoint(tmp_path, marker)
    assert_user_error(cli("translate", evil, input="a b\n"), "refused", str(evil))
    assert not marker.exists()


def test_translate_malicious_checkpoint_subprocess(tmp_path):
    marker = tmp_path / MARKER_NAME
    evil = malicious_checkpoint(tmp_path, marker)
    proc = subprocess_s2s("translate", evil, input=b"a b\n", cwd=tmp_path)
    stderr = proc.stderr.decode()
    assert proc.returncode == 1 and proc.stdout == b""
    assert "Traceback" not in stderr and stderr.count("error:") == 1 and "refused" in stderr
    assert not marker.exists()


@pytest.mark.slow
def test_translate_truncated_checkpoint(toy_run, tmp_path):
    data = (toy_run / "checkpoints" / "last.pt").read_bytes()
    broken = tmp_path / "broken.pt"
    broken.write_bytes(data[: len(data) // 3])
    assert_user_error(cli("translate", broken, input="a b\n"), "truncated")


@pytest.mark.slow
def test_translate_checkpoint_with_missing_entries(toy_run, tmp_path):
    payload = checkpoint.load(toy_run / "checkpoints" / "last.pt")
    del payload["spm"]
    partial = tmp_path / "partial.pt"
    checkpoint.save(payload, partial)
    assert_user_error(cli("translate", partial, input="a b\n"), "missing entry", "spm")


@pytest.mark.slow
def test_translate_checkpoint_whose_weights_do_not_fit(toy_run, tmp_path):
    payload = checkpoint.load(toy_run / "checkpoints" / "last.pt")
    payload["config"]["model"]["hidden_size"] = 64
    odd = tmp_path / "odd.pt"
    checkpoint.save(payload, odd)
    assert_user_error(cli("translate", odd, input="a b\n"), "do not fit")


@pytest.mark.slow
def test_translate_unreadable_input_and_output(toy_run, tmp_path):
    assert_user_error(cli("translate", toy_run, "-i", tmp_path / "missing.txt"),
                      "--input", "cannot open")
    source = tmp_path / "in.txt"
    source.write_text("a b\n", encoding="utf-8")
    assert_user_error(cli("translate", toy_run, "-i", source, "-o", tmp_path / "no" / "out.txt"),
                      "--output", "cannot open")


# -- train: config errors fail fast --------------------------------------------------------------


def test_train_unknown_config_key(tmp_path, toy_data):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TOY.read_text(encoding="utf-8") + "  hiden_size: 3\n", encoding="utf-8")
    run_dir = tmp_path / "run"
    err = assert_user_error(cli("train", bad, "--run-dir", run_dir, "--set",
                                f"data.dir={toy_data}"), "'train.hiden_size'", str(bad))
    assert "unknown key" in err
    assert not run_dir.exists()


def test_train_unknown_cell_fails_before_data_preparation(tmp_path, toy_data, monkeypatch):
    from s2s import data
    from s2s.tokenizer import Tokenizer

    work = []  # data preparation that ran: none may
    monkeypatch.setattr(data, "load_split", lambda *a, **k: work.append("load_split"))
    monkeypatch.setattr(Tokenizer, "train", classmethod(lambda *a, **k: work.append("spm")))
    run_dir = tmp_path / "run"
    err = assert_user_error(cli("train", TOY, "--run-dir", run_dir, "--quiet",
                                "--set", f"data.dir={toy_data}", "--set", "model.cell=nosuchcell"),
                            "nosuchcell", "lstm", "gru")
    assert "installed cells" in err
    assert work == []  # no corpus read, no SentencePiece training
    assert not run_dir.exists()  # failed before the run directory was even made


def test_train_bad_override_syntax(tmp_path):
    assert_user_error(cli("train", TOY, "--run-dir", tmp_path / "run", "--set", "train.lr"),
                      "expected KEY=VALUE")


def test_train_missing_config_file(tmp_path):
    assert_user_error(cli("train", tmp_path / "none.yaml", "--run-dir", tmp_path / "run"),
                      "cannot read")


def test_train_missing_data_dir(tmp_path):
    assert_user_error(cli("train", TOY, "--run-dir", tmp_path / "run", "--quiet",
                          "--set", f"data.dir={tmp_path / 'nodata'}"), "data.dir")


@pytest.mark.slow
def test_train_refuses_to_overwrite_a_run(toy_run, toy_data):
    before = (toy_run / "checkpoints" / "best.pt").read_bytes()
    assert_user_error(cli("train", TOY, "--run-dir", toy_run, "--quiet",
                          "--set", f"data.dir={toy_data}"), "already holds a trained run")
    assert (toy_run / "checkpoints" / "best.pt").read_bytes() == before


# -- evaluate --------------------------------------------------------------------------------------


def test_evaluate_identical_files(toy_data):
    refs = toy_data / "test.tgt"
    result = cli("evaluate", refs, refs)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith("BLEU = 100.00")
    assert "chrF2 = 100.00" in out
    signatures = [line for line in out.splitlines() if line.startswith("  signature: ")]
    assert len(signatures) == 2
    assert all("nrefs:1" in s and "version:" in s for s in signatures)
    assert "tok:13a" in signatures[0]


def test_evaluate_json_and_ter(toy_data, tmp_path):
    refs = toy_data / "test.tgt"
    hyps = tmp_path / "hyps.txt"
    lines = read(refs)
    hyps.write_text("\n".join(lines[:100] + ["zo"] * (len(lines) - 100)) + "\n",
                    encoding="utf-8")
    result = cli("evaluate", hyps, refs, "--json", "-m", "bleu", "-m", "chrf", "-m", "ter")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert set(scores) == {"bleu", "chrf", "ter"}
    assert 0 < scores["bleu"]["score"] < 100 and 0 < scores["chrf"]["score"] < 100
    assert scores["ter"]["score"] > 0
    assert all(s["signature"] for s in scores.values())


def test_evaluate_line_count_mismatch(toy_data, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("\n".join(read(toy_data / "test.tgt")[:10]) + "\n", encoding="utf-8")
    assert_user_error(cli("evaluate", short, toy_data / "test.tgt"),
                      "10 lines", "200", "line-aligned")


def test_evaluate_missing_and_bad_files(tmp_path, toy_data):
    assert_user_error(cli("evaluate", tmp_path / "none.txt", toy_data / "test.tgt"),
                      "cannot open")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xff\xfe\n")
    assert_user_error(cli("evaluate", bad, bad), "invalid UTF-8")


def test_keyboard_interrupt_exits_130(monkeypatch, tmp_path):
    import s2s.translate

    def interrupted(path, **options):
        raise KeyboardInterrupt

    monkeypatch.setattr(s2s.translate.Translator, "from_run", staticmethod(interrupted))
    result = cli("translate", tmp_path, input="a b\n")
    assert result.exit_code == 130 and "interrupted" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [
    ["translate", "x", "--beam", "0"], ["translate", "x", "--batch-size", "0"],
    ["train", "configs/toy.yaml"], ["evaluate", "only-one-file"], ["nosuchcommand"],
], ids=["beam0", "batch0", "no-run-dir", "one-file", "unknown-command"])
def test_usage_errors(args):
    result = cli(*args)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert "Usage:" in result.stderr and "Traceback" not in result.stderr


# -- plugins, version ------------------------------------------------------------------------------


def test_plugins_lists_builtin_cells():
    result = cli("plugins")
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    for name in ("lstm", "gru"):
        assert name in rows, result.stdout
        assert rows[name].rstrip().endswith("ok"), rows[name]
        assert f"s2s.cells.{name}:" in rows[name]


def test_version_and_help():
    result = cli("--version")
    assert result.exit_code == 0 and "0.1.0" in result.stdout
    result = cli("--help")
    assert result.exit_code == 0
    for command in ("train", "translate", "evaluate", "plugins"):
        assert command in result.stdout


# -- what a training run leaves behind ---------------------------------------------------------


@pytest.mark.slow
def test_run_directory_contents(toy_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for name in ("checkpoints/best.pt", "checkpoints/last.pt", "spm.model", "config.yaml"):
        assert (toy_run / name).is_file(), name
    assert not list((toy_run / "checkpoints").glob("*.tmp"))
    events = list((toy_run / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(toy_run / "tensorboard"))
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/tgt_tokens_per_s",
                "val/loss", "val/bleu"):
        assert tag in scalars, (tag, sorted(scalars))
    losses = [e.value for e in acc.Scalars("train/loss")]
    assert losses[-1] < losses[0]  # it learned
    from s2s import config

    max_steps = config.load(toy_run / "config.yaml").train.max_steps
    assert max(e.step for e in acc.Scalars("val/bleu")) == max_steps  # the final validation


@pytest.mark.slow
def test_checkpoint_file_alone_translates(toy_run, tmp_path):
    import shutil

    from s2s.translate import Translator

    alone = tmp_path / "model.pt"
    shutil.copyfile(toy_run / "checkpoints" / "best.pt", alone)
    lines = ["a b c", "l k j", ""]
    assert Translator.from_run(alone).translate(lines) == \
        Translator.from_run(toy_run).translate(lines)


@pytest.mark.slow
def test_checkpoint_is_self_contained(toy_run):
    from s2s import config

    last = checkpoint.load(toy_run / "checkpoints" / "last.pt")
    assert last["step"] == config.load(toy_run / "config.yaml").train.max_steps
    assert last["cell"]["name"] == "lstm" and last["cell"]["dist"] == "s2s"
    assert {"s2s", "torch", "python"} <= set(last["versions"])
    assert last["spm"]["joint"] == (toy_run / "spm.model").read_bytes()
    stored = config.from_dict(last["config"])
    assert stored == config.load(toy_run / "config.yaml")
    assert stored.model == config.load(TOY, ["data.dir=x"]).model


def test_translate_refuses_to_overwrite_its_input(toy_run, tmp_path):
    source = tmp_path / "text.txt"
    source.write_text("a b c\nd e\n")
    result = cli("translate", toy_run, "-i", source, "-o", source)
    assert result.exit_code == 1
    assert "is the input file" in result.output and "Traceback" not in result.output
    assert source.read_text() == "a b c\nd e\n"  # untouched
    link = tmp_path / "link.txt"
    link.symlink_to(source)
    assert cli("translate", toy_run, "-i", source, "-o", link).exit_code == 1
    assert source.read_text() == "a b c\nd e\n"


def test_translate_reads_gzipped_input_as_training_does(toy_run, tmp_path):
    import gzip

    plain, packed = tmp_path / "in.txt", tmp_path / "in.txt.gz"
    plain.write_text("a b c\n\nd e f g\n")
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    a, b = (cli("translate", toy_run, "-i", f, "--precision", "fp32") for f in (plain, packed))
    assert a.exit_code == b.exit_code == 0 and a.output == b.output
    assert len(b.output.splitlines()) == 3
    blob = gzip.compress("".join(f"a b {i}\n" for i in range(20000)).encode())
    packed.write_bytes(blob[:len(blob) // 2])  # truncated
    result = cli("translate", toy_run, "-i", packed, "-o", tmp_path / "out.txt")
    assert result.exit_code == 1 and f"reading {packed} failed" in result.output


def test_seed_beyond_64_bits_is_a_usage_error(toy_run):
    result = cli("translate", toy_run, "--sample", "--seed", str(2**70))
    assert result.exit_code == 2 and "--seed" in result.output


def test_evaluate_of_empty_files_is_a_clear_error(tmp_path):
    (tmp_path / "h").write_text("")
    (tmp_path / "r").write_text("")
    result = cli("evaluate", tmp_path / "h", tmp_path / "r")
    assert result.exit_code == 1 and "no lines to score" in result.output


def _sh(command: str, toy_run, tmp_path) -> subprocess.CompletedProcess:
    s2s = f"{sys.executable} -m s2s translate {toy_run} --precision fp32"
    return subprocess.run(["sh", "-c", command.replace("S2S", s2s)], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)


@pytest.mark.parametrize("redirect, message", [
    ("<&-", "error: standard input is closed: give the text with -i FILE"),
    (">&-", "error: standard output is closed: write to a file with -o FILE"),
])
def test_closed_standard_streams_are_one_clear_error(toy_run, tmp_path, redirect, message):
    proc = _sh(f"echo 'a b' | S2S {redirect}", toy_run, tmp_path)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1] == message


def test_a_broken_pipe_ends_quietly_and_a_full_disk_says_writing(toy_run, tmp_path):
    proc = _sh("yes 'a b c' | head -n 30000 | S2S 2>err.txt | head -n 1; "
               "cat err.txt", toy_run, tmp_path)
    assert proc.stdout.splitlines()[0] == "qu ry zo"
    assert "Traceback" not in proc.stdout and "error" not in proc.stdout
    if os.path.exists("/dev/full"):
        proc = _sh("echo 'a b' | S2S -o /dev/full", toy_run, tmp_path)
        assert proc.returncode == 1
        assert "error: writing /dev/full failed (No space left on device)" in proc.stderr


def test_translate_and_score_never_write_over_what_they_read(toy_run, tmp_path):
    import shutil

    model = tmp_path / "model.pt"
    shutil.copy(checkpoint.resolve(toy_run), model)
    before = model.read_bytes()
    source, targets = tmp_path / "src.txt", tmp_path / "tgt.txt"
    source.write_text("a b c\n")
    targets.write_text("c b a\n")
    assert_user_error(cli("translate", model, "-i", source, "-o", model),
                      f"--output {model} is {model}, which this command reads")
    for out in (source, targets, model):
        assert_user_error(cli("score", model, "-i", source, "-r", targets, "-o", out),
                          f"--output {out} is")
    assert model.read_bytes() == before
    assert source.read_text() == "a b c\n" and targets.read_text() == "c b a\n"
    if os.path.exists("/dev/full"):
        assert_user_error(cli("score", model, "-i", source, "-r", targets, "-o", "/dev/full"),
                          "writing /dev/full failed")


def test_out_of_range_seed_and_deeply_nested_yaml_are_config_errors(tmp_path, toy_data):
    assert_user_error(cli("train", TOY, "--run-dir", tmp_path / "a", "--set",
                          f"data.dir={toy_data}", "--set", "train.seed=-1"),
                      "'train.seed' must be in [0, 2**32), got -1")
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 5000 + "]" * 5000 + "\n")
    assert_user_error(cli("train", deep, "--run-dir", tmp_path / "b"), "nested too deeply")
    bomb = tmp_path / "bomb.yaml"  # nine to the eighth elements once its aliases expand
    names = "abcdefgh"
    levels = ["&a [" + ", ".join("x" * 9) + "]"] + [
        f"&{names[i + 1]} [" + ", ".join([f"*{names[i]}"] * 9) + "]" for i in range(7)]
    bomb.write_text("data:\n  dir: [" + ", ".join(levels) + "]\n")
    message = assert_user_error(cli("train", bomb, "--run-dir", tmp_path / "c"))
    assert len(message) < 2000, len(message)
