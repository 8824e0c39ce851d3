"""fused-lstm: the same math as lstm (outputs and gradients), interchangeable weights."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from s2s.cells.fused import kernels
from s2s.cells.fused.lstm import FusedLSTMCell, _CompiledPointwise, _CompiledSequence, _Sequence
from s2s.cells.lstm import LSTMCell, LSTMPointwise


def _pair(inp=5, hid=4):
    torch.manual_seed(0)
    fused = FusedLSTMCell(inp, hid).double()
    plain = LSTMCell(inp, hid).double()
    plain.load_state_dict(fused.state_dict())
    return fused, plain


def test_forward_outputs_and_gradients_equal_lstm():
    fused, plain = _pair()
    x = torch.randn(3, 6, 5, dtype=torch.double, requires_grad=True)
    lengths = torch.tensor([6, 2, 4])
    h0 = torch.randn(3, 4, dtype=torch.double)
    c0 = torch.randn(3, 4, dtype=torch.double)
    results = []
    for cell in (fused, plain):
        out, (h, c) = cell(x, lengths, (h0, c0))
        weights = torch.linspace(-1, 1, 4, dtype=torch.double)
        loss = (out * weights).sum() + 2 * h.sum() + 3 * c.sum()
        grads = torch.autograd.grad(loss, [x, *cell.parameters()])
        results.append((out, h, c, grads))
    (o1, h1, c1, g1), (o2, h2, c2, g2) = results
    torch.testing.assert_close(o1, o2)
    torch.testing.assert_close(h1, h2)
    torch.testing.assert_close(c1, c2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)
    assert o1[1, 2:].abs().max() == 0  # padding is zero


def test_step_equals_lstm_step_with_gradients():
    fused, plain = _pair()
    x = torch.randn(3, 5, dtype=torch.double, requires_grad=True)
    state = (torch.randn(3, 4, dtype=torch.double), torch.randn(3, 4, dtype=torch.double))
    h1, (_, c1) = fused.step(x, state)
    h2, (_, c2) = plain.step(x, state)
    torch.testing.assert_close(h1, h2)
    torch.testing.assert_close(c1, c2)
    g1 = torch.autograd.grad(h1.sum() + c1.pow(2).sum(), [x, *fused.parameters()])
    g2 = torch.autograd.grad(h2.sum() + c2.pow(2).sum(), [x, *plain.parameters()])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_gradcheck_sequence_and_pointwise():
    fused, _ = _pair(3, 2)
    x = torch.randn(2, 4, 3, dtype=torch.double, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.double)
    h0 = torch.randn(2, 2, dtype=torch.double, requires_grad=True)
    c0 = torch.randn(2, 2, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: _Sequence.apply(a[0], mask, *a[1:]),
                                    (x, h0, c0, *fused.parameters()))
    gates = torch.randn(2, 8, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(LSTMPointwise.apply, (gates, c0))


# -- the pure-PyTorch path (_Sequence): gradients as the compiled path gives them ---------------


@pytest.fixture
def pure_pytorch(monkeypatch):
    """fused-lstm's sequences take the pure-PyTorch path (_Sequence), as where the compiled
    kernels cannot be used."""
    monkeypatch.setattr(kernels, "usable", lambda *tensors, bf16=False: False)


def _sequence_gradients(out: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple:
    """What _Sequence.backward itself returns for these outputs (before autograd drops or
    accumulates anything), one entry per input of _Sequence.forward."""
    assert out.grad_fn.name() == "_SequenceBackward"  # the pure-PyTorch path ran
    return out.grad_fn.apply(torch.ones_like(out), torch.ones_like(h), torch.ones_like(c))


def test_pure_pytorch_path_with_frozen_weights_gives_input_gradients_only(pure_pytorch):
    fused, plain = _pair(5, 4)
    for cell in (fused, plain):
        cell.weight_ih.requires_grad_(False)
        cell.weight_hh.requires_grad_(False)
    x = torch.randn(3, 6, 5, dtype=torch.double, requires_grad=True)
    lengths = torch.tensor([6, 2, 4])
    h0 = torch.randn(3, 4, dtype=torch.double, requires_grad=True)
    c0 = torch.randn(3, 4, dtype=torch.double, requires_grad=True)
    results = []
    for cell in (fused, plain):
        out, (h, c) = cell(x, lengths, (h0, c0))
        loss = (out * torch.linspace(-1, 1, 4, dtype=torch.double)).sum() + 2 * h.sum() \
            + 3 * c.pow(2).sum()
        results.append(torch.autograd.grad(loss, [x, h0, c0, cell.bias_ih, cell.bias_hh]))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)
    out, (h, c) = fused(x, lengths, (h0, c0))
    d_x, _, d_h0, d_c0, d_w_ih, d_w_hh, d_b_ih, d_b_hh = _sequence_gradients(out, h, c)
    assert d_w_ih is None and d_w_hh is None  # not computed for frozen weights
    assert all(g is not None for g in (d_x, d_h0, d_c0, d_b_ih, d_b_hh))
    out, (h, c) = fused(x.detach(), lengths)  # no initial state, x without gradient
    grads = _sequence_gradients(out, h, c)
    assert [g is None for g in grads] == [True] * 6 + [False] * 2  # the biases' only


def test_pure_pytorch_path_gives_each_bias_its_own_gradient(pure_pytorch):
    fused, _ = _pair(5, 4)
    x, lengths = torch.randn(3, 6, 5, dtype=torch.double), torch.tensor([6, 2, 4])
    out, (h, c) = fused(x, lengths)
    d_b_ih, d_b_hh = _sequence_gradients(out, h, c)[6:]
    assert d_b_ih is not d_b_hh and d_b_ih.data_ptr() != d_b_hh.data_ptr()
    torch.testing.assert_close(d_b_ih, d_b_hh)
    out, (h, c) = fused(x, lengths)
    (out.sum() + h.sum()).backward()
    b_ih, b_hh = fused.bias_ih.grad, fused.bias_hh.grad
    torch.testing.assert_close(b_ih, b_hh)
    b_ih.add_(1.0)  # an in-place update of one leaves the other alone
    torch.testing.assert_close(b_ih - 1.0, b_hh)


def test_weights_interchangeable_with_torch_lstm():
    torch.manual_seed(1)
    ref = torch.nn.LSTM(5, 4, batch_first=True)
    fused = FusedLSTMCell(5, 4)
    fused.load_state_dict({k.removesuffix("_l0"): v for k, v in ref.state_dict().items()})
    x = torch.randn(2, 7, 5)
    out, (h, c) = fused(x, torch.tensor([7, 7]))
    ref_out, (ref_h, ref_c) = ref(x)
    torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(h, ref_h[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(c, ref_c[0], atol=1e-6, rtol=1e-5)


def test_bf16_autocast_runs_and_stays_close():
    torch.manual_seed(2)
    fused = FusedLSTMCell(8, 8)
    x = torch.randn(4, 5, 8)
    lengths = torch.tensor([5, 3, 1, 4])
    full, _ = fused(x, lengths)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half, (h, c) = fused(x, lengths)
        step_h, _ = fused.step(x[:, 0], fused.initial_state(4, x.device, torch.float32))
    assert half.dtype == torch.bfloat16 and step_h.dtype == torch.bfloat16
    assert (half.float() - full).abs().max() < 0.05
    half.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in fused.parameters())


@pytest.mark.parametrize("attention", ["general", "bahdanau"])
def test_model_with_fused_matches_model_with_lstm(attention):
    from s2s.config import ModelConfig
    from s2s.model import Seq2Seq

    models = []
    for cell in ("fused-lstm", "lstm"):
        torch.manual_seed(3)
        models.append(Seq2Seq(ModelConfig(cell=cell, attention=attention, emb_size=8,
                                          hidden_size=8, dropout=0.0), 11, 13).double())
    models[0].load_state_dict(models[1].state_dict())
    src = torch.randint(4, 11, (3, 6))
    lengths = torch.tensor([6, 4, 2])
    tgt = torch.randint(4, 13, (3, 5))
    losses = [m.loss(src, lengths, tgt, tgt)[0] for m in models]
    torch.testing.assert_close(losses[0], losses[1])
    grads = [torch.autograd.grad(loss, list(m.parameters())) for loss, m in zip(losses, models)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


# -- the compiled kernels (float32 CPU): same results as the pure-PyTorch path --------------------

needs_kernels = pytest.mark.skipif(kernels.ops() is None,
                                   reason="fused-lstm kernels not built here")


def _float_pair(inp, hid):
    torch.manual_seed(1)
    fused = FusedLSTMCell(inp, hid)
    plain = LSTMCell(inp, hid)
    plain.load_state_dict(fused.state_dict())
    return fused, plain


# the CPU features each register-tiled build needs (lstm_kernels.cpp's cpu_isa)
PANEL_FEATURES = {"avx512": "avx512f", "avx2": "avx2 and fma"}


def _use_products(products: str, monkeypatch) -> None:
    """Select a sequence-kernel product path for one test; skip, naming the CPU feature that
    is missing, if this CPU cannot run it (never test another path in its place)."""
    monkeypatch.setenv("S2S_FUSED_PANELS", products)
    runs = kernels.panel_path()
    if runs != products:
        from s2s.ops.runtime import cpu_kind

        needed = PANEL_FEATURES.get(products, products)
        pytest.skip(f"{products} panels need a CPU with {needed}; this one is {cpu_kind()} "
                    f"(it would run {runs} instead)")


@needs_kernels
def test_the_best_panel_build_the_cpu_has_is_the_default(monkeypatch):
    from s2s.ops.runtime import cpu_flags

    monkeypatch.delenv("S2S_FUSED_PANELS", raising=False)
    flags = cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags to compare with")
    expected = "avx512" if "avx512f" in flags else "avx2" if {"avx2", "fma"} <= flags \
        else "gemm"
    assert kernels.panel_path() == expected
    monkeypatch.setenv("S2S_FUSED_PANELS", "0")
    assert kernels.panel_path() == "gemm"


@pytest.fixture
def threads():
    """Sets torch's thread count for one test (the compiled sequence kernels split the hidden
    units across threads) and restores it."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@needs_kernels
@pytest.mark.parametrize("hid, n_threads, batch", [
    (16, 2, 5), (160, 2, 5), (200, 3, 5),  # partial blocks of units; 1, 2 and 3 threads
    (64, 1, 5), (128, 2, 13), (256, 2, 20),  # whole blocks
])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("initial", ["given", "zero"])
@pytest.mark.parametrize("products", list(kernels.PANEL_BUILDS))
def test_compiled_sequence_equals_pure_pytorch_path(hid, n_threads, batch, padded, initial,
                                                    products, threads, monkeypatch):
    """Every product path the CPU runs: the register-tiled panels (AVX-512, AVX2+FMA) and
    oneDNN's products; a build the CPU cannot run is skipped, saying so."""
    _use_products(products, monkeypatch)
    threads(n_threads)
    torch.manual_seed(2)
    time, inp = 7, 70  # 70: products in 64-column panels plus a remainder
    lengths = torch.randint(1, time + 1, (batch,)) if padded else torch.full((batch,), time)
    lengths[0] = time
    x = torch.randn(batch, time, inp, requires_grad=True)
    mask = (torch.arange(time)[None] < lengths[:, None]).float()
    given = initial == "given"  # else: no initial state, as FusedLSTMCell passes it (h0_zero)
    h0 = (torch.randn if given else torch.zeros)(batch, hid).requires_grad_(given)
    c0 = (torch.randn if given else torch.zeros)(batch, hid).requires_grad_(given)
    fused, _ = _float_pair(inp, hid)
    weights = [p.detach().clone().requires_grad_() for p in
               (fused.weight_ih, fused.weight_hh, fused.bias_ih, fused.bias_hh)]
    wrt = [x, h0, c0, *weights] if given else [x, *weights]
    results = []
    for fn, extra in ((_Sequence, ()), (_CompiledSequence, (not given,))):
        out, h, c = fn.apply(x, mask, h0, c0, *weights, *extra)
        loss = (out * torch.linspace(-1, 1, hid)).sum() + 2 * h.sum() + 3 * c.pow(2).sum()
        results.append((out, h, c, *torch.autograd.grad(loss, wrt)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    out = results[1][0]
    for b, n in enumerate(lengths.tolist()):
        assert out[b, n:].abs().sum() == 0  # padding is zero


@needs_kernels
@pytest.mark.parametrize("case", ["state_only_loss", "h0_grad_only", "frozen_weights",
                                  "empty_time", "empty_batch"])
@pytest.mark.parametrize("products", list(kernels.PANEL_BUILDS))
def test_compiled_sequence_edge_cases_match_pure_pytorch_path(case, products, threads,
                                                              monkeypatch):
    """Losses that ignore the outputs, gradients for h0 alone, frozen weights, T = 0 and B = 0,
    on every product path the CPU runs (hidden 128, 2 threads)."""
    _use_products(products, monkeypatch)
    threads(2)
    torch.manual_seed(4)
    batch = 0 if case == "empty_batch" else 7
    time = 0 if case == "empty_time" else 5
    inp, hid = 70, 128
    x = torch.randn(batch, time, inp, requires_grad=True)
    mask = torch.ones(batch, time)
    h0 = torch.randn(batch, hid, requires_grad=True)
    c0 = torch.randn(batch, hid, requires_grad=case != "h0_grad_only")
    fused, _ = _float_pair(inp, hid)
    frozen = case == "frozen_weights"
    weights = [p.detach().clone().requires_grad_(not (frozen and i < 2)) for i, p in
               enumerate((fused.weight_ih, fused.weight_hh, fused.bias_ih, fused.bias_hh))]
    wrt = [t for t in (x, h0, c0, *weights) if t.requires_grad]
    results = []
    for fn, extra in ((_Sequence, ()), (_CompiledSequence, (False,))):
        out, h, c = fn.apply(x, mask, h0, c0, *weights, *extra)
        loss = 2 * h.sum() + 3 * c.pow(2).sum()
        if case != "state_only_loss":
            loss = loss + (out * torch.linspace(-1, 1, hid)).sum()
        grads = torch.autograd.grad(loss, wrt, allow_unused=True)
        results.append((out, h, c, *[torch.zeros(()) if g is None else g for g in grads]))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_a_subclass_with_its_own_initial_state_keeps_it():
    """fused-lstm skips step 0's recurrent product only for its own (zero) initial state."""
    class Primed(FusedLSTMCell):
        def initial_state(self, batch_size, device, dtype):
            return (torch.full((batch_size, self.hidden_size), 0.5, device=device, dtype=dtype),
                    torch.full((batch_size, self.hidden_size), -0.25, device=device, dtype=dtype))

    torch.manual_seed(5)
    cell = Primed(6, 64)
    x = torch.randn(3, 4, 6)
    out, (h, c) = cell(x, torch.tensor([4, 4, 2]))
    state = cell.initial_state(3, x.device, x.dtype)
    ref_out, (ref_h, ref_c) = cell(x, torch.tensor([4, 4, 2]), state)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(h, ref_h)


@needs_kernels
def test_compiled_pointwise_equals_pure_pytorch_and_is_used():
    torch.manual_seed(3)
    gates = torch.randn(4, 4 * 16, requires_grad=True)
    c_prev = torch.randn(4, 16, requires_grad=True)
    results = []
    for fn in (LSTMPointwise, _CompiledPointwise):
        h, c = fn.apply(gates, c_prev)
        results.append((h, c, *torch.autograd.grad((h * 1.5).sum() + c.pow(2).sum(),
                                                   [gates, c_prev])))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    fused, plain = _float_pair(5, 16)
    x = torch.randn(4, 5)
    h, (_, c) = fused.step(x, (torch.zeros(4, 16), torch.zeros(4, 16)))
    assert h.grad_fn.name() == "_CompiledPointwiseBackward"
    h2, (_, c2) = plain.step(x, (torch.zeros(4, 16), torch.zeros(4, 16)))
    torch.testing.assert_close(h, h2, rtol=1e-5, atol=1e-6)


def _run_isolated(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=600)


FALLBACK_PROBE = """
import logging, torch
logging.basicConfig(level=logging.WARNING, format="%(message)s")
from s2s.cells.fused import kernels
from s2s.cells.fused.lstm import FusedLSTMCell
cell = FusedLSTMCell(3, 4)
out, _ = cell(torch.randn(2, 5, 3), torch.tensor([5, 2]))
out.sum().backward()
print("ops", kernels.ops() is not None, out.grad_fn.name())
"""


def test_without_a_compiler_the_cell_warns_once_and_still_works(tmp_path):
    """A machine without a working C++ compiler: one warning, the pure-PyTorch path runs."""
    done = _run_isolated(FALLBACK_PROBE, S2S_CACHE=str(tmp_path), CXX=str(tmp_path / "no-cxx"))
    assert done.returncode == 0, done.stderr
    assert "ops False _SequenceBackward" in done.stdout
    warnings = [line for line in done.stderr.splitlines() if "kernels unavailable" in line]
    assert len(warnings) == 1 and "pure-PyTorch path" in warnings[0]


def test_kernels_can_be_switched_off():
    done = _run_isolated(FALLBACK_PROBE, S2S_FUSED_KERNELS="0")
    assert done.returncode == 0, done.stderr
    assert "ops False _SequenceBackward" in done.stdout
    assert "unavailable" not in done.stderr


@needs_kernels
def test_compiled_pointwise_in_bfloat16_matches_float32_math():
    torch.manual_seed(4)
    gates = torch.randn(3, 4 * 32).bfloat16().requires_grad_()
    c_prev = torch.randn(3, 32).bfloat16().requires_grad_()
    h, c = _CompiledPointwise.apply(gates, c_prev)
    assert h.dtype == c.dtype == torch.bfloat16
    d_gates, d_c = torch.autograd.grad(h.float().sum() + c.float().pow(2).sum(), [gates, c_prev])
    g32, c32 = gates.detach().float().requires_grad_(), c_prev.detach().float().requires_grad_()
    h_ref, c_ref = LSTMPointwise.apply(g32, c32)
    d_ref = torch.autograd.grad(h_ref.sum() + c_ref.pow(2).sum(), [g32, c32])
    for ours, ref in ((h, h_ref), (c, c_ref), (d_gates, d_ref[0]), (d_c, d_ref[1])):
        torch.testing.assert_close(ours.float(), ref, rtol=2e-2, atol=2e-2)


def test_kernels_build_wherever_a_compiler_and_ninja_exist():
    """Without this, a C++ error would only skip the compiled-path tests."""
    import shutil

    if not (shutil.which(os.environ.get("CXX", "c++")) and shutil.which("ninja")):
        pytest.skip("no C++ compiler or ninja here")
    assert kernels.ops() is not None


@needs_kernels
def test_compiled_kernels_saturate_like_torch_at_extreme_preactivations():
    values = torch.tensor([-1e4, -100.0, -89.0, -30.0, 0.0, 30.0, 89.0, 100.0, 1e4,
                           float("-inf"), float("inf")])
    hid = 16
    gates = values.repeat(4 * hid // len(values) + 1)[:4 * hid].repeat(3, 1)  # [3, 4H]
    c_prev = torch.linspace(-2, 2, 3 * hid).view(3, hid)
    ours = _CompiledPointwise.apply(gates, c_prev)
    ref = LSTMPointwise.apply(gates, c_prev)
    for a, b in zip(ours, ref):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b)
    torch.manual_seed(5)
    fused, _ = _float_pair(3, 8)
    x = torch.randn(2, 4, 3) * 300
    out, _ = fused(x, torch.tensor([4, 2]))
    assert torch.isfinite(out).all()


@needs_kernels
def test_compiled_sequence_rejects_a_wrong_state_shape_with_an_error():
    fused, _ = _float_pair(3, 8)
    with pytest.raises(RuntimeError, match=r"initial state must be \[B, H\]"):
        fused(torch.randn(4, 5, 3), torch.tensor([5, 5, 3, 1]),
              (torch.randn(1, 8), torch.randn(1, 8)))


def test_a_failed_build_is_reported_by_its_compiler_diagnostic():
    error = RuntimeError(
        "Error building extension 's2s_fused_x': [1/2] c++ -MMD -O3 -c lstm_kernels.cpp\n"
        "FAILED: lstm_kernels.o\n"
        "lstm_kernels.cpp:682:20: error: 'z0' was not declared in this scope\n"
        "ninja: build stopped: subcommand failed.")
    assert kernels._reason(error) == (
        "RuntimeError: lstm_kernels.cpp:682:20: error: 'z0' was not declared in this scope")
    assert kernels._reason(OSError("no ninja")) == "OSError: no ninja"
