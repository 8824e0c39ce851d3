"""Precision chosen by the hardware (s2s.precision), int8 inference (s2s.ops.quantized) and the
GEMM backend measured per CPU."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from s2s import checkpoint, config, precision
from s2s.cells.gru import GRUCell
from s2s.cells.lstm import LSTMCell
from s2s.cli import main
from s2s.ops import gemm
from s2s.translate import Translator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AVX2 = frozenset({"avx", "avx2", "fma"})
SPR = frozenset({"avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"})


@pytest.fixture
def cpu(monkeypatch):
    """cpu(flags, onednn_bf16=True): pretend to be a CPU with these /proc/cpuinfo flags."""
    def _set(flags, onednn_bf16=True):
        monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(precision, "_onednn_bf16", lambda: onednn_bf16)
        monkeypatch.setattr(precision, "_said", set())
    return _set


def test_auto_is_bf16_only_where_the_cpu_has_it_natively(cpu):
    cpu(AVX2)
    chosen, message = precision.decide("auto", "cpu", what="train.precision")
    assert chosen == "fp32"
    assert "train.precision auto: fp32" in message and "no native bf16" in message
    cpu(SPR)
    chosen, message = precision.decide("auto", "cpu")
    assert chosen == "bf16" and "amx_bf16" in message and "avx512_bf16" in message
    cpu({"avx512f", "avx512bw"})  # AVX-512 without bf16 (Skylake, Zen 3 has none at all)
    assert precision.decide("auto")[0] == "fp32"
    cpu({"asimd", "bf16"})  # Arm with the BF16 extension
    assert precision.decide("auto")[0] == "bf16"
    cpu(SPR, onednn_bf16=False)  # the flags, but a torch whose oneDNN cannot use them
    chosen, message = precision.decide("auto")
    assert chosen == "fp32" and "oneDNN reports no bf16" in message


def test_explicit_choices_are_kept_and_emulated_bf16_warns_once(cpu, caplog):
    cpu(AVX2)
    assert precision.decide("fp32") == ("fp32", "")
    assert precision.decide("int8") == ("int8", "")
    with caplog.at_level(logging.INFO, logger="s2s"):
        assert precision.resolve("bf16", what="--precision") == "bf16"
        assert precision.resolve("bf16", what="--precision") == "bf16"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "emulated" in warnings[0].getMessage() and "--precision auto" in warnings[0].getMessage()
    cpu(SPR)
    assert precision.decide("bf16") == ("bf16", "")
    with pytest.raises(ValueError, match="unknown precision"):
        precision.decide("fp16")


def test_auto_is_the_default_and_every_shipped_recipe_uses_it():
    assert config.TrainConfig().precision == "auto"
    for name in ("multi30k-en-de.yaml", "peer-matched.yaml"):
        assert config.load(os.path.join(ROOT, "configs", name)).train.precision == "auto"


def _train_toy(run, toy_data, *extra):
    from s2s.training import train

    cfg = config.load(os.path.join(ROOT, "configs", "toy.yaml"),
                      [f"data.dir={toy_data}", "train.max_steps=4", "train.checkpoint_every=2",
                       "train.validate_every=4", "train.valid_bleu=false", "train.metric=loss",
                       *extra])
    train(cfg, run, console=False)
    return checkpoint.load(run / "checkpoints" / "last.pt")


def test_training_stores_what_auto_chose(tmp_path, toy_data, cpu, monkeypatch):
    cpu(AVX2)
    payload = _train_toy(tmp_path / "a", toy_data, "train.precision=auto")
    assert payload["precision"] == "fp32" and payload["config"]["train"]["precision"] == "auto"
    cpu(SPR)  # a CPU with native bf16: the same recipe trains under bf16 autocast
    seen = []
    real = precision.compute
    monkeypatch.setattr(precision, "compute",
                        lambda p, *a, **k: (seen.append(p), real(p, *a, **k))[1])
    payload = _train_toy(tmp_path / "b", toy_data, "train.precision=auto")
    assert payload["precision"] == "bf16" and set(seen) == {"bf16"}


def test_resume_on_a_cpu_that_chooses_otherwise_says_so(tmp_path, toy_data, cpu, monkeypatch):
    from s2s.training import Trainer, resume

    cpu(SPR)
    run = tmp_path / "run"
    _train_toy(run, toy_data, "train.precision=auto")
    cpu(AVX2)
    messages = []
    monkeypatch.setattr(Trainer, "_say", lambda self, m, level=None: messages.append(m))
    resume(run, overrides=["train.max_steps=6"], console=False)
    assert any("trained in bf16 so far and continues in fp32" in m for m in messages)
    assert checkpoint.load(run / "checkpoints" / "last.pt")["precision"] == "fp32"


# -- int8 ------------------------------------------------------------------------------------------
def test_int8_linear_is_close_to_float32_and_packs_each_weight_once():
    torch.manual_seed(0)
    x, w, b = torch.randn(33, 96), torch.randn(200, 96) * 0.1, torch.randn(200)
    ref = F.linear(x, w, b)
    cache: dict = {}
    with torch.no_grad(), gemm.int8(cache):
        out = gemm.linear(x, w, b)
        again = gemm.linear(x, w, b)  # the packed weight is reused
    assert len(cache) == 1
    assert not torch.equal(out, ref)  # really int8
    assert (out - ref).norm() / ref.norm() < 0.03  # 7-bit inputs without VNNI: ~1.9%
    assert torch.equal(again, out)
    with torch.no_grad(), gemm.int8(cache):
        w.mul_(2)  # an in-place change re-packs the weight
        doubled, ref = gemm.linear(x, w, b), F.linear(x, w, b)
    assert (doubled - ref).norm() / ref.norm() < 0.03
    with gemm.int8(cache):  # autograd on: float32 products, gradients as usual
        wg = w.clone().requires_grad_()
        torch.testing.assert_close(gemm.linear(x, wg, b), F.linear(x, wg, b))
        assert gemm.linear(x, wg, b).requires_grad


def test_int8_linear_cat_is_one_product_over_the_concatenation():
    torch.manual_seed(1)
    xs = [torch.randn(8, 20), torch.randn(8, 30)]
    ws = [torch.randn(40, 20) * 0.1, torch.randn(40, 30) * 0.1]
    bs = [torch.randn(40), torch.randn(40)]
    cache: dict = {}
    with torch.no_grad(), gemm.int8(cache):
        out = gemm.linear_cat(xs, ws, bs)
        whole = gemm.linear(torch.cat(xs, 1), torch.cat(ws, 1), bs[0] + bs[1])
    torch.testing.assert_close(out, whole)
    ref = F.linear(xs[0], ws[0], bs[0]) + F.linear(xs[1], ws[1], bs[1])
    assert (out - ref).norm() / ref.norm() < 0.03


def test_gru_linear_step_is_torch_gru_cell_math():
    torch.manual_seed(2)
    cell = GRUCell(12, 10)
    x, h = torch.randn(4, 12), torch.randn(4, 10)
    with torch.no_grad():
        ref, _ = cell.step(x, (h,))
        ours, _ = cell._linear_step(x, (h,))
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("cls", [LSTMCell, GRUCell])
def test_cell_steps_use_int8_products_inside_the_context(cls):
    torch.manual_seed(3)
    cell = cls(24, 32)
    state = cell.initial_state(5, torch.device("cpu"), torch.float32)
    x = torch.randn(5, 24)
    cache: dict = {}
    with torch.no_grad():
        ref, _ = cell.step(x, state)
        with gemm.int8(cache):
            out, _ = cell.step(x, state)
    assert cache, "the cell's weights were not packed: its step bypassed s2s.ops.gemm"
    assert (out - ref).abs().max() < 0.05


@pytest.mark.slow
def test_translate_and_score_in_int8_stay_close_to_fp32(toy_run, tmp_path):
    import synthetic

    lines = synthetic.sentences(60, seed=3)
    translator = Translator.from_run(toy_run)
    fp32 = translator.translate(lines, precision="fp32")
    int8 = translator.translate(lines, precision="int8")
    assert len(int8) == len(lines)
    same = sum(a == b for a, b in zip(fp32, int8))
    assert same >= 0.8 * len(lines), f"only {same}/{len(lines)} int8 translations match fp32"
    ref = translator.score(lines, fp32, precision="fp32")
    ours = translator.score(lines, fp32, precision="int8")
    assert ours != ref
    gaps = [abs(a - b) for a, b in zip(ours, ref)]  # log-probabilities of whole lines
    assert sum(gaps) / len(gaps) < 0.02 and max(gaps) < 0.2

    src = tmp_path / "src.txt"  # one output per line: empty and badly encoded lines too
    src.write_bytes("\n".join(lines[:5]).encode() + b"\n\n\xff\xfe a b\n")
    result = CliRunner().invoke(main, ["translate", str(toy_run), "-i", str(src), "--precision",
                                       "int8", "--beam", "3"])
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 7
    clean = tmp_path / "clean.txt"
    clean.write_text("\n".join(lines[:5]) + "\n\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["score", str(toy_run), "-i", str(clean), "-r",
                                       str(clean), "--precision", "int8"])
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 6


def test_translate_says_what_auto_chose(toy_run):
    code = ("import sys; from s2s.cli import main; sys.argv = ['s2s', 'translate', sys.argv[1]]; "
            "main()")
    out = subprocess.run([sys.executable, "-c", code, str(toy_run)], input="a b c\n",
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 1
    native, _ = precision.native_bf16("cpu")
    assert f"--precision auto: {'bf16' if native else 'fp32'}" in out.stderr


# -- the GEMM backend ------------------------------------------------------------------------------
def _backend_in_subprocess(env: dict):
    code = ("import logging; logging.basicConfig(level=logging.INFO); from s2s.ops import gemm; "
            "print(gemm.backend())")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip(), out.stderr


@pytest.mark.skipif(gemm._onednn_op() is None, reason="this torch has no oneDNN")
def test_backend_is_measured_once_per_machine_and_overridable(tmp_path):
    env = {"S2S_CACHE": str(tmp_path), "S2S_GEMM": "auto"}
    chosen, err = _backend_in_subprocess(env)
    assert chosen in gemm.BACKENDS and "measured once" in err
    files = list((tmp_path / "gemm").glob("*.json"))
    assert len(files) == 1
    record = json.loads(files[0].read_text())
    assert record["backend"] == chosen and record["onednn_over_mkl"] > 0
    # a second process reads the measurement instead of measuring again
    files[0].write_text(json.dumps({**record, "backend": "torch"}))
    assert _backend_in_subprocess(env) == ("torch", "")
    files[0].write_text(json.dumps({**record, "backend": "onednn"}))
    assert _backend_in_subprocess(env)[0] == "onednn"
    files[0].write_text("{not json")  # a damaged record: measured again
    assert _backend_in_subprocess(env)[0] in gemm.BACKENDS
    for forced in gemm.BACKENDS:
        assert _backend_in_subprocess({**env, "S2S_GEMM": forced})[0] == forced


def test_use_forces_a_backend_and_products_stay_equal():
    torch.manual_seed(4)
    x, w, b = torch.randn(6, 9), torch.randn(5, 9), torch.randn(5)
    outs = {}
    for name in gemm.BACKENDS:
        with gemm.use(name):
            assert gemm.backend() == (name if gemm._onednn_op() is not None else "torch")
            outs[name] = gemm.linear(x, w, b)
    torch.testing.assert_close(outs["onednn"], outs["torch"])
    with pytest.raises(ValueError, match="unknown GEMM backend"):
        with gemm.use("blas"):
            pass


def test_prefer_keeps_a_runs_backend_unless_s2s_gemm_fixes_one(monkeypatch):
    saved = gemm._op
    try:
        monkeypatch.setenv("S2S_GEMM", "auto")
        assert gemm.prefer("torch") and gemm.backend() == "torch"
        if gemm._onednn_op() is not None:
            assert gemm.prefer("onednn") and gemm.backend() == "onednn"
        assert not gemm.prefer("blas")
        monkeypatch.setenv("S2S_GEMM", "onednn")
        gemm._op = gemm._onednn_op()
        if gemm._op is not None:
            assert not gemm.prefer("torch") and gemm.backend() == "onednn"
    finally:
        gemm._op = saved


def test_checkpoints_record_the_gemm_backend(tmp_path, toy_data):
    payload = _train_toy(tmp_path / "run", toy_data)
    assert payload["gemm"] == gemm.backend()
