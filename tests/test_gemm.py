"""s2s.ops.gemm: the same float32 products as torch, through oneDNN where it is available."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from s2s.ops import gemm

LAYOUTS = {
    "contiguous": lambda t: t,
    "transposed": lambda t: t.t().contiguous().t(),
    "column slice": lambda t: torch.cat([t, t], dim=1)[:, :t.shape[1]],
    "expanded row": lambda t: t[:1].expand_as(t),
}


@pytest.mark.parametrize("layout_a", LAYOUTS)
@pytest.mark.parametrize("layout_b", LAYOUTS)
def test_mm_and_addmm_equal_torch_for_any_layout(layout_a, layout_b):
    torch.manual_seed(0)
    a = LAYOUTS[layout_a](torch.randn(6, 5))
    b = LAYOUTS[layout_b](torch.randn(5, 7))
    bias = torch.randn(7)
    torch.testing.assert_close(gemm.mm(a, b), a @ b)
    torch.testing.assert_close(gemm.addmm(bias, a, b), torch.addmm(bias, a, b))


def test_linear_values_and_gradients_equal_f_linear():
    torch.manual_seed(1)
    x = torch.randn(3, 4, 5, requires_grad=True)
    w = torch.randn(6, 5, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    results = []
    for fn in (gemm.linear, F.linear):
        y = fn(x, w, b)
        results.append((y, *torch.autograd.grad((y * y.detach()).sum(), [x, w, b])))
    for ours, ref in zip(*results):
        torch.testing.assert_close(ours, ref)
    if gemm.available():
        assert gemm.linear(x, w, b).grad_fn.name() == "_OneDnnLinearBackward"


def test_other_dtypes_and_autocast_use_torch():
    x64, w64 = torch.randn(2, 3, dtype=torch.double), torch.randn(4, 3, dtype=torch.double)
    assert torch.equal(gemm.linear(x64, w64), F.linear(x64, w64))
    assert torch.equal(gemm.mm(x64, w64.t()), x64 @ w64.t())
    x, w = torch.randn(2, 3), torch.randn(4, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert gemm.linear(x, w).dtype == torch.bfloat16


def test_switch_off_with_environment_variable():
    code = "from s2s.ops import gemm; print(gemm.available())"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "S2S_GEMM": "torch"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("rows, inner", [(0, 5), (4, 0), (1, 5), (4, 1)])
def test_empty_and_size_one_shapes(rows, inner):
    x, w, b = torch.randn(rows, inner), torch.randn(3, inner), torch.randn(3)
    torch.testing.assert_close(gemm.linear(x, w, b), F.linear(x, w, b))
    torch.testing.assert_close(gemm.mm(x, w.t()), x @ w.t())


def test_onednn_is_used_where_torch_has_it_unless_switched_off():
    wanted = os.environ.get("S2S_GEMM") != "torch"  # the suite asks for oneDNN (conftest.py)
    assert gemm.available() == (wanted and torch.backends.mkldnn.is_available()
                                and hasattr(torch.ops.mkldnn, "_linear_pointwise"))
    assert gemm.backend() == ("onednn" if gemm.available() else "torch")


@pytest.mark.parametrize("bias", [
    torch.arange(14.0)[::2],  # strided
    torch.tensor([0.5]).expand(7),  # expanded
    torch.tensor(0.25),  # 0-d: broadcast
    torch.tensor([0.25]),  # [1]: broadcast
])
def test_any_bias_torch_accepts_gives_torchs_result(bias):
    x, w = torch.randn(4, 5), torch.randn(7, 5)
    torch.testing.assert_close(gemm.addmm(bias, x, w.t()), torch.addmm(bias, x, w.t()))
    torch.testing.assert_close(gemm.linear(x, w, bias), F.linear(x, w, bias))


def test_double_backward_is_an_error_not_a_silent_zero():
    x = torch.randn(3, 4, requires_grad=True)
    w = torch.randn(5, 4, requires_grad=True)
    (g,) = torch.autograd.grad(gemm.linear(x, w).pow(2).sum(), x, create_graph=True)
    if gemm.available():
        with pytest.raises(RuntimeError):
            torch.autograd.grad(g.sum(), w)
