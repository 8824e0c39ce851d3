"""Replay a tour of bad inputs across every `s2s` entry point, as a new user would (issue 16):
about 130 cases over configs, `--set` strings, the torchrun environment, command-line options,
data files, plugins, checkpoints, translate input, evaluate, score, average, resume, export,
serve, signals and a full disk. One line per case as it runs, then a table (case, category,
command, exit status, verdict), the counts per category and the failures.

    .venv/bin/python tools/bad_input_tour.py                  # every case
    .venv/bin/python tools/bad_input_tour.py --only translate --only checkpoint
    .venv/bin/python tools/bad_input_tour.py --only tr-output-is-input,sv-missing-model
    .venv/bin/python tools/bad_input_tour.py --skip tr-long-line-alignments --skip disk
    .venv/bin/python tools/bad_input_tour.py --list           # the cases; runs nothing
    .venv/bin/python tools/bad_input_tour.py --keep           # keep the temporary folder

Everything lives in one temporary folder: the synthetic toy task of tests/synthetic.py, ONE toy
run (configs/toy.yaml, 40 steps) that the cases share, damaged copies of its checkpoints, bad
data folders, configs, inputs and fake plugin distributions (a *.dist-info folder with METADATA
and entry_points.txt on PYTHONPATH, as tests/conftest.py's `install` makes them). Each case is
a subprocess of this Python (`python -m s2s ...`, or a bash line where a stream is closed or
piped) with a timeout (--timeout, 120 s), HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
OMP_NUM_THREADS=1, the data caches inside the temporary folder and `--set train.threads=1` on
trainings. Five short trainings (the shared run, a SIGINT and a SIGTERM run, a resume without
last.pt, a full disk) and two 2-step resumes; everything else fails before training or only
translates. Servers listen on 127.0.0.1 only. The tmpfs cases (a full disk, a read-only
folder) need root (`mount -t tmpfs -o size=2m`); otherwise they say why they are skipped.
tr-long-line-alignments (issue 16's hang) asks for a 5,559-source-piece alignment matrix: even
in linear time that is tens of millions of numbers (GBs of memory); --skip it on a small box.

Verdicts. Passing: clear-error (the documented non-zero status: 1, or 2 for a wrong option; an
`error:` line on stderr naming what the case names; no Traceback in stdout or stderr; under
20,000 characters) and ok-exit0 (the documented behaviour that is not an error: exit 0, or 141
for a closed pipe, and exactly one output line per input line where translate is concerned).
FAIL: traceback; data-lost (an input, run or checkpoint file changed or removed, or the run no
longer continues with `s2s train --resume RUN --set train.max_steps=N`); code-ran (code from a
checkpoint or config ran: its marker folder exists); hang (the timeout was hit); unclear (an
error expected but exit 0, or a non-zero exit with nothing said, no `error:` line, another
status, or a message that does not name the thing); unexpected (a documented exit-0 behaviour
that failed or wrote the wrong number of lines). skipped cases say why. Exit status 1 if any
case FAILs or a fixture cannot be built.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import pickle
import random
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "configs" / "toy.yaml"
sys.path.insert(0, str(ROOT / "tests"))  # synthetic.py (the toy task), malicious.py
sys.path.insert(1, str(ROOT))

import synthetic  # noqa: E402

PASSES = ("clear-error", "ok-exit0")
FAILS = ("traceback", "data-lost", "code-ran", "hang", "unclear", "unexpected")
MAX_MESSAGE = 20_000  # characters of stderr beyond which an error is not one clear line
ERROR_LINE = ("error:", "Error:")  # s2s's own errors; click's usage errors
BASE_STEPS = ("train.max_steps=40", "train.validate_every=40", "train.checkpoint_every=20")
CHEAP = ("train.max_steps=2", "train.validate_every=2", "train.checkpoint_every=2")
TORCHRUN_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                 "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")
SMALL = b"a b c\n\nd e f g\n"  # three lines, one of them empty
NO_DEV_FULL = "" if Path("/dev/full").exists() else "no /dev/full on this machine"
DROP = object()  # a checkpoint entry to leave out

Problem = tuple[str, str]  # (the FAIL verdict it causes, what happened)


class TourError(Exception):
    """A fixture could not be built."""


@dataclass
class Result:
    rc: int | None
    stdout: bytes = b""
    stderr: str = ""
    seconds: float = 0.0
    timed_out: bool = False
    note: str = ""
    problems: list[Problem] = field(default_factory=list)


@dataclass
class Case:
    """One bad input: what a new user runs, and what s2s has to do about it."""

    id: str
    category: str
    title: str
    argv: Callable[[Fixtures], list] | None = None  # arguments of `s2s` (runners use it too)
    shell: Callable[[Fixtures], str] | None = None  # a bash line; @s2s is the s2s command
    runner: Callable[[Case, Fixtures, float], Result] | None = None  # signals, servers
    stdin: bytes | None = None
    expect: tuple[str, ...] = ("clear-error",)
    needles: tuple[str, ...] = ()  # what the error must name (case-insensitive)
    error_rc: int | None = 1  # the documented status of the error (None: 1 or 2)
    ok_rc: int = 0
    error_in: str = "stderr"
    error_line: tuple[str, ...] = ERROR_LINE  # () : any message naming the needles
    lines: Callable[[Fixtures], int] | None = None  # ok-exit0: output lines wanted
    output: Callable[[Fixtures], Path] | None = None  # ... counted in this file, else stdout
    guard: Callable[[Fixtures], list[Path]] | None = None  # hashed before and after
    marker: Callable[[Fixtures], Path] | None = None  # exists only if code from the input ran
    before_work: Callable[[Fixtures], Path] | None = None  # should not exist after the error
    env: Callable[[Fixtures], dict[str, str]] | None = None
    setup: Callable[[Fixtures], None] | None = None
    check: Callable[[Fixtures, Result], list[Problem]] | None = None
    needs: tuple[str, ...] = ()  # fixtures: base (the toy run), ckpts, mounts
    skip: Callable[[Fixtures], str] | None = None  # why the case cannot run here, or ""
    timeout: float | None = None


# -- fixtures -------------------------------------------------------------------------------------


class Fixtures:
    """The tour's inputs under one temporary folder; each group is built on first need."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data, self.data_gz, self.bad = root / "data", root / "data-gz", root / "bad-data"
        self.inputs, self.cfg, self.ckpt = root / "in", root / "cfg", root / "ckpt"
        self.plugins, self.markers, self.runs = root / "plugins", root / "markers", root / "runs"
        self.out, self.mnt, self.cache = root / "out", root / "mnt", root / "cache"
        self.work = self.out / "cwd"  # every case's working directory
        self.base = self.runs / "base"  # the one trained toy run
        self.avrun = self.runs / "average-target"  # its copy that `s2s average` is aimed at
        self.export = self.out / "export"
        self.s2s = [sys.executable, "-m", "s2s"]
        self.mounts: dict[str, Path] = {}
        self.mount_problem = ""
        self.ready: set[str] = set()
        self.broken: dict[str, str] = {}

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
        env.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
                   MKL_NUM_THREADS="1", HF_DATASETS_CACHE=str(self.cache / "hf"),
                   S2S_DATA_CACHE=str(self.cache / "s2s-data"))
        env.setdefault("S2S_GEMM", "onednn")  # as the tests: no per-machine measurement
        for key, value in (extra or {}).items():
            if key == "PYTHONPATH" and env.get("PYTHONPATH"):
                value = f"{value}{os.pathsep}{env['PYTHONPATH']}"
            env[key] = value
        return env

    def ensure(self, need: str) -> str:
        """Build fixture group `need` (and what it needs) once: '' or why it is missing."""
        for first in {"base": ("basic",), "ckpts": ("base",)}.get(need, ()):
            problem = self.ensure(first)
            if problem:
                return problem
        if need not in self.ready and need not in self.broken:
            builders = {"basic": build_basic, "base": build_base, "ckpts": build_ckpts,
                        "mounts": build_mounts}
            try:
                builders[need](self)
                self.ready.add(need)
            except Exception as exc:  # any failure: the cases that need it are skipped
                self.broken[need] = f"fixture '{need}' could not be built: {exc}"
                print(f"error: {self.broken[need]}", file=sys.stderr, flush=True)
        return self.broken.get(need, "")


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def copy_run(f: Fixtures, name: str, source: Path | None = None) -> Path:
    """A fresh copy (real files, no hard links) of the toy run, for a case that damages it."""
    run = f.runs / name
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(source or f.base, run, symlinks=True)
    return run


def build_basic(f: Fixtures) -> None:
    for folder in (f.work, f.markers, f.runs, f.cache):
        folder.mkdir(parents=True, exist_ok=True)
    synthetic.write_task(f.data)
    for path in sorted(f.data.iterdir()):
        write(f.data_gz / f"{path.name}.gz", gzip.compress(path.read_bytes()))
    build_inputs(f)
    build_configs(f)
    build_bad_data(f)
    for dist, cells in PLUGINS.items():
        fake_dist(f.plugins / dist, dist, cells)


def build_inputs(f: Fixtures) -> None:
    d = f.inputs
    symbols = synthetic.SOURCE
    write(d / "small.txt", SMALL)
    write(d / "small.txt.gz", gzip.compress(SMALL))
    blob = gzip.compress("".join(f"a b {symbols[i % 12]}\n" for i in range(20000)).encode())
    write(d / "truncated.txt.gz", blob[:len(blob) // 2])
    write(d / "fake.txt.gz", SMALL)  # not gzip at all
    write(d / "empty.txt", b"")
    write(d / "empty-lines.txt", b"\n\n\n")
    write(d / "bad-utf8.txt", b"a b c\n\xff\xfe b\nd \xc3\n\xc0\xaf e\n")
    write(d / "nul.txt", b"a\x00b c\n\x00\x00\nd e\x00\n")
    write(d / "huge.txt", " ".join(symbols[i % 12] for i in range(500_000)) + "\n")  # 1 MB
    write(d / "long.txt", " ".join(symbols[i % 12] for i in range(5559)) + "\n")  # issue 16
    write(d / "same.txt", b"a b c\nd e\n")
    write(d / "same-target.txt", b"a b c\nd e\n")
    (d / "same-link.txt").symlink_to(d / "same-target.txt")
    src = (f.data / "test.src").read_text(encoding="utf-8").splitlines()[:10]
    tgt = (f.data / "test.tgt").read_text(encoding="utf-8").splitlines()[:10]
    for name, lines in (("src10.txt", src), ("tgt10.txt", tgt), ("score-src.txt", src)):
        write(d / name, "\n".join(lines) + "\n")
    write(d / "test.tgt.gz", gzip.compress((f.data / "test.tgt").read_bytes()))


def alias_bomb(levels: int = 6) -> str:
    """YAML whose anchors nest 10 ** levels items (cheap to load: aliases are references)."""
    keys = ["dir", "hub", "hub_config", "src_lang", "tgt_lang", "train"]
    lines = ["data:", f"  {keys[0]}: &l0 [{', '.join(['lol'] * 10)}]"]
    for i in range(1, levels):
        lines.append(f"  {keys[i]}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]")
    return "\n".join(lines) + "\n"


def build_configs(f: Fixtures) -> None:
    marker = json.dumps(str(f.markers / "yaml"))
    texts = {
        "syntax.yaml": "train:\n  lr: [0.1\n  max_steps: 5\n",
        "wrong-type.yaml": "train:\n  lr: fast\n",
        "unknown-key.yaml": "model:\n  hiden_size: 3\n",
        "out-of-range.yaml": "model:\n  dropout: 1.0\n",
        "dup-key.yaml": "train:\n  lr: 0.1\n  max_steps: 5\n  lr: 0.2\n",
        "list-top.yaml": "- data\n- model\n",
        "empty.yaml": "",
        "python-tag.yaml": f"train:\n  lr: !!python/object/apply:os.mkdir [{marker}]\n",
        "many-problems.yaml": "model:\n  hidden_size: -3\n  cell_options: 5\n"
                              "train:\n  optimizer: adagrad\n",
        "deep.yaml": "train:\n  lr: " + "[" * 5000 + "]" * 5000 + "\n",
        "aliases.yaml": alias_bomb(),
        "toy-typo.yaml": TOY.read_text(encoding="utf-8").rstrip("\n") + "\n  hiden_size: 3\n",
    }
    for name, text in texts.items():
        write(f.cfg / name, text)


def build_bad_data(f: Fixtures) -> None:
    """One folder per broken corpus, each a copy of the toy task with one thing wrong."""
    rng = random.Random(9)

    def copy(name: str) -> Path:
        shutil.copytree(f.data, f.bad / name)
        return f.bad / name

    (f.bad / "no-files").mkdir(parents=True)
    (copy("missing-side") / "train.tgt").unlink()
    d = copy("empty-train")
    write(d / "train.src", b"")
    write(d / "train.tgt", b"")
    d = copy("empty-val")
    write(d / "val.src", b"")
    write(d / "val.tgt", b"")
    d = copy("mismatch")
    write(d / "train.tgt", b"".join((d / "train.tgt").read_bytes().splitlines(True)[:-10]))
    d = copy("bad-utf8")
    raw = (d / "train.tgt").read_bytes().split(b"\n")
    raw[6] = b"zo \xff\xfe ry"  # line 7
    write(d / "train.tgt", b"\n".join(raw))
    write(copy("binary") / "train.src", rng.randbytes(20_000))
    for name, cut in (("gz-truncated", True), ("gz-fake", False)):
        d = copy(name)
        for side in ("src", "tgt"):
            plain = (d / f"train.{side}").read_bytes()
            (d / f"train.{side}").unlink()
            packed = gzip.compress(plain)
            if side == "src":
                packed = packed[:len(packed) // 2] if cut else plain  # cut, or not gzip at all
            write(d / f"train.{side}.gz", packed)
    src = (f.data / "train.src").read_text(encoding="utf-8").splitlines()
    tgt = (f.data / "train.tgt").read_text(encoding="utf-8").splitlines()
    d = copy("tsv")
    rows = [f"{s}\t{t}" for s, t in zip(src, tgt)]
    rows[4] = "a b\tzo\tzo"  # line 5: three fields
    write(d / "train.tsv", "\n".join(rows) + "\n")
    d = copy("jsonl")
    rows = [json.dumps({"src": s, "tgt": t}) for s, t in zip(src, tgt)]
    rows[2] = '{"src": "a b", "tgt": '  # line 3
    write(d / "train.jsonl", "\n".join(rows) + "\n")
    for d in (f.bad / "tsv", f.bad / "jsonl"):
        (d / "train.src").unlink()
        (d / "train.tgt").unlink()
    (copy("unreadable") / "train.src").chmod(0)


PLUGINS = {  # fake distribution -> {cell name: (module source, attribute)}
    "tour-raiser": {"tourboom": ("raise RuntimeError('boom at import')\n", "Cell")},
    "tour-exiter": {"tourexit": ("import sys\n\nsys.exit(3)\n", "Cell")},
    "tour-shadow": {"lstm": ("from s2s.cells.lstm import LSTMCell  # noqa: F401\n", "LSTMCell")},
}


def fake_dist(site: Path, dist: str, cells: dict[str, tuple[str, str]]) -> Path:
    """An installed distribution as importlib.metadata finds it on sys.path (PYTHONPATH)."""
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    write(info / "METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = ["[s2s.cells]"]
    for cell, (source, attribute) in cells.items():
        module = f"tour_{dist.replace('-', '_')}_{cell}"
        write(site / f"{module}.py", source)
        lines.append(f"{cell} = {module}:{attribute}")
    write(info / "entry_points.txt", "\n".join(lines) + "\n")
    return site


def build_base(f: Fixtures) -> None:
    """The one trained toy run, and the copy of it that the `s2s average` cases aim at."""
    cmd = [*f.s2s, "train", str(TOY), "--run-dir", str(f.base), "--quiet",
           *sets(f"data.dir={f.data}", "train.threads=1", *BASE_STEPS)]
    print(f"training the toy run ({' '.join(BASE_STEPS)}) ...", flush=True)
    res = run_process(cmd, f.env(), f.work, None, 1200)
    if res.rc != 0 or not (f.base / "checkpoints" / "best.pt").is_file():
        raise TourError(f"`s2s train` exit {res.rc}: {last_line(res.stderr)}")
    shutil.copytree(f.base, f.avrun, symlinks=True)


def build_ckpts(f: Fixtures) -> None:
    """Damaged copies of the toy run's best.pt (and files that run code when unpickled)."""
    import torch
    from malicious import RunsCode

    from s2s import checkpoint

    d, rng = f.ckpt, random.Random(7)
    d.mkdir(parents=True, exist_ok=True)
    good = f.base / "checkpoints" / "best.pt"
    blob = good.read_bytes()
    write(d / "truncated.pt", blob[:len(blob) // 3])
    write(d / "random.pt", rng.randbytes(4096))
    write(d / "zero.pt", b"")
    write(d / "text.pt", "model:\n  cell: lstm\n")
    for name in ("translate", "resume", "average"):  # one marker per use: who ran it shows
        torch.save({"format": checkpoint.FORMAT, "model": {},
                    "payload": RunsCode(str(f.markers / name))}, d / f"code-{name}.pt")
    write(d / "code-raw.pt", pickle.dumps({"format": checkpoint.FORMAT,
                                           "model": RunsCode(str(f.markers / "raw"))}, protocol=2))
    payload = dict(checkpoint.load(good))
    model = payload["model"]
    first = next(iter(model))

    def variant(name: str, **changes) -> None:
        checkpoint.save({k: v for k, v in {**payload, **changes}.items() if v is not DROP},
                        d / name)

    variant("config-list.pt", config=[1, 2])
    variant("model-tensor.pt", model=torch.zeros(3))
    variant("model-shape.pt", model={**model, first: torch.zeros(3, 3)})
    variant("model-nan.pt", model={k: v.clone().fill_(float("nan")) if v.is_floating_point()
                                   else v.clone() for k, v in model.items()})
    variant("spm-missing.pt", spm=DROP)
    variant("spm-kept.pt", spm={**payload["spm"], "kept": "{not json"})
    variant("bad-lexicon.pt", lexicon={"table": torch.zeros(2)})
    torch.save({k: v for k, v in payload.items() if k != "format"}, d / "no-format.pt")


def build_mounts(f: Fixtures) -> None:
    """tmpfs folders: 'full' (2 MB: a run starts, its first checkpoint does not fit), 'tiny'
    (64 KB) and 'ro' (read-only). Root only; otherwise mount_problem says why not."""
    if os.geteuid() != 0:
        f.mount_problem = "not root: a small tmpfs (a full disk) needs `mount -t tmpfs`"
        return
    for name, options in (("full", "size=2m"), ("tiny", "size=64k"), ("ro", "ro,size=64k")):
        path = f.mnt / name
        path.mkdir(parents=True, exist_ok=True)
        try:
            proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, f"s2s-tour-{name}",
                                   str(path)], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            f.mount_problem = f"mount -t tmpfs failed ({exc})"
            return
        if proc.returncode:
            f.mount_problem = f"mount -t tmpfs failed ({proc.stderr.strip() or proc.returncode})"
            return
        f.mounts[name] = path


def unmount(f: Fixtures) -> None:
    for path in f.mounts.values():
        if subprocess.run(["umount", str(path)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
    f.mounts.clear()


# -- running a case -------------------------------------------------------------------------------


def sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def q(value: Path | str) -> str:
    return shlex.quote(str(value))


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def first_error(text: str, prefixes: tuple[str, ...] = ERROR_LINE) -> str:
    return next((line[:300] for line in text.splitlines() if line.startswith(prefixes)), "")


def count_lines(data: bytes) -> int:
    """Lines as s2s translate counts them: a last line without its newline is one too."""
    return data.count(b"\n") + int(bool(data) and not data.endswith(b"\n"))


def file_lines(path: Path) -> int:
    """count_lines of a file (decompressed if .gz), read in chunks."""
    lines, last = 0, b"\n"
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
        while chunk := f.read(1 << 20):
            lines, last = lines + chunk.count(b"\n"), chunk[-1:]
    return lines + int(last != b"\n")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 20.0) -> bool:
    """Signal the process group of `proc`, SIGKILL after `grace` seconds; True if it was
    still running."""
    if proc.poll() is not None:
        return False
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=grace)
        return True
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:  # it ended meanwhile
        proc.wait()
        return False
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    return True


def run_process(cmd: list[str], env: dict[str, str], cwd: Path, stdin: bytes | None,
                limit: float) -> Result:
    """Run `cmd` in a session of its own (a timeout kills the whole pipeline)."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
                            start_new_session=True)
    try:
        out, err = proc.communicate(stdin, timeout=limit)
        timed_out = False
    except subprocess.TimeoutExpired:
        stop(proc, signal.SIGKILL, 0)
        out, err = proc.communicate()
        timed_out = True
    return Result(proc.returncode, out, err.decode("utf-8", "replace"),
                  time.monotonic() - started, timed_out,
                  f"killed after {limit:.0f} s" if timed_out else "")


class Logged:
    """A long-running process (a training, a server) whose stdout and stderr go to files, so
    that nothing blocks on a full pipe while the tour waits for it."""

    def __init__(self, f: Fixtures, name: str, cmd: list[str], env: dict[str, str]) -> None:
        self.out_path, self.err_path = f.out / f"{name}.stdout", f.out / f"{name}.stderr"
        self.started = time.monotonic()
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         env=env, cwd=f.work, start_new_session=True)

    def result(self, timed_out: bool = False, note: str = "") -> Result:
        return Result(self.proc.returncode, self.out_path.read_bytes(),
                      self.err_path.read_text(encoding="utf-8", errors="replace"),
                      time.monotonic() - self.started, timed_out, note)


def run_plain(case: Case, f: Fixtures, limit: float) -> Result:
    if case.shell is not None:
        cmd = ["bash", "-c", case.shell(f).replace("@s2s", " ".join(map(q, f.s2s)))]
    else:
        assert case.argv is not None, case.id
        cmd = [*f.s2s, *map(str, case.argv(f))]
    return run_process(cmd, f.env(case.env(f) if case.env else None), f.work, case.stdin, limit)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as file:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    return digest.hexdigest()


def snapshot(paths: list[Path], digest: bool = False) -> dict[str, tuple]:
    """path -> (size, mtime, ctime, inode[, sha256]) of every file in `paths` (files or
    folders); ctime catches every write, the hash what the case names as its inputs."""
    found: dict[str, tuple] = {}
    for top in paths:
        files: list[Path] = []
        if top.is_file():
            files = [top]
        elif top.is_dir():
            files = sorted(p for p in top.rglob("*") if p.is_file())
        for path in files:
            try:
                st = path.stat()
            except OSError:
                continue
            sig: tuple = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
            found[str(path)] = (*sig, sha256(path)) if digest else sig
    return found


def changes(before: dict[str, tuple], after: dict[str, tuple], root: Path) -> list[Problem]:
    out: list[Problem] = []
    for path, sig in before.items():
        shown = str(Path(path).relative_to(root)) if path.startswith(str(root)) else path
        if path not in after:
            out.append(("data-lost", f"{shown} was removed"))
        elif after[path] != sig:
            out.append(("data-lost", f"{shown} was changed"))
    return out


def run_case(case: Case, f: Fixtures, timeout: float) -> tuple[str, str, Result]:
    """(verdict, note, result) of one case, with its data-safety checks; a failure of the
    tour itself (not of s2s) skips the case and is reported as a broken fixture."""
    for need in ("basic", *case.needs):
        problem = f.ensure(need)
        if problem:
            return "skipped", problem, Result(None)
    reason = case.skip(f) if case.skip else ""
    if reason:
        return "skipped", reason, Result(None)
    try:
        return checked_run(case, f, timeout)
    except Exception as exc:  # a bug or a missing tool in the tour: say so, go on
        f.broken[case.id] = f"the tour itself failed: {type(exc).__name__}: {exc}"
        return "skipped", f.broken[case.id], Result(None)


def checked_run(case: Case, f: Fixtures, timeout: float) -> tuple[str, str, Result]:
    if case.setup:
        case.setup(f)
    shared = [f.data, f.inputs, f.cfg] + [path for path, need in ((f.base, "base"),
                                                                  (f.ckpt, "ckpts"))
                                          if need in f.ready]
    own = case.guard(f) if case.guard else []
    before = snapshot(shared), snapshot(own, digest=True)
    result = (case.runner or run_plain)(case, f, case.timeout or timeout)
    problems = list(result.problems)
    problems += changes(before[0], snapshot(shared), f.root)
    problems += changes(before[1], snapshot(own, digest=True), f.root)
    if case.marker and case.marker(f).exists():
        problems.append(("code-ran", f"{case.marker(f).name}/ exists: code from the input ran"))
    if case.check and not result.timed_out and result.rc is not None:
        problems += case.check(f, result)
    verdict, note = judge(case, f, result, problems)
    if verdict == "clear-error" and case.before_work and case.before_work(f).exists():
        note += f" ({case.before_work(f).name}/ was made before the error)"
    return verdict, note, result


def judge(case: Case, f: Fixtures, res: Result, problems: list[Problem]) -> tuple[str, str]:
    first: dict[str, str] = {}
    for kind, text in problems:
        first.setdefault(kind, text)
    if res.timed_out:
        return "hang", res.note
    for kind in ("code-ran", "data-lost"):
        if kind in first:
            return kind, first[kind]
    stdout = res.stdout.decode("utf-8", "replace")
    if "Traceback" in res.stderr or "Traceback" in stdout:
        return "traceback", last_line(res.stderr) or last_line(stdout)
    if res.rc == case.ok_rc:
        if "ok-exit0" not in case.expect:
            return "unclear", f"exit {res.rc}: the mistake went unnoticed (an error was " \
                              f"expected); {last_line(res.stderr) or 'nothing said'}"
        if case.lines:
            wanted = case.lines(f)
            if case.output and not case.output(f).is_file():
                return "unexpected", f"no output file {case.output(f).name}"
            got = file_lines(case.output(f)) if case.output else count_lines(res.stdout)
            if got != wanted:
                return "unexpected", f"{got} output lines for {wanted} input lines"
        for kind in ("unexpected", "unclear"):
            if kind in first:
                return kind, first[kind]
        return "ok-exit0", res.note or last_line(res.stderr)
    if "clear-error" not in case.expect:
        return "unexpected", f"exit {res.rc}: {first_error(res.stderr) or last_line(res.stderr)}"
    stream = stdout if case.error_in == "stdout" else res.stderr
    if not stream.strip():
        return "unclear", f"exit {res.rc} with nothing on {case.error_in}"
    if len(stream) > MAX_MESSAGE:
        return "unclear", f"a message of {len(stream):,} characters: {stream[:80]!r}..."
    error = first_error(stream, case.error_line) if case.error_line else last_line(stream)
    if not error:
        return "unclear", f"exit {res.rc}, no '{case.error_line[0]}' line: {last_line(stream)}"
    statuses = (case.error_rc,) if case.error_rc is not None else (1, 2)
    if res.rc not in statuses:
        return "unclear", f"exit {res.rc}, documented {' or '.join(map(str, statuses))}: {error}"
    missing = [n for n in case.needles if n.lower() not in stream.lower()]
    if missing:
        return "unclear", f"does not name {', '.join(map(repr, missing))}: {error}"
    for kind in ("unexpected", "unclear"):
        if kind in first:
            return kind, first[kind]
    return "clear-error", error


# -- checks and special runners ---------------------------------------------------------------


def stderr_has(*texts: str) -> Callable[[Fixtures, Result], list[Problem]]:
    def check(f: Fixtures, res: Result) -> list[Problem]:
        return [("unexpected", f"stderr does not say {t!r}") for t in texts if t not in res.stderr]
    return check


def stderr_lacks(text: str) -> Callable[[Fixtures, Result], list[Problem]]:
    def check(f: Fixtures, res: Result) -> list[Problem]:
        found = [line for line in res.stderr.splitlines() if text in line]
        return [("unclear", f"stderr says {text!r}: {found[0][:200]}")] if found else []
    return check


def stdout_has(text: str) -> Callable[[Fixtures, Result], list[Problem]]:
    def check(f: Fixtures, res: Result) -> list[Problem]:
        got = res.stdout.decode("utf-8", "replace")
        return [] if text in got else [("unexpected", f"stdout lacks {text!r}: {got[:100]!r}")]
    return check


def translated(*rows: int) -> Callable[[Fixtures, Result], list[Problem]]:
    """The output lines `rows` (0-based) of an exit-0 translation are not empty."""

    def check(f: Fixtures, res: Result) -> list[Problem]:
        if res.rc != 0:
            return []
        out = res.stdout.decode("utf-8", "replace").split("\n")
        empty = [i + 1 for i in rows if i >= len(out) or not out[i].strip()]
        return [("unexpected", f"output line(s) {empty} empty: the input was not translated")] \
            if empty else []
    return check


def plugin_row(cell: str, *words: str) -> Callable[[Fixtures, Result], list[Problem]]:
    """`s2s plugins` lists `cell` with `words` in its row, and the built-in lstm as ok."""

    def check(f: Fixtures, res: Result) -> list[Problem]:
        rows = res.stdout.decode("utf-8", "replace").splitlines()
        row = next((r for r in rows if r.split()[:1] == [cell]), "")
        lstm = next((r for r in rows if r.split()[:1] == ["lstm"]), "")
        out: list[Problem] = []
        if not row or not all(w in row for w in words):
            out.append(("unexpected", f"no row '{cell} ... {' '.join(words)}': {row or rows}"))
        if not lstm.rstrip().endswith("ok"):
            out.append(("unexpected", f"the built-in lstm is not 'ok': {lstm!r}"))
        return out
    return check


def resume_ok(f: Fixtures, run: Path, steps: int, limit: float) -> list[Problem]:
    """The data-safety check of a run: `s2s train --resume RUN --set train.max_steps=N`."""
    cmd = [*f.s2s, "train", "--resume", str(run), "--quiet",
           *sets(f"train.max_steps={steps}", "train.threads=1")]
    res = run_process(cmd, f.env(), f.work, None, limit)
    done = re.search(r"done: step (\d+)", res.stderr)
    if res.timed_out or res.rc != 0 or not done or int(done.group(1)) != steps:
        return [("data-lost", f"`s2s train --resume {run.name} --set train.max_steps={steps}` "
                              f"failed (exit {res.rc}{', timed out' if res.timed_out else ''}): "
                              f"{first_error(res.stderr) or last_line(res.stderr)}")]
    return []


def wait_for_step(proc: subprocess.Popen, run: Path, step: int, deadline: float) -> int | None:
    """The step a training has logged once it reaches `step` (None: it ended or the deadline
    passed first)."""
    log = run / "train_log.jsonl"
    while proc.poll() is None and time.monotonic() < deadline:
        if log.is_file():
            steps = []
            for line in log.read_text(encoding="utf-8").split("\n")[:-1]:  # complete lines
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if "train/loss" in record:
                    steps.append(int(record.get("step", 0)))
            if steps and max(steps) >= step:
                return max(steps)
        time.sleep(0.2)
    return None


def signal_training(sig: signal.Signals) -> Callable[[Case, Fixtures, float], Result]:
    """SIGINT to the process group (as Ctrl-C sends it) or SIGTERM to the process once the
    training has logged step 5; it must save, exit 0 with the resume command, and resume."""

    def runner(case: Case, f: Fixtures, limit: float) -> Result:
        assert case.argv is not None
        run = f.runs / case.id
        shutil.rmtree(run, ignore_errors=True)
        job = Logged(f, case.id, [*f.s2s, *map(str, case.argv(f))], f.env())
        reached = wait_for_step(job.proc, run, 5, time.monotonic() + limit)
        if reached is None:
            killed = stop(job.proc, signal.SIGKILL, 0)
            within = f" in {limit:.0f} s" if killed else ""
            return job.result(killed, f"never logged step 5{within}")
        try:
            if sig == signal.SIGINT:
                os.killpg(job.proc.pid, sig)
            else:
                os.kill(job.proc.pid, sig)
            job.proc.wait(timeout=120)
        except ProcessLookupError:  # it ended by itself just before
            job.proc.wait()
        except subprocess.TimeoutExpired:
            stop(job.proc, signal.SIGKILL, 0)
            return job.result(True, f"no exit within 120 s of {sig.name}")
        res = job.result(note=f"{sig.name} at step {reached}")
        stopped = re.search(r"stopped after step (\d+)", res.stderr)
        if res.rc == 0:
            if not stopped or f"Resume with: s2s train --resume {run}" not in res.stderr:
                res.problems.append(("unexpected", "exit 0 without the resume command"))
            else:
                target = int(stopped.group(1)) + 2
                res.problems += resume_ok(f, run, target, limit)
                res.note += f"; saved at step {stopped.group(1)}, resumed to {target}"
        return res

    return runner


def interrupted_translate(case: Case, f: Fixtures, limit: float) -> Result:
    """Ctrl-C while `s2s translate` waits for more input on a pipe (one line answered)."""
    assert case.argv is not None
    started = time.monotonic()
    err_path = f.out / f"{case.id}.stderr"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen([*f.s2s, *map(str, case.argv(f))], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err, env=f.env(), cwd=f.work,
                                start_new_session=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(b"a b c\n")
        proc.stdin.flush()
    except BrokenPipeError:
        pass  # it ended already: its status and stderr say why
    answer = b""
    while b"\n" not in answer and proc.poll() is None and time.monotonic() < started + limit:
        if select.select([proc.stdout], [], [], 0.5)[0]:
            chunk = os.read(proc.stdout.fileno(), 1 << 16)
            if not chunk:
                break
            answer += chunk
    timed_out, note = False, "SIGINT after the first line was answered"
    if b"\n" not in answer:
        timed_out = stop(proc, signal.SIGKILL, 0)
        note = f"no line answered in {limit:.0f} s" if timed_out else "no line answered"
    else:
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=60)
        except ProcessLookupError:
            proc.wait()
        except subprocess.TimeoutExpired:
            timed_out, note = stop(proc, signal.SIGKILL, 0), "no exit within 60 s of SIGINT"
    answer += proc.stdout.read()
    try:
        proc.stdin.close()
    except BrokenPipeError:
        pass
    proc.stdout.close()
    return Result(proc.returncode, answer, err_path.read_text(encoding="utf-8", errors="replace"),
                  time.monotonic() - started, timed_out, note)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http(port: int, method: str, path: str, body: bytes | None = None,
         timeout: float = 30.0) -> tuple[int, str]:
    """(status, body) of one request to 127.0.0.1:port, no proxy; status 0: no answer."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method,
                                     headers={"content-type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc)


def serve_unusable(hold_port: bool = False) -> Callable[[Case, Fixtures, float], Result]:
    """`s2s serve` of a model that cannot be served, or on a port that is taken: it should
    exit with the error; still serving at the timeout is a hang (with what /health said)."""

    def runner(case: Case, f: Fixtures, limit: float) -> Result:
        assert case.argv is not None
        port = free_port()
        holder = socket.socket() if hold_port else None
        if holder is not None:
            holder.bind(("127.0.0.1", port))
            holder.listen(1)
        try:
            job = Logged(f, case.id, [*f.s2s, *map(str, case.argv(f)), "--port", str(port)],
                         f.env())
            deadline, health = time.monotonic() + limit, ""
            while job.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(1.0)
                if holder is None:
                    status, body = http(port, "GET", "/health", timeout=2.0)
                    health = f"; GET /health: {status} {body[:150]}" if status else health
            running = stop(job.proc)
            return job.result(running, f"still serving after {limit:.0f} s{health}"
                              if running else "")
        finally:
            if holder is not None:
                holder.close()

    return runner


BAD_REQUESTS = [  # (body, the status of its JSON error) for `s2s serve ... --max-lines 5`
    (b"{not json", 400),
    (b'{"txt": ["a b"]}', 422),
    (b'{"text": ["a b"], "beam": 0}', 422),
    (json.dumps({"text": ["a b"] * 6}).encode(), 413),
]


def serve_requests(case: Case, f: Fixtures, limit: float) -> Result:
    """Bad requests get JSON errors and the server goes on; SIGTERM ends it with exit 0."""
    assert case.argv is not None
    port = free_port()
    job = Logged(f, case.id, [*f.s2s, *map(str, case.argv(f)), "--port", str(port)], f.env())
    deadline, status = time.monotonic() + limit, 0
    while job.proc.poll() is None and time.monotonic() < deadline and status != 200:
        time.sleep(1.0)
        status, _ = http(port, "GET", "/health", timeout=2.0)
    if status != 200:
        running = stop(job.proc)
        return job.result(running, "never answered GET /health with 200")
    problems: list[Problem] = []
    for body, wanted in BAD_REQUESTS:
        got, text = http(port, "POST", "/translate", body)
        if got != wanted or '"error"' not in text:
            problems.append(("unexpected", f"{body[:24]!r} got {got} {text[:100]!r}, wanted "
                                           f"{wanted} with an error"))
    got, text = http(port, "POST", "/translate", b'{"text": ["a b c"]}')
    try:
        answered = got == 200 and len(json.loads(text)["translations"]) == 1
    except (ValueError, KeyError, TypeError):
        answered = False
    if not answered:
        problems.append(("unexpected", f"a good request after the bad ones: {got} {text[:100]}"))
    job.proc.send_signal(signal.SIGTERM)
    try:
        job.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        stop(job.proc, signal.SIGKILL, 0)
        return job.result(True, "no exit within 60 s of SIGTERM")
    res = job.result(note=f"{len(BAD_REQUESTS)} bad requests answered, then SIGTERM")
    res.problems = problems
    return res


def without_last_pt(f: Fixtures) -> None:
    """The average cases' run, as if killed between writing a step file and linking last.pt,
    with a killed write's temporary file and a half-written newer step file."""
    ckpts = copy_run(f, "resume-without-last", f.avrun) / "checkpoints"
    (ckpts / "last.pt").unlink()
    write(ckpts / ".step-0000040.pt.x1y2.tmp", b"left by a killed write")
    write(ckpts / "step-0000045.pt", b"half a checkpoint")


def without_last_pt_check(f: Fixtures, res: Result) -> list[Problem]:
    ckpts = f.runs / "resume-without-last" / "checkpoints"
    out: list[Problem] = []
    if "resuming from its newest checkpoint" not in res.stderr:
        out.append(("unexpected", "no warning that last.pt is missing"))
    if (ckpts / ".step-0000040.pt.x1y2.tmp").exists():
        out.append(("unexpected", "the killed write's temporary file is still there"))
    if not re.search(r"done: step 42\b", res.stderr):
        out.append(("data-lost", f"the run did not continue to step 42: {last_line(res.stderr)}"))
    return out


def full_disk_check(f: Fixtures, res: Result) -> list[Problem]:
    """One warning per failed save (issue 16 saw the same one three times), no temp files."""
    warned = [line for line in res.stderr.splitlines()
              if line.startswith("warning:") and "writing checkpoint" in line]
    out: list[Problem] = []
    for line in dict.fromkeys(warned):
        if warned.count(line) > 1:
            out.append(("unclear", f"the same warning {warned.count(line)} times: {line[:120]}"))
    ckpts = f.mounts["full"] / "run" / "checkpoints"
    left = sorted(p.name for p in ckpts.glob(".*.tmp")) if ckpts.is_dir() else []
    if left:
        out.append(("unexpected", f"temporary files left on the full disk: {left}"))
    return out


def unwritable(f: Fixtures) -> Path:
    """A folder nothing can be written into: the read-only tmpfs as root, else mode 555."""
    return f.mounts.get("ro") or f.out / "locked"


def lock(f: Fixtures) -> None:
    if os.geteuid() != 0:
        (f.out / "locked").mkdir(parents=True, exist_ok=True)
        (f.out / "locked").chmod(0o555)


# -- the cases ------------------------------------------------------------------------------------


def train(f: Fixtures, name: str, *extra: str, data: Path | None = None,
          config: Path = TOY) -> list:
    """`s2s train CONFIG --run-dir RUNS/NAME` on the toy task (or `data`), few steps."""
    return ["train", config, "--run-dir", f.runs / name, "--quiet",
            *sets(f"data.dir={data or f.data}", "train.threads=1", *CHEAP, *extra)]


def tr(f: Fixtures, *args) -> list:
    """`s2s translate` with the toy run."""
    return ["translate", f.base, *args]


def small(f: Fixtures) -> list:
    return ["-i", f.inputs / "small.txt"]


def needs_export(f: Fixtures) -> str:
    return "" if (f.export / "manifest.json").is_file() else "needs ex-export, which did not run"


def needs_mount(name: str) -> Callable[[Fixtures], str]:
    return lambda f: "" if name in f.mounts else f.mount_problem or f"no '{name}' tmpfs"


def damaged_export(name: str, damage: Callable[[Path], None]) -> Callable[[Fixtures], None]:
    def setup(f: Fixtures) -> None:
        target = f.out / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(f.export, target)
        damage(target)
    return setup


def fake_run(name: str, steps: dict[int, str]) -> Callable[[Fixtures], None]:
    """OUT/NAME/checkpoints/step-N.pt: 'good' (the toy run's step 20) or a file of CKPT."""

    def setup(f: Fixtures) -> None:
        ckpts = f.out / name / "checkpoints"
        shutil.rmtree(ckpts.parent, ignore_errors=True)
        ckpts.mkdir(parents=True)
        for step, what in steps.items():
            source = f.base / "checkpoints" / "step-0000020.pt" if what == "good" \
                else f.ckpt / what
            shutil.copyfile(source, ckpts / f"step-{step:07d}.pt")
    return setup


def damaged_run(name: str, last: str) -> Callable[[Fixtures], None]:
    """A copy of the toy run whose last.pt is CKPT/`last`."""

    def setup(f: Fixtures) -> None:
        ckpts = copy_run(f, name) / "checkpoints"
        (ckpts / "last.pt").unlink()
        shutil.copyfile(f.ckpt / last, ckpts / "last.pt")
    return setup


def config_cases() -> list[Case]:
    def config(name: str) -> Callable[[Fixtures], list]:
        return lambda f: ["config", f.cfg / name]

    return [
        Case("config-yaml-syntax", "config", "a YAML syntax error (an unclosed [)",
             config("syntax.yaml"), needles=("invalid YAML", "syntax.yaml:")),
        Case("config-wrong-type", "config", "a string where a number belongs",
             config("wrong-type.yaml"), needles=("'train.lr'", "float")),
        Case("config-unknown-key", "config", "a typo in a key (hiden_size)",
             config("unknown-key.yaml"), needles=("'model.hiden_size'", "hidden_size")),
        Case("config-out-of-range", "config", "dropout 1.0 (outside [0, 1))",
             config("out-of-range.yaml"), needles=("'model.dropout'",)),
        Case("config-duplicate-key", "config", "a key given twice in one mapping",
             config("dup-key.yaml"), needles=("given twice", "dup-key.yaml:4")),
        Case("config-top-level-list", "config", "a YAML list instead of a mapping",
             config("list-top.yaml"), needles=("mapping",)),
        Case("config-empty-file", "config", "an empty config: the defaults",
             config("empty.yaml"), expect=("ok-exit0",), check=stdout_has("train:")),
        Case("config-missing-file", "config", "a config path that does not exist",
             config("nothere.yaml"), needles=("nothere.yaml", "cannot read")),
        Case("config-python-tag", "config", "a !!python/object tag that would run os.mkdir",
             config("python-tag.yaml"), needles=("python-tag.yaml",),
             marker=lambda f: f.markers / "yaml"),
        Case("config-many-problems", "config", "three bad values: all reported at once",
             config("many-problems.yaml"), needles=("3 problem", "'model.hidden_size'",
                                                    "'model.cell_options'", "'train.optimizer'")),
        Case("config-deep-nesting", "config", "a value nested 5000 lists deep",
             config("deep.yaml"), needles=("deep.yaml",)),
        Case("config-alias-bomb", "config", "anchors expanding to a million items",
             config("aliases.yaml"), needles=("'data.",)),
        Case("config-typo-train", "config", "train with a typo in the config file",
             lambda f: train(f, "config-typo-train", config=f.cfg / "toy-typo.yaml"),
             needles=("'train.hiden_size'", "toy-typo.yaml"),
             before_work=lambda f: f.runs / "config-typo-train"),
    ]


def set_cases() -> list[Case]:
    def show(text: str) -> Callable[[Fixtures], list]:
        return lambda f: ["config", TOY, "--set", text]

    def trains(name: str, text: str) -> Callable[[Fixtures], list]:
        return lambda f: train(f, name, text)

    def run(name: str) -> Callable[[Fixtures], Path]:
        return lambda f: f.runs / name

    return [
        Case("set-no-equals", "set", "--set train.lr (no =value)", show("train.lr"),
             needles=("KEY=VALUE",)),
        Case("set-unknown-key", "set", "--set train.bogus=1", show("train.bogus=1"),
             needles=("'train.bogus'",)),
        Case("set-not-an-int", "set", "--set train.max_steps=abc", show("train.max_steps=abc"),
             needles=("'train.max_steps'",)),
        Case("set-float-for-int", "set", "--set train.max_steps=1e3",
             show("train.max_steps=1e3"), needles=("'train.max_steps'",)),
        Case("set-max-time-nan", "set", "--set train.max_time=.nan (issue 16: accepted)",
             show("train.max_time=.nan"), needles=("'train.max_time'",)),
        Case("set-coverage", "set", "--set data.character_coverage=5 (issue 16: blamed "
             "vocab_size)", show("data.character_coverage=5"),
             needles=("'data.character_coverage'",), check=stderr_lacks("vocab_size")),
        Case("set-lr-nan-train", "set", "train with --set train.lr=.nan (issue 16: traceback "
             "after SentencePiece)", trains("set-lr-nan-train", "train.lr=.nan"),
             needles=("'train.lr'",), before_work=run("set-lr-nan-train")),
        Case("set-beta1-train", "set", "train with --set train.adam_beta1=2 (issue 16)",
             trains("set-beta1-train", "train.adam_beta1=2"), needles=("'train.adam_beta1'",),
             before_work=run("set-beta1-train")),
        Case("set-unknown-cell-train", "set", "train with --set model.cell=nosuchcell",
             trains("set-unknown-cell-train", "model.cell=nosuchcell"),
             needles=("nosuchcell", "lstm"), before_work=run("set-unknown-cell-train")),
        Case("set-device-cuda7-train", "set", "train with --set train.device=cuda:7",
             trains("set-device-cuda7-train", "train.device=cuda:7"), needles=("cuda:7",),
             before_work=run("set-device-cuda7-train")),
        Case("set-seed-negative-train", "set", "train with --set train.seed=-1",
             trains("set-seed-negative-train", "train.seed=-1"), needles=("train.seed",),
             before_work=run("set-seed-negative-train")),
        Case("set-max-len-1-train", "set", "train with --set data.max_len=1: no pair fits",
             trains("set-max-len-1-train", "data.max_len=1"), needles=("data.max_len",)),
    ]


def env_cases() -> list[Case]:
    return [
        Case("env-world-size-without-rank", "env", "WORLD_SIZE=2 without torchrun's RANK",
             lambda f: train(f, "env-world-size-without-rank"), needles=("torchrun",),
             env=lambda f: {"WORLD_SIZE": "2"}),
        Case("env-no-master-addr", "env", "RANK=0 WORLD_SIZE=2 without MASTER_ADDR",
             lambda f: train(f, "env-no-master-addr"), needles=("torchrun",),
             env=lambda f: {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}),
    ]


def args_cases() -> list[Case]:
    def bad(*args: str) -> Callable[[Fixtures], list]:
        return lambda f: tr(f, *small(f), *args)

    base = ("base",)
    return [
        Case("args-beam-negative", "args", "--beam -1", bad("--beam", "-1"), error_rc=2,
             needles=("--beam",), needs=base),
        Case("args-nbest-above-beam", "args", "--nbest 3 --beam 2", bad("--nbest", "3", "--beam",
             "2"), error_rc=2, needles=("--nbest",), needs=base),
        Case("args-precision-unknown", "args", "--precision fp16", bad("--precision", "fp16"),
             error_rc=2, needles=("--precision",), needs=base),
        Case("args-device-cuda7", "args", "--device cuda:7", bad("--device", "cuda:7"),
             needles=("cuda:7",), needs=base),
        Case("args-seed-beyond-64-bits", "args", "--sample --seed 2**70 (issue 16)",
             bad("--sample", "--seed", str(2**70)), error_rc=2, needles=("--seed",), needs=base),
        Case("args-alpha-nan", "args", "--length-penalty gnmt --alpha nan",
             bad("--length-penalty", "gnmt", "--alpha", "nan"), needles=("alpha",), needs=base),
        Case("args-max-len-a-inf", "args", "--max-len-a inf: refused, or no limit (not empty "
             "translations)", bad("--max-len-a", "inf"), expect=("clear-error", "ok-exit0"),
             error_rc=None, lines=lambda f: 3, check=translated(0, 2), needles=("inf",),
             needs=base),
        Case("args-train-neither", "args", "train without --run-dir or --resume",
             lambda f: ["train", TOY], error_rc=2, needles=("--run-dir",)),
        Case("args-serve-port", "args", "serve --port 70000",
             lambda f: ["serve", f.base, "--port", "70000"], error_rc=2, needles=("--port",),
             needs=base),
        Case("args-score-without-targets", "args", "score without -r",
             lambda f: ["score", f.base, *small(f)], error_rc=2, needles=("--targets",),
             needs=base),
    ]


def data_cases() -> list[Case]:
    def corpus(name: str, *extra: str) -> Callable[[Fixtures], list]:
        return lambda f: train(f, f"data-{name}", *extra, data=f.bad / name)

    def own(name: str) -> Callable[[Fixtures], list[Path]]:
        return lambda f: [f.bad / name]

    def case(name: str, title: str, *needles: str, **kw) -> Case:
        return Case(f"data-{name}", "data", title, corpus(name), needles=needles,
                    guard=own(name), **kw)

    return [
        case("nothere", "data.dir that does not exist", "data.dir", "nothere"),
        case("no-files", "data.dir with no corpus files", "split 'train'", "train.src"),
        case("missing-side", "train.src without train.tgt", "train.tgt"),
        case("empty-train", "empty train files (issue 16: DatasetGenerationError)",
             "split 'train' is empty"),
        case("empty-val", "empty val files (issue 16)", "split 'val' is empty"),
        case("mismatch", "train.tgt 10 lines shorter than train.src", "train.src", "train.tgt",
             "lines"),
        case("bad-utf8", "invalid UTF-8 on line 7 of train.tgt", "train.tgt:7", "UTF-8"),
        case("binary", "random bytes as train.src", "train.src"),
        case("gz-truncated", "a truncated train.src.gz", "train.src.gz"),
        case("gz-fake", "plain text named train.src.gz", "train.src.gz"),
        Case("data-wrong-languages", "data", "src_lang/tgt_lang that the files do not have",
             lambda f: train(f, "data-wrong-languages", "data.src_lang=en", "data.tgt_lang=de"),
             needles=("train.en",)),
        case("tsv", "a TSV line with three fields", "train.tsv:5"),
        case("jsonl", "a JSONL line that is not JSON", "train.jsonl:3", "JSON"),
        case("unreadable", "train.src without read permission", "train.src",
             skip=lambda f: "as root every file is readable" if os.geteuid() == 0 else ""),
    ]


def plugin_cases() -> list[Case]:
    def site(dist: str) -> Callable[[Fixtures], dict[str, str]]:
        return lambda f: {"PYTHONPATH": str(f.plugins / dist)}

    return [
        Case("plugins-import-raises-list", "plugins", "s2s plugins with a plugin that raises "
             "at import", lambda f: ["plugins"], env=site("tour-raiser"), expect=("ok-exit0",),
             check=plugin_row("tourboom", "broken", "RuntimeError")),
        Case("plugins-import-raises-train", "plugins", "train with the plugin that raises",
             lambda f: train(f, "plugins-import-raises-train", "model.cell=tourboom"),
             env=site("tour-raiser"), needles=("tourboom", "tour-raiser", "RuntimeError")),
        Case("plugins-sys-exit-list", "plugins", "s2s plugins with a plugin calling sys.exit() "
             "at import (issue 16: silent exit)", lambda f: ["plugins"], env=site("tour-exiter"),
             expect=("ok-exit0",), check=plugin_row("tourexit", "broken", "SystemExit")),
        Case("plugins-sys-exit-check", "plugins", "s2s plugins --check with it (issue 16)",
             lambda f: ["plugins", "--check"], env=site("tour-exiter"), error_in="stdout",
             error_line=(), needles=("tourexit", "broken"), timeout=300),
        Case("plugins-sys-exit-train", "plugins", "train with the sys.exit() plugin (issue 16)",
             lambda f: train(f, "plugins-sys-exit-train", "model.cell=tourexit"),
             env=site("tour-exiter"), needles=("tourexit", "SystemExit")),
        Case("plugins-sys-exit-other-cells", "plugins", "translate an lstm run while it is "
             "installed", lambda f: tr(f, *small(f)), env=site("tour-exiter"),
             expect=("ok-exit0",), lines=lambda f: 3, needs=("base",)),
        Case("plugins-shadow-lstm", "plugins", "a plugin declaring the name lstm too",
             lambda f: tr(f, *small(f)), env=site("tour-shadow"),
             needles=("lstm", "more than one distribution"), needs=("base",)),
    ]


def checkpoint_cases() -> list[Case]:
    def with_ckpt(name: str, *args: str) -> Callable[[Fixtures], list]:
        return lambda f: ["translate", f.ckpt / name, *small(f), *args]

    def case(key: str, name: str, title: str, *needles: str, args: tuple[str, ...] = (),
             **kw) -> Case:
        return Case(f"ckpt-{key}", "checkpoint", title, with_ckpt(name, *args),
                    needles=needles, needs=("ckpts",), **kw)

    return [
        case("truncated", "truncated.pt", "a checkpoint cut to a third", "truncated.pt",
             "truncated"),
        case("random-bytes", "random.pt", "4 KB of random bytes", "random.pt"),
        case("zero-bytes", "zero.pt", "an empty file", "zero.pt"),
        case("text-file", "text.pt", "a YAML text file", "text.pt",
             check=stderr_lacks("run code")),
        case("code-in-zip", "code-translate.pt", "a torch file whose pickle runs os.mkdir",
             "code-translate.pt", "refused", marker=lambda f: f.markers / "translate"),
        case("code-raw-pickle", "code-raw.pt", "a plain pickle that runs os.mkdir",
             "code-raw.pt", marker=lambda f: f.markers / "raw"),
        case("config-not-mapping", "config-list.pt", "'config' is a list (issue 16)",
             "'config'"),
        case("model-is-tensor", "model-tensor.pt", "'model' is a tensor (issue 16)", "'model'"),
        case("model-wrong-shape", "model-shape.pt", "a weight of the wrong shape", "do not fit"),
        case("nan-weights", "model-nan.pt", "every weight NaN: still one line per line",
             expect=("ok-exit0",), lines=lambda f: 3),
        case("no-spm", "spm-missing.pt", "no SentencePiece entry", "'spm'"),
        case("spm-metadata-not-json", "spm-kept.pt", "tokenizer metadata not JSON (issue 16)",
             "SentencePiece"),
        case("no-format", "no-format.pt", "a torch file without s2s's format entry",
             "no-format.pt", "not an s2s checkpoint"),
        case("damaged-lexicon", "bad-lexicon.pt", "--shortlist with a damaged lexicon", "lexicon",
             args=("--shortlist", "5")),
        Case("ckpt-missing-path", "checkpoint", "a checkpoint path that does not exist",
             lambda f: ["translate", f.out / "nothere.pt", *small(f)], needles=("nothere.pt",)),
        Case("ckpt-damaged-serving-json", "checkpoint", "a run whose serving.json is not JSON",
             lambda f: ["translate", f.runs / "serving-bad", *small(f)],
             setup=lambda f: write(copy_run(f, "serving-bad") / "serving.json", "{"),
             needles=("serving.json",), needs=("base",)),
    ]


def translate_cases() -> list[Case]:
    def inp(name: str, *args: str) -> Callable[[Fixtures], list]:
        return lambda f: tr(f, "-i", f.inputs / name, *args)

    def lines_of(name: str) -> Callable[[Fixtures], int]:
        return lambda f: file_lines(f.inputs / name)

    def ok(key: str, name: str, title: str, *args: str, **kw) -> Case:
        return Case(f"tr-{key}", "translate", title, inp(name, *args), expect=("ok-exit0",),
                    lines=lines_of(name), needs=("base",), **kw)

    def err(key: str, title: str, argv: Callable[[Fixtures], list], *needles: str,
            **kw) -> Case:
        return Case(f"tr-{key}", "translate", title, argv, needles=needles, needs=("base",),
                    **kw)

    return [
        err("missing-input", "-i a file that does not exist", inp("nothere.txt"), "--input",
            "nothere.txt"),
        err("input-is-directory", "-i a directory", lambda f: tr(f, "-i", f.inputs),
            "directory", error_rc=2),
        err("output-is-input", "-i X -o X (issue 16: truncated X)",
            lambda f: tr(f, "-i", f.inputs / "same.txt", "-o", f.inputs / "same.txt"),
            "is the input file"),
        err("output-is-symlink-to-input", "-o a symlink to the input",
            lambda f: tr(f, "-i", f.inputs / "same-target.txt", "-o", f.inputs / "same-link.txt"),
            "is the input file"),
        err("output-in-missing-dir", "-o into a folder that does not exist",
            lambda f: tr(f, *small(f), "-o", f.out / "nodir" / "out.txt"), "--output", "nodir"),
        Case("tr-closed-stdin", "translate", "stdin closed (<&-, issue 16: traceback)",
             shell=lambda f: f"exec @s2s translate {q(f.base)} <&-",
             needles=("standard input is closed",), needs=("base",)),
        Case("tr-closed-stdout", "translate", "stdout closed (>&-, issue 16: traceback)",
             shell=lambda f: f"echo 'a b' | @s2s translate {q(f.base)} >&-",
             needles=("standard output is closed",), needs=("base",)),
        Case("tr-broken-pipe", "translate", "| head -n 1: ends quietly with 141",
             shell=lambda f: f"yes 'a b c' | head -n 30000 | @s2s translate {q(f.base)} "
                             "| head -n 1 >/dev/null; exit ${PIPESTATUS[2]}",
             expect=("ok-exit0",), ok_rc=141, check=stderr_lacks("error"), needs=("base",)),
        ok("empty-file", "empty.txt", "an empty input file"),
        ok("empty-lines", "empty-lines.txt", "three empty lines: three empty outputs"),
        ok("invalid-utf8", "bad-utf8.txt", "invalid UTF-8 lines: replaced, with a warning",
           check=stderr_has("invalid UTF-8")),
        ok("nul-bytes", "nul.txt", "NUL bytes inside lines"),
        ok("huge-line", "huge.txt", "a 1 MB line: truncated, with a warning",
           check=stderr_has("truncated")),
        Case("tr-long-line-alignments", "translate", "a 5,559-piece line, --max-src-len 0 "
             "--beam 5 --output-alignments (issue 16: hang)",
             lambda f: tr(f, "-i", f.inputs / "long.txt", "--max-src-len", "0", "--beam", "5",
                          "--output-alignments", "-o", f.out / "long.jsonl"),
             expect=("ok-exit0",), lines=lambda f: 1, output=lambda f: f.out / "long.jsonl",
             needs=("base",)),
        ok("gz-input", "small.txt.gz", "-i file.gz (issue 16: read compressed bytes)"),
        err("truncated-gz", "-i a truncated .gz",
            lambda f: tr(f, "-i", f.inputs / "truncated.txt.gz", "-o", f.out / "trunc.txt"),
            "reading", "truncated.txt.gz"),
        err("not-gzip", "-i plain text named .gz", inp("fake.txt.gz"), "fake.txt.gz"),
        err("output-over-model", "-o the checkpoint it translates with",
            lambda f: ["translate", f.out / "w" / "model.pt", *small(f), "-o",
                       f.out / "w" / "model.pt"], "model.pt",
            setup=lambda f: write(f.out / "w" / "model.pt",
                                  (f.base / "checkpoints" / "best.pt").read_bytes()),
            guard=lambda f: [f.out / "w" / "model.pt"]),
    ]


def evaluate_cases() -> list[Case]:
    return [
        Case("ev-empty-files", "evaluate", "evaluate empty empty (issue 16: traceback)",
             lambda f: ["evaluate", f.inputs / "empty.txt", f.inputs / "empty.txt"],
             needles=("no lines to score",)),
        Case("ev-line-count-mismatch", "evaluate", "10 hypotheses for 200 references",
             lambda f: ["evaluate", f.inputs / "tgt10.txt", f.data / "test.tgt"],
             needles=("line-aligned",)),
        Case("ev-invalid-utf8", "evaluate", "a hypotheses file with invalid UTF-8",
             lambda f: ["evaluate", f.inputs / "bad-utf8.txt", f.inputs / "bad-utf8.txt"],
             needles=("bad-utf8.txt", "UTF-8")),
        Case("ev-gz-hypotheses", "evaluate", "gzipped hypotheses",
             lambda f: ["evaluate", f.inputs / "test.tgt.gz", f.data / "test.tgt"],
             expect=("ok-exit0",), check=stdout_has("BLEU = 100.00")),
        Case("ev-closed-stdout", "evaluate", "evaluate with stdout closed (>&-)",
             shell=lambda f: f"@s2s evaluate {q(f.data / 'test.tgt')} {q(f.data / 'test.tgt')} "
                             ">&-", needles=("standard output",)),
    ]


def score_cases() -> list[Case]:
    def scores(*args) -> Callable[[Fixtures], list]:
        return lambda f: ["score", f.base, *[f.inputs / a if a.endswith(".txt") else a
                                             for a in args]]

    base = ("base",)
    return [
        Case("sc-line-count-mismatch", "score", "10 sources for 200 targets",
             lambda f: ["score", f.base, "-i", f.inputs / "src10.txt", "-r",
                        f.data / "test.tgt"], needles=("line-aligned",), needs=base),
        Case("sc-output-is-input", "score", "score -i X -r Y -o X",
             scores("-i", "score-src.txt", "-r", "tgt10.txt", "-o", "score-src.txt"),
             needles=("score-src.txt",), needs=base),
        Case("sc-closed-stdout", "score", "score with stdout closed (>&-)",
             shell=lambda f: f"@s2s score {q(f.base)} -i {q(f.inputs / 'src10.txt')} "
                             f"-r {q(f.inputs / 'tgt10.txt')} >&-",
             needles=("standard output is closed",), needs=base),
        Case("sc-bad-model", "score", "score with a checkpoint of random bytes",
             lambda f: ["score", f.ckpt / "random.pt", "-i", f.inputs / "src10.txt", "-r",
                        f.inputs / "tgt10.txt"], needles=("random.pt",), needs=("ckpts",)),
    ]


def average_cases() -> list[Case]:
    def into(*parts: str) -> Callable[[Fixtures], list]:
        return lambda f: ["average", f.avrun, "--last", "2", "-o", f.avrun.joinpath(*parts)]

    refused = ("inside a run's checkpoints/",)

    def guard(f: Fixtures) -> list[Path]:
        return [f.avrun]

    def alias(f: Fixtures) -> None:
        link = f.out / "alias"
        if not link.is_symlink():
            link.symlink_to(f.avrun / "checkpoints")

    def spm_copy(f: Fixtures) -> None:
        copy_run(f, "average-spm")

    base = ("base",)
    return [
        Case("av-into-last-pt", "average", "average -o RUN/checkpoints/last.pt (issue 16: "
             "replaced it)", into("checkpoints", "last.pt"), needles=refused, guard=guard,
             needs=base),
        Case("av-into-step-file", "average", "average -o RUN/checkpoints/step-0000040.pt",
             into("checkpoints", "step-0000040.pt"), needles=refused, guard=guard, needs=base),
        Case("av-through-symlink", "average", "average -o LINK/last.pt, LINK -> "
             "RUN/checkpoints", lambda f: ["average", f.avrun, "--last", "2", "-o",
                                           f.out / "alias" / "last.pt"],
             setup=alias, needles=refused, guard=guard, needs=base),
        Case("av-over-spm-model", "average", "average -o RUN/spm.model (the run's tokenizer)",
             lambda f: ["average", f.runs / "average-spm", "--last", "2", "-o",
                        f.runs / "average-spm" / "spm.model"], setup=spm_copy,
             needles=("spm.model",), guard=lambda f: [f.runs / "average-spm"], needs=base),
        Case("av-no-checkpoints", "average", "average a folder that is not a run",
             lambda f: ["average", f.data, "-o", f.out / "avg.pt"], needles=("step-N.pt",)),
        Case("av-corrupt-step-file", "average", "the newest step file is random bytes",
             lambda f: ["average", f.out / "av-corrupt", "--last", "2", "-o",
                        f.out / "avg-corrupt.pt"],
             setup=fake_run("av-corrupt", {20: "good", 50: "random.pt"}),
             needles=("step-0000050.pt",), needs=("ckpts",)),
        Case("av-code-step-file", "average", "a step file whose pickle runs os.mkdir",
             lambda f: ["average", f.out / "av-code", "--last", "2", "-o", f.out / "avg-code.pt"],
             setup=fake_run("av-code", {20: "good", 60: "code-average.pt"}),
             needles=("step-0000060.pt",), marker=lambda f: f.markers / "average",
             needs=("ckpts",)),
    ]


def resume_cases() -> list[Case]:
    def resume(name: str, *extra: str) -> Callable[[Fixtures], list]:
        return lambda f: ["train", "--resume", f.runs / name, "--quiet", *sets(*extra)]

    def own(name: str) -> Callable[[Fixtures], list[Path]]:
        return lambda f: [f.runs / name]

    def fresh(name: str) -> Callable[[Fixtures], None]:
        def setup(f: Fixtures) -> None:
            copy_run(f, name)
        return setup

    return [
        Case("resume-missing-run", "resume", "--resume a folder that does not exist",
             resume("nothere"), needles=("last.pt",)),
        Case("resume-corrupt-last", "resume", "--resume a run whose last.pt is random bytes",
             resume("resume-corrupt"), setup=damaged_run("resume-corrupt", "random.pt"),
             needles=("last.pt",), guard=own("resume-corrupt"), needs=("ckpts",)),
        Case("resume-code-in-last", "resume", "--resume a run whose last.pt runs os.mkdir",
             resume("resume-code"), setup=damaged_run("resume-code", "code-resume.pt"),
             needles=("refused",), marker=lambda f: f.markers / "resume",
             guard=own("resume-code"), needs=("ckpts",)),
        Case("resume-model-change", "resume", "--resume with --set model.hidden_size=64",
             resume("resume-shape", "model.hidden_size=64"), setup=fresh("resume-shape"),
             needles=("model.hidden_size",), guard=own("resume-shape"), needs=("base",)),
        Case("resume-over-existing-run", "resume", "train --run-dir an existing run",
             lambda f: train(f, "resume-existing"), setup=fresh("resume-existing"),
             needles=("already holds a trained run", "--resume"),
             guard=own("resume-existing"), needs=("base",)),
        Case("resume-without-last-pt", "resume", "--resume a run killed before last.pt was "
             "linked, with a killed write's .tmp (issue 16: dead end); after the average cases",
             lambda f: ["train", "--resume", f.runs / "resume-without-last",
                        *sets("train.max_steps=42", "train.threads=1")],
             setup=without_last_pt, expect=("ok-exit0",), check=without_last_pt_check,
             needs=("base",)),
    ]


def export_cases() -> list[Case]:
    def translate_export(name: str, *args: str) -> Callable[[Fixtures], list]:
        return lambda f: ["translate", f.out / name, *small(f), *args]

    def bad_manifest(target: Path) -> None:
        write(target / "manifest.json", "{")

    def no_graph(target: Path) -> None:
        (target / "step.onnx").unlink()

    def wrote_manifest(f: Fixtures, res: Result) -> list[Problem]:
        return [] if needs_export(f) == "" else [("unexpected", "no manifest.json written")]

    base = ("base",)
    return [
        Case("ex-export", "export", "export the toy run (the next cases need it)",
             lambda f: ["export", f.base, "-o", f.export], expect=("ok-exit0",),
             check=wrote_manifest, needs=base),
        Case("ex-translate-export", "export", "translate the exported folder",
             translate_export("export"), expect=("ok-exit0",), lines=lambda f: 3,
             skip=needs_export, needs=base),
        Case("ex-int8-on-export", "export", "translate the export with --precision int8",
             translate_export("export", "--precision", "int8"), needles=("--precision int8",),
             skip=needs_export, needs=base),
        Case("ex-manifest-not-json", "export", "an exported folder whose manifest.json is "
             "damaged", translate_export("export-bad-json"), needles=("manifest.json",),
             setup=damaged_export("export-bad-json", bad_manifest), skip=needs_export,
             needs=base),
        Case("ex-missing-graph", "export", "an exported folder without step.onnx",
             translate_export("export-no-graph"), needles=("export-no-graph",),
             setup=damaged_export("export-no-graph", no_graph), skip=needs_export, needs=base),
        Case("ex-output-under-a-file", "export", "export -o FILE/sub (a file where a folder "
             "belongs)", lambda f: ["export", f.base, "-o", f.inputs / "small.txt" / "sub"],
             needles=("small.txt",), needs=base),
        Case("ex-unwritable-dir", "export", "export into a folder that cannot be written",
             lambda f: ["export", f.base, "-o", unwritable(f) / "export-here"],
             needles=("export-here",), setup=lock, needs=("base", "mounts"),
             skip=lambda f: needs_mount("ro")(f) if os.geteuid() == 0 else ""),
    ]


def serve_cases() -> list[Case]:
    return [
        Case("sv-missing-model", "serve", "serve a model path that does not exist",
             lambda f: ["serve", f.out / "nothere.pt", "--host", "127.0.0.1"],
             runner=serve_unusable(), needles=("nothere.pt",), timeout=60, needs=("basic",)),
        Case("sv-damaged-model", "serve", "serve a checkpoint of random bytes",
             lambda f: ["serve", f.ckpt / "random.pt", "--host", "127.0.0.1"],
             runner=serve_unusable(), needles=("random.pt",), timeout=60, needs=("ckpts",)),
        Case("sv-port-in-use", "serve", "serve on a port another program holds",
             lambda f: ["serve", f.base, "--host", "127.0.0.1"], runner=serve_unusable(True),
             error_line=(), needles=("address already in use",), timeout=60, needs=("base",)),
        Case("sv-bad-requests", "serve", "malformed JSON, a wrong field, beam 0, too many lines; "
             "then SIGTERM", lambda f: ["serve", f.base, "--host", "127.0.0.1", "--max-lines",
                                        "5"], runner=serve_requests, expect=("ok-exit0",),
             timeout=180, needs=("base",)),
    ]


def signal_cases() -> list[Case]:
    def training(name: str, data: str) -> Callable[[Fixtures], list]:
        return lambda f: ["train", TOY, "--run-dir", f.runs / name, "--quiet",
                          *sets(f"data.dir={getattr(f, data)}", "train.threads=1",
                                "train.max_steps=400", "train.log_every=1",
                                "train.validate_every=1000", "train.checkpoint_every=1000")]

    return [
        Case("sig-int-training", "signals", "Ctrl-C (SIGINT) during training: saved, exit 0, "
             "resumable", training("sig-int-training", "data"),
             runner=signal_training(signal.SIGINT), expect=("ok-exit0",)),
        Case("sig-term-training-gz", "signals", "SIGTERM during training on gzipped data: "
             "saved, exit 0, resumable", training("sig-term-training-gz", "data_gz"),
             runner=signal_training(signal.SIGTERM), expect=("ok-exit0",)),
        Case("sig-int-translate", "signals", "Ctrl-C while translate waits on a pipe",
             lambda f: tr(f), runner=interrupted_translate, error_rc=130,
             error_line=("interrupted",), needles=("interrupted",), needs=("base",)),
    ]


def disk_cases() -> list[Case]:
    def dev_full(f: Fixtures) -> str:
        return NO_DEV_FULL

    return [
        Case("disk-train-final-checkpoint", "disk", "train on a 2 MB disk: every checkpoint "
             "fails (issue 16: traceback at the final one)",
             lambda f: ["train", TOY, "--run-dir", f.mnt / "full" / "run",
                        *sets(f"data.dir={f.data}", "train.threads=1", *BASE_STEPS)],
             needles=("writing checkpoint", "disk space"), check=full_disk_check,
             needs=("mounts",), skip=needs_mount("full"), timeout=300),
        Case("disk-translate-output-full", "disk", "translate -o /dev/full (issue 16: "
             "'reading' failed)", lambda f: tr(f, *small(f), "-o", "/dev/full"),
             needles=("writing /dev/full failed", "No space left"), skip=dev_full,
             needs=("base",)),
        Case("disk-score-output-full", "disk", "score -o /dev/full",
             lambda f: ["score", f.base, "-i", f.inputs / "src10.txt", "-r",
                        f.inputs / "tgt10.txt", "-o", "/dev/full"],
             needles=("/dev/full", "No space left"), skip=dev_full, needs=("base",)),
        Case("disk-average-full", "disk", "average -o a full disk",
             lambda f: ["average", f.avrun, "--last", "2", "-o", f.mnt / "tiny" / "avg.pt"],
             needles=("writing checkpoint", "avg.pt"), guard=lambda f: [f.avrun],
             needs=("base", "mounts"),
             skip=needs_mount("tiny")),
        Case("disk-export-full", "disk", "export -o a full disk",
             lambda f: ["export", f.base, "-o", f.mnt / "tiny" / "export"],
             needles=("No space left",), check=stderr_lacks("cannot be exported"),
             needs=("base", "mounts"), skip=needs_mount("tiny")),
    ]


def lexicon_cases() -> list[Case]:
    return [
        Case("lexicon-not-a-run", "lexicon", "s2s lexicon of a folder that is not a run",
             lambda f: ["lexicon", f.data], needles=("s2s train",)),
    ]


def cases() -> list[Case]:
    """Every case, in the order they run (the resume cases after the average ones: one of
    them continues the run that `s2s average` was aimed at)."""
    return [*config_cases(), *set_cases(), *env_cases(), *args_cases(), *data_cases(),
            *plugin_cases(), *checkpoint_cases(), *translate_cases(), *evaluate_cases(),
            *score_cases(), *average_cases(), *resume_cases(), *export_cases(),
            *serve_cases(), *signal_cases(), *disk_cases(), *lexicon_cases()]


# -- the report -----------------------------------------------------------------------------------


def command(case: Case, f: Fixtures) -> str:
    """The case's command as a user would type it ($T: the temporary folder)."""
    if case.shell is not None:
        text = case.shell(f).replace("@s2s", "s2s")
    else:
        assert case.argv is not None
        text = "s2s " + " ".join(q(a) for a in case.argv(f))
    if case.env:
        text = " ".join(f"{k}={v}" for k, v in case.env(f).items()) + " " + text
    return text.replace(str(f.root), "$T").replace(str(ROOT), "$REPO")


def report(outcomes: list[tuple[Case, str, str, Result]], f: Fixtures) -> int:
    print(f"\n{'case':<36} {'category':<10} {'exit':>5}  {'verdict':<12} command")
    for case, verdict, _, res in outcomes:
        shown = command(case, f)
        shown = shown if len(shown) <= 90 else shown[:87] + "..."
        print(f"{case.id:<36} {case.category:<10} {res.rc if res.rc is not None else '-':>5}  "
              f"{verdict:<12} {shown}")
    columns = (*PASSES, "skipped", *FAILS)
    print(f"\n{'category':<12} {'cases':>5} " + " ".join(f"{c:>11}" for c in columns))
    categories = list(dict.fromkeys(case.category for case, *_ in outcomes))
    for category in [*categories, "all"]:
        mine = [v for c, v, *_ in outcomes if category in ("all", c.category)]
        print(f"{category:<12} {len(mine):>5} " + " ".join(f"{mine.count(c):>11}"
                                                            for c in columns))
    failed = [(c, v, n) for c, v, n, _ in outcomes if v in FAILS]
    if failed:
        print(f"\n{len(failed)} FAIL(s):")
        for case, verdict, note in failed:
            print(f"  {case.id} [{verdict}] {case.title}\n      {note}")
    for need, why in f.broken.items():
        print(f"\n{need}: {why}")
    print(f"\n{'FAIL' if failed or f.broken else 'PASS'}: {len(outcomes)} cases, "
          f"{len(failed)} failed, {sum(v == 'skipped' for _, v, *_ in outcomes)} skipped")
    return 1 if failed or f.broken else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], metavar="CATEGORY|CASE",
                        help="run only these categories or case ids (repeatable, or "
                             "comma-separated)")
    parser.add_argument("--skip", action="append", default=[], metavar="CATEGORY|CASE",
                        help="leave these categories or case ids out (as --only)")
    parser.add_argument("--list", action="store_true", help="list the cases; run nothing")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds per case (some cases set their own) before it is a hang")
    args = parser.parse_args()
    every = cases()
    ids = [c.id for c in every]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    categories = list(dict.fromkeys(c.category for c in every))
    wanted, unwanted = ({w.strip() for item in given for w in item.split(",") if w.strip()}
                        for given in (args.only, args.skip))
    unknown = (wanted | unwanted) - set(categories) - set(ids)
    if unknown:
        parser.error(f"{', '.join(sorted(unknown))}: neither a category "
                     f"({', '.join(categories)}) nor a case id (--list shows them)")
    selected = [c for c in every if (not wanted or c.category in wanted or c.id in wanted)
                and c.category not in unwanted and c.id not in unwanted]
    if args.list:
        f = Fixtures(Path("$T"))
        for case in selected:
            print(f"{case.id:<36} {case.category:<10} {'/'.join(case.expect):<22} {case.title}"
                  f"\n    {command(case, f)}")
        counts = ", ".join(f"{c} {sum(x.category == c for x in selected)}" for c in categories)
        print(f"\n{len(selected)} cases: {counts}")
        return 0
    root = Path(tempfile.mkdtemp(prefix="s2s-bad-input-tour-"))
    f = Fixtures(root)
    print(f"s2s bad-input tour: {len(selected)} cases in {root} ({sys.executable}; "
          f"{'root' if os.geteuid() == 0 else 'not root'}; timeout {args.timeout:.0f} s)",
          flush=True)
    outcomes: list[tuple[Case, str, str, Result]] = []
    try:
        for i, case in enumerate(selected, 1):
            verdict, note, res = run_case(case, f, args.timeout)
            outcomes.append((case, verdict, note, res))
            rc = res.rc if res.rc is not None else "-"
            print(f"[{i:3d}/{len(selected)}] {case.id:<36} {case.category:<10} exit {rc!s:>4}  "
                  f"{verdict:<12} {res.seconds:6.1f}s  {note[:150]}", flush=True)
    except KeyboardInterrupt:
        print("interrupted: the report covers the cases run so far", file=sys.stderr)
    finally:
        unmount(f)
        locked = root / "out" / "locked"
        if locked.is_dir():
            locked.chmod(0o755)
        if args.keep:
            print(f"kept {root} (its tmpfs folders are unmounted)")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return report(outcomes, f)


if __name__ == "__main__":
    sys.exit(main())
