"""Data-parallel training under torchrun on the CPU (gloo): the same losses as one process with
the same global batch, one writer, exact resume after SIGKILL, SIGTERM saves once. Each test
starts torchrun on 127.0.0.1 (--standalone) with a bounded number of steps and a timeout."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from s2s import checkpoint

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 600  # seconds; a hung process group fails the test instead of hanging CI
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="this torch has no torch.distributed")


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


def _command(nproc: int, *args) -> list[str]:
    s2s = ["-m", "s2s", "train", *map(str, args), "--quiet"]
    if nproc == 1:
        return [sys.executable, *s2s]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", "--max-restarts=0", *s2s]


def train(nproc: int, run: Path, data: Path, *sets: str, resume: bool = False
          ) -> subprocess.CompletedProcess:
    where = ["--resume", run] if resume else ["configs/toy.yaml", "--run-dir", run,
                                              "--set", f"data.dir={data}"]
    args = [*where, *(x for s in sets for x in ("--set", s))]
    proc = subprocess.run(_command(nproc, *args), cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def start(nproc: int, run: Path, data: Path, *sets: str) -> subprocess.Popen:
    args = ["configs/toy.yaml", "--run-dir", run, "--set", f"data.dir={data}",
            *(x for s in sets for x in ("--set", s))]
    return subprocess.Popen(_command(nproc, *args), cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # kill_tree ends it and its ranks


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc), children first."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun and its ranks at once. torchrun starts each rank in a session of its
    own (start_new_session), so killing torchrun's process group would miss them: an orphaned
    rank would go on training into the run directory."""
    pids = _descendants(proc.pid)
    for pid in [proc.pid, *pids]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=TIMEOUT)
    deadline = time.monotonic() + TIMEOUT
    while any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in pids):
        assert time.monotonic() < deadline, "a rank outlived SIGKILL"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not path.exists():
        assert proc.poll() is None, f"ended before {path.name} appeared: {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def log_records(run: Path) -> list[dict]:
    lines = (run / "train_log.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def losses(run: Path) -> dict[int, float]:
    out: dict[int, float] = {}
    for r in log_records(run):
        if "train/loss" in r:
            assert r["step"] not in out, f"step {r['step']} logged twice"
            out[r["step"]] = r["train/loss"]
    return out


def final_params(run: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(checkpoint.step_file(run / "checkpoints", 200))["model"]


EQUAL = ["model.dropout=0", "train.max_steps=30", "train.log_every=1",
         "train.validate_every=30", "train.checkpoint_every=30"]


def test_two_processes_log_the_losses_of_one(toy_data, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    train(1, one, toy_data, *EQUAL)
    proc = train(2, two, toy_data, *EQUAL)
    single, ddp = losses(one), losses(two)
    assert sorted(ddp) == list(range(1, 31))  # each step once: only rank 0 logs
    for step, loss in single.items():
        assert ddp[step] == pytest.approx(loss, rel=1e-3), step
    assert single[30] < 0.8 * single[1]  # it learned, in both
    records = log_records(two)
    assert {r["world_size"] for r in records} == {2}
    assert {r["world_size"] for r in log_records(one)} == {1}
    assert proc.stderr.count("done: step 30") == 1  # one report, from rank 0
    # one run directory, one last.pt, which translate uses
    ckpts = two / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == \
        sorted(["best.pt", "last.pt", checkpoint.step_file(ckpts, 30).name])
    payload = checkpoint.load(two / "checkpoints" / "last.pt")
    assert payload["world_size"] == 2 and len(payload["rng_ranks"]) == 2
    out = subprocess.run([sys.executable, "-m", "s2s", "translate", two], cwd=ROOT,
                         input=b"a b c\n\nd e f g\n", capture_output=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.decode().splitlines()) == 3


def test_gradients_of_shares_sum_to_the_global_batch(toy_run):
    """What each rank computes (its share, divided by the global batch's tokens), summed,
    is the single-process gradient: deferred weight gradients included."""
    from s2s import config
    from s2s.batching import collate
    from s2s.model import Seq2Seq

    cfg = config.from_dict(checkpoint.load(checkpoint.resolve(toy_run))["config"],
                           ["model.dropout=0"])
    torch.manual_seed(0)
    model = Seq2Seq(cfg.model, 20, 20)
    g = torch.Generator().manual_seed(1)
    src = [torch.randint(4, 20, (int(n),), generator=g).tolist() for n in
           torch.randint(1, 9, (7,), generator=g)]
    tgt = [torch.randint(4, 20, (int(n),), generator=g).tolist() for n in
           torch.randint(1, 9, (7,), generator=g)]
    tokens = sum(len(t) + 1 for t in tgt)

    def grads(rows: list[int]) -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        b = collate([src[i] for i in rows], [tgt[i] for i in rows])
        loss, _ = model.loss(b.src, b.src_lengths, b.tgt_in, b.tgt_out)
        (loss / tokens).backward()
        return [p.grad.clone() for p in model.parameters()]

    whole = grads(list(range(7)))
    shares = [grads(list(range(7))[r::3]) for r in range(3)]  # three ranks
    for w, *parts in zip(whole, *shares):
        torch.testing.assert_close(sum(parts), w, rtol=1e-5, atol=1e-7)


KILL = ["train.max_steps=200", "train.checkpoint_every=20", "train.validate_every=100",
        "train.log_every=10"]


def test_killed_ddp_run_resumes_bitwise(toy_data, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    train(2, whole, toy_data, *KILL)
    proc = start(2, killed, toy_data, *KILL)
    try:
        wait_for(checkpoint.step_file(killed / "checkpoints", 60), proc)
    finally:
        kill_tree(proc)  # torchrun and both ranks, mid-run
    assert not checkpoint.step_file(killed / "checkpoints", 200).exists()
    train(2, killed, toy_data, resume=True)
    a, b = final_params(whole), final_params(killed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_sigterm_to_torchrun_saves_once_and_stops_every_rank(toy_data, tmp_path):
    run = tmp_path / "run"
    proc = start(2, run, toy_data, "train.max_steps=100000", "train.checkpoint_every=20",
                 "train.validate_every=100000")
    try:
        wait_for(checkpoint.step_file(run / "checkpoints", 20), proc)
        proc.send_signal(signal.SIGTERM)  # to torchrun, which passes it to the ranks
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    assert err.count("SIGTERM: stopped after step") == 1, err[-3000:]
    step = checkpoint.load(run / "checkpoints" / "last.pt")["step"]
    assert step >= 20 and checkpoint.step_file(run / "checkpoints", step).exists()
    train(2, run, toy_data, "train.max_steps=" + str(step + 10), resume=True)
    assert checkpoint.load(run / "checkpoints" / "last.pt")["step"] == step + 10


@pytest.mark.parametrize("env, message", [
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' but WORLD_SIZE, RANK or LOCAL_RANK is missing"),
    ({"WORLD_SIZE": "2"}, "RANK or LOCAL_RANK is missing"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, "cannot join the gloo process group of 2 processes"),
])
def test_a_broken_torchrun_environment_is_one_clear_error(monkeypatch, env, message):
    from s2s.errors import ConfigError
    from s2s.training import distributed

    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        distributed.join(distributed.from_env(), torch.device("cpu"))


def test_a_parameter_no_rank_used_keeps_no_gradient(monkeypatch):
    """The gradient sum leaves a parameter without a gradient on every rank at None (the
    optimizer skips it, as in one process); one used on some rank gets the sum."""
    from s2s.training.distributed import World

    calls = []
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t: calls.append(t) or t.mul_(2))
    used, unused = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    used.grad = torch.tensor([1.0, 2.0, 3.0])
    (nll,) = World(0, 2).sum_gradients([used, unused], [5.0])
    assert len(calls) == 1  # one all-reduce for everything
    assert torch.equal(used.grad, torch.tensor([2.0, 4.0, 6.0])) and unused.grad is None
    assert nll == 10.0


def test_a_plugin_cell_trains_in_every_rank(toy_data, tmp_path):
    """The example third-party cell (plugins/s2s-lnlstm, installed by the README's set-up) is
    found through its entry point in each rank; the ranks' gradients sum as for built-ins."""
    pytest.importorskip("s2s_lnlstm")
    run = tmp_path / "plugin"
    train(2, run, toy_data, "model.cell=lnlstm", "train.max_steps=5", "train.validate_every=5",
          "train.checkpoint_every=5", "train.valid_bleu=false", "train.metric=loss")
    payload = checkpoint.load(run / "checkpoints" / "last.pt")
    assert payload["cell"]["name"] == "lnlstm" and payload["world_size"] == 2
    assert payload["step"] == 5
