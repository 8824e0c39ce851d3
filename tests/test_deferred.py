"""Deferred weight gradients (s2s.ops.deferred): the same gradients as plain autograd."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from s2s.config import ModelConfig
from s2s.model import Seq2Seq
from s2s.ops import deferred


def _loop(lin, w, b, w2, xs):
    h = torch.zeros(xs[0].shape[0], w2.shape[0], dtype=xs[0].dtype)
    for x in xs:
        h = torch.tanh(lin(x, w, b) + lin(h, w2, None))
    return h.square().sum()


def test_recurrent_loop_gradients_equal_plain_autograd():
    torch.manual_seed(0)
    w = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(6, 6, dtype=torch.float64, requires_grad=True)
    xs = [torch.randn(3, 4, dtype=torch.float64, requires_grad=True) for _ in range(5)]
    params = [w, b, w2, *xs]
    expected = torch.autograd.grad(_loop(F.linear, w, b, w2, xs), params)
    with deferred.deferred_weight_grads():
        assert deferred.active()
        loss = _loop(deferred.linear, w, b, w2, xs)
    assert not deferred.active()
    got = torch.autograd.grad(loss, params)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


def test_linear_cat_is_one_gemm_with_the_gradients_of_a_sum_of_linears():
    torch.manual_seed(1)
    x1 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    x2 = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    b1 = torch.randn(6, dtype=torch.float64, requires_grad=True)
    b2 = torch.randn(6, dtype=torch.float64, requires_grad=True)
    params = [x1, x2, w1, w2, b1, b2]

    def loss(fn):
        out = fn([x1, x2], [w1, w2], [b1, b2])
        return (out.tanh() * torch.arange(6, dtype=torch.float64)).sum()

    expected = torch.autograd.grad(loss(lambda xs, ws, bs: sum(
        F.linear(x, w, b) for x, w, b in zip(xs, ws, bs))), params)
    outside = torch.autograd.grad(loss(deferred.linear_cat), params)
    with deferred.deferred_weight_grads():
        inside = loss(deferred.linear_cat)
    inside = torch.autograd.grad(inside, params)
    for e, a, b in zip(expected, outside, inside):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(b, e, rtol=1e-12, atol=1e-12)


def test_linear_cat_when_only_some_inputs_need_gradients():
    torch.manual_seed(2)
    x1 = torch.randn(3, 4, dtype=torch.float64)  # no gradient wanted
    x2 = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    expected = torch.autograd.grad((F.linear(x1, w1) + F.linear(x2, w2)).sin().sum(),
                                   [x2, w1, w2])
    with deferred.deferred_weight_grads():
        out = deferred.linear_cat([x1, x2], [w1, w2], [None, None])
    got = torch.autograd.grad(out.sin().sum(), [x2, w1, w2])
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


def test_outside_the_context_or_without_grad_it_is_plain_linear():
    x, w = torch.randn(2, 3), torch.randn(4, 3, requires_grad=True)
    y = deferred.linear(x, w)
    assert y.grad_fn.name() != "_LinearBackward"
    with deferred.deferred_weight_grads(), torch.no_grad():
        assert not deferred.active()
        assert deferred.linear(x, w).grad_fn is None
    with deferred.deferred_weight_grads(enabled=False):
        assert not deferred.active()


def test_bf16_autocast_output_dtype_and_gradients_close():
    torch.manual_seed(0)
    w = torch.randn(8, 5, requires_grad=True)
    xs = [torch.randn(4, 5) for _ in range(3)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = sum(F.linear(x, w).float().sum() for x in xs)
        with deferred.deferred_weight_grads():
            ys = [deferred.linear(x, w) for x in xs]
    assert ys[0].dtype == torch.bfloat16
    expected, = torch.autograd.grad(plain, [w])
    got, = torch.autograd.grad(sum(y.float().sum() for y in ys), [w])
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-2)


def test_model_training_gradients_equal_with_and_without_deferral(monkeypatch):
    """The whole teacher-forced model: every parameter's gradient is unchanged (float64)."""
    import contextlib

    import s2s.model.seq2seq as seq2seq

    cfg = ModelConfig(cell="lstm", emb_size=8, hidden_size=12, dropout=0.0)
    torch.manual_seed(0)
    model = Seq2Seq(cfg, 11, 13).double()
    src = torch.randint(4, 11, (3, 5))
    src_len = torch.tensor([5, 3, 4])
    tgt = torch.randint(4, 13, (3, 6))

    def grads():
        loss, _ = model.loss(src, src_len, tgt, tgt)
        return torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)

    calls = []
    real_backward = deferred._Gate.backward

    def counting_backward(ctx, grad):
        calls.append(1)
        return real_backward(ctx, grad)

    monkeypatch.setattr(deferred._Gate, "backward", staticmethod(counting_backward))
    deferred_grads = grads()
    assert len(calls) == 2  # the decoder cell's two weights as one, the attention output layer
    monkeypatch.setattr(seq2seq, "deferred_weight_grads", contextlib.nullcontext)
    for e, g in zip(grads(), deferred_grads):
        if e is None:
            assert g is None
        else:
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)
