"""s2s-lnlstm's own tests: the cell passes s2s's conformance kit and computes a layer-normalised
LSTM (Ba et al. 2016)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("s2s_lnlstm", reason="pip install -e plugins/s2s-lnlstm")

from s2s_lnlstm import LayerNormLSTMCell  # noqa: E402

from s2s.testing import check_cell  # noqa: E402


@pytest.mark.parametrize("options", [{}, {"eps": 1e-3, "forget_bias": 0.0}])
def test_follows_the_cell_contract(options):
    check_cell(LayerNormLSTMCell, options=options)


def test_follows_the_cell_contract_at_other_sizes():
    check_cell(LayerNormLSTMCell, input_size=1, hidden_size=2)


def test_is_installed_as_an_s2s_cell():
    from s2s.cells import registry

    cls, entry = registry.load("lnlstm")
    assert cls is LayerNormLSTMCell
    assert (entry.dist, entry.value) == ("s2s-lnlstm", "s2s_lnlstm:LayerNormLSTMCell")
    assert set(registry.options_of(cls)) == {"eps", "forget_bias"}
    assert registry.build("lnlstm", 3, 5, {"eps": 1e-4}).eps == 1e-4


def reference_step(cell: LayerNormLSTMCell, x, h, c):
    """The equations of Ba et al. (2016) written out, without nn.LayerNorm."""
    def ln(v, gain, bias=0.0):
        mean = v.mean(-1, keepdim=True)
        var = v.var(-1, unbiased=False, keepdim=True)
        return gain * (v - mean) / torch.sqrt(var + cell.eps) + bias

    gates = (ln(x @ cell.weight_ih.T, cell.ln_ih.weight)
             + ln(h @ cell.weight_hh.T, cell.ln_hh.weight) + cell.bias)
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(ln(c, cell.ln_cell.weight, cell.ln_cell.bias))
    return h, c


def test_matches_the_equations():
    torch.manual_seed(0)
    cell = LayerNormLSTMCell(3, 4).double()
    with torch.no_grad():  # non-trivial gains and biases
        for p in cell.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, h, c = (torch.randn(2, n, dtype=torch.float64) for n in (3, 4, 4))
    out, (h1, c1) = cell.step(x, (h, c))
    h2, c2 = reference_step(cell, x, h, c)
    torch.testing.assert_close(h1, h2)
    torch.testing.assert_close(c1, c2)
    assert out is h1


def test_gates_are_invariant_to_the_scale_of_the_input():
    """Layer normalisation of W_ih x: scaling x by a positive factor changes nothing."""
    torch.manual_seed(0)
    cell = LayerNormLSTMCell(3, 4, eps=1e-12).double()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    lengths = torch.tensor([5, 3])
    out, state = cell(x, lengths)
    out10, state10 = cell(10 * x, lengths)
    torch.testing.assert_close(out10, out)
    torch.testing.assert_close(state10, state)


def test_forget_bias_option_sets_the_forget_gate_bias():
    cell = LayerNormLSTMCell(3, 4, forget_bias=2.0)
    assert torch.equal(cell.bias[4:8], torch.full((4,), 2.0))
    assert not cell.bias[:4].any() and not cell.bias[8:].any()


def test_bad_eps_is_rejected():
    with pytest.raises(ValueError, match="eps"):
        LayerNormLSTMCell(3, 4, eps=0.0)
