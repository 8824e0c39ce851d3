"""fused-lstm: the same math as lstm (outputs and gradients), interchangeable weights."""
from __future__ import annotations

import pytest
import torch

from s2s.cells.fused.lstm import FusedLSTMCell, _Sequence
from s2s.cells.lstm import LSTMPointwise
from s2s.cells.lstm import LSTMCell


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
        loss = (out * torch.linspace(-1, 1, 4, dtype=torch.double)).sum() + 2 * h.sum() + 3 * c.sum()
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
