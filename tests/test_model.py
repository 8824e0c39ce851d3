"""s2s.model: shapes, padding invariance, gradient flow, weight tying, layer layouts, reorder."""
from __future__ import annotations

import math

import pytest
import torch

from s2s.batching import pad
from s2s.config import ModelConfig
from s2s.model import DecoderState, EncoderOut, Seq2Seq
from s2s.model.seq2seq import reorder
from s2s.tokenizer import BOS, EOS, PAD

SRC_V, TGT_V = 11, 13
CELLS = ("lstm", "gru")
ATTENTIONS = ("general", "dot", "bahdanau")


def make(cell: str = "lstm", attention: str = "general", seed: int = 0, **kw) -> Seq2Seq:
    torch.manual_seed(seed)
    return Seq2Seq(ModelConfig(emb_size=8, hidden_size=16, cell=cell, attention=attention, **kw),
                   SRC_V, TGT_V)


def batch(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """PAD-padded [B, S] ids and lengths [B]."""
    return pad(seqs), torch.tensor([len(s) for s in seqs])


SHORT = [4, 5, 6]
LONG = [7, 8, 9, 10, 4, 5]
TGT_SHORT = [4, 5, 6, 7]
TGT_LONG = [8, 9, 10, 11, 12, 4, 5]


def teacher(tgts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """tgt_in [B, T] = BOS y, tgt_out [B, T] = y EOS, PAD-padded."""
    tgt_in, _ = batch([[BOS, *t] for t in tgts])
    tgt_out, _ = batch([[*t, EOS] for t in tgts])
    return tgt_in, tgt_out


combos = pytest.mark.parametrize("cell,attention",
                                 [(c, a) for c in CELLS for a in ATTENTIONS])


@combos
def test_forward_shape_and_finite_loss(cell, attention):
    model = make(cell, attention)
    src, lengths = batch([LONG, SHORT])
    tgt_in, tgt_out = teacher([TGT_LONG, TGT_SHORT])
    hidden = model(src, lengths, tgt_in)
    assert hidden.shape == (2, tgt_in.shape[1], 16)  # [B, T, H]
    assert model.logits(hidden).shape == (2, tgt_in.shape[1], TGT_V)
    loss, nll = model.loss(src, lengths, tgt_in, tgt_out)
    assert loss.dim() == 0 and math.isfinite(float(loss.detach())) and float(loss.detach()) > 0
    assert not nll.requires_grad
    smoothed, _ = model.loss(src, lengths, tgt_in, tgt_out, label_smoothing=0.1)
    assert math.isfinite(float(smoothed.detach()))


@combos
def test_padding_does_not_leak(cell, attention):
    """In eval mode a sentence gives the same encoder memory, initial state and step
    log-probabilities alone as next to a longer sentence in a padded batch."""
    model = make(cell, attention).eval()
    with torch.no_grad():
        enc1, state1 = model.encode(*batch([SHORT]))
        enc2, state2 = model.encode(*batch([LONG, SHORT]))
        n = len(SHORT)
        assert enc2.memory.shape[1] == len(LONG)
        torch.testing.assert_close(enc2.memory[1, :n], enc1.memory[0])
        torch.testing.assert_close(enc2.keys[1, :n], enc1.keys[0])
        assert enc2.mask[1].tolist() == [True] * n + [False] * (len(LONG) - n)
        for layer1, layer2 in zip(state1.layers, state2.layers):
            for part1, part2 in zip(layer1, layer2):
                torch.testing.assert_close(part2[1], part1[0])
        tokens1, tokens2 = torch.tensor([BOS]), torch.tensor([BOS, BOS])
        for next_token in TGT_SHORT:
            lp1, state1, att1 = model.step(tokens1, enc1, state1)
            lp2, state2, att2 = model.step(tokens2, enc2, state2)
            torch.testing.assert_close(lp2[1], lp1[0])
            torch.testing.assert_close(att2[1, :n], att1[0])
            assert att2[1, n:].abs().max() == 0  # no attention on padding
            tokens1, tokens2 = torch.tensor([next_token]), torch.tensor([next_token, next_token])


@combos
def test_batched_loss_is_the_sum_of_single_losses(cell, attention):
    model = make(cell, attention).eval()
    pairs = [(LONG, TGT_SHORT), (SHORT, TGT_LONG)]
    with torch.no_grad():
        together = model.loss(*batch([s for s, _ in pairs]), *teacher([t for _, t in pairs]))[1]
        alone = sum(model.loss(*batch([s]), *teacher([t]))[1] for s, t in pairs)
    torch.testing.assert_close(together, alone)


@pytest.mark.parametrize("tie", [False, True])
@combos
def test_gradients_reach_every_parameter(cell, attention, tie):
    model = make(cell, attention, tie_embeddings=tie).train()
    src, lengths = batch([LONG, SHORT])
    tgt_in, tgt_out = teacher([TGT_LONG, TGT_SHORT])
    loss, _ = model.loss(src, lengths, tgt_in, tgt_out)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_padding_embeddings_are_zero():
    model = make()
    assert model.encoder.embed.weight[PAD].abs().max() == 0
    assert model.decoder.embed.weight[PAD].abs().max() == 0


@pytest.mark.parametrize("emb_size", [8, 16])  # with and without the hidden->emb projection
def test_tie_embeddings_shares_the_weight(emb_size):
    torch.manual_seed(0)
    model = Seq2Seq(ModelConfig(emb_size=emb_size, hidden_size=16, tie_embeddings=True),
                    SRC_V, TGT_V)
    assert model.generator.weight is model.decoder.embed.weight
    assert (model.project is None) == (emb_size == 16)
    untied = Seq2Seq(ModelConfig(emb_size=emb_size, hidden_size=16), SRC_V, TGT_V)
    n_tied = sum(p.numel() for p in model.parameters())
    n_untied = sum(p.numel() for p in untied.parameters())
    extra = 16 * emb_size if emb_size != 16 else 0  # the projection
    assert n_untied - n_tied == TGT_V * 16 - extra
    # one update moves both: they are one tensor
    with torch.no_grad():
        model.generator.weight[5].add_(1.0)
    torch.testing.assert_close(model.decoder.embed.weight[5], model.generator.weight[5])
    # the tie survives a state_dict round trip
    copy = Seq2Seq(ModelConfig(emb_size=emb_size, hidden_size=16, tie_embeddings=True),
                   SRC_V, TGT_V)
    copy.load_state_dict(model.state_dict())
    assert copy.generator.weight is copy.decoder.embed.weight
    torch.testing.assert_close(copy.generator.weight, model.generator.weight)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layout", [
    dict(layers=2), dict(bidirectional=False), dict(layers=2, bidirectional=False),
    dict(encoder_layers=3, decoder_layers=1), dict(encoder_layers=1, decoder_layers=2),
    dict(input_feeding=False),
], ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()))
def test_layer_layouts(cell, layout):
    model = make(cell, "general", **layout)
    cfg = model.cfg
    assert len(model.encoder.layers) == cfg.n_encoder_layers
    assert all(len(layer) == (2 if cfg.bidirectional else 1) for layer in model.encoder.layers)
    assert len(model.decoder.cells) == cfg.n_decoder_layers
    src, lengths = batch([LONG, SHORT])
    tgt_in, tgt_out = teacher([TGT_LONG, TGT_SHORT])
    hidden = model(src, lengths, tgt_in)
    assert hidden.shape == (2, tgt_in.shape[1], 16)
    loss, _ = model.loss(src, lengths, tgt_in, tgt_out)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    enc, state = model.encode(src, lengths)
    assert enc.memory.shape == (2, len(LONG), 16)
    assert len(state.layers) == cfg.n_decoder_layers
    assert all(part.shape == (2, 16) for layer in state.layers for part in layer)


def test_dot_attention_needs_equal_sizes():
    from s2s.model.attention import Attention

    with pytest.raises(ValueError, match="equal"):
        Attention("dot", 16, 8)


@pytest.mark.parametrize("cell", CELLS)
def test_reorder_selects_rows(cell):
    model = make(cell, "bahdanau", layers=2).eval()
    src, lengths = batch([LONG, SHORT, [4, 4]])
    enc, state = model.encode(src, lengths)
    _, state, _ = model.step(torch.tensor([BOS, BOS, BOS]), enc, state)
    index = torch.tensor([2, 0, 0])
    enc2, state2 = model.reorder(enc, index), model.reorder(state, index)
    assert isinstance(enc2, EncoderOut) and isinstance(state2, DecoderState)
    for field in EncoderOut._fields:
        assert torch.equal(getattr(enc2, field), getattr(enc, field)[index]), field
    assert torch.equal(state2.feed, state.feed[index])
    assert isinstance(state2.layers, tuple) and len(state2.layers) == len(state.layers)
    for layer2, layer in zip(state2.layers, state.layers):
        assert type(layer2) is type(layer)
        for part2, part in zip(layer2, layer):
            assert torch.equal(part2, part[index])
    # a reordered batch steps exactly like the same rows stepped in their original order
    tokens = torch.tensor([5, 6, 7])
    lp, _, _ = model.step(tokens, enc, state)
    lp2, _, _ = model.step(tokens[index], enc2, state2)
    torch.testing.assert_close(lp2, lp[index])


def test_reorder_refuses_other_objects():
    with pytest.raises(TypeError, match="cannot reorder list"):
        reorder([torch.zeros(2)], torch.tensor([0]))


def test_step_log_probs_normalised():
    model = make().eval()
    enc, state = model.encode(*batch([LONG, SHORT]))
    log_probs, state, weights = model.step(torch.tensor([BOS, BOS]), enc, state)
    assert log_probs.shape == (2, TGT_V)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(2))
    torch.testing.assert_close(weights.sum(-1), torch.ones(2))


def test_dropout_semantics():
    from s2s.model.dropout import Dropout

    torch.manual_seed(0)
    x = torch.ones(200, 500)
    drop = Dropout(0.3)
    y = drop.train()(x)
    assert abs(float((y == 0).float().mean()) - 0.3) < 0.01
    assert torch.all((y == 0) | torch.isclose(y, torch.tensor(1 / 0.7)))
    assert drop.eval()(x) is x and Dropout(0.0).train()(x) is x
    x.requires_grad_(True)
    y = Dropout(0.5).train()(x)
    y.sum().backward()
    assert torch.equal(x.grad, (y.detach() != 0).float() * 2.0)


def test_attention_products_equal_torch_bmm_with_gradients():
    from s2s.model.attention import _Context, _Scores

    torch.manual_seed(7)
    keys, memory = torch.randn(5, 7, 12, requires_grad=True), torch.randn(5, 7, 12,
                                                                          requires_grad=True)
    query = torch.randn(5, 12, requires_grad=True)
    weights = torch.softmax(torch.randn(5, 7), -1).requires_grad_()
    pairs = [(lambda: _Scores.apply(keys, query),
              lambda: torch.bmm(keys, query.unsqueeze(2)).squeeze(2), [keys, query]),
             (lambda: _Context.apply(weights, memory),
              lambda: torch.bmm(weights.unsqueeze(1), memory).squeeze(1), [weights, memory])]
    for ours, ref, wrt in pairs:
        a, b = ours(), ref()
        torch.testing.assert_close(a, b)
        probe = torch.randn_like(b)
        for ga, gb in zip(torch.autograd.grad((a * probe).sum(), wrt),
                          torch.autograd.grad((b * probe).sum(), wrt)):
            torch.testing.assert_close(ga, gb)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 products, float32 gradients
            low = ours()
            grads = torch.autograd.grad((low.float() * probe).sum(), wrt)
        assert low.dtype == torch.bfloat16
        assert all(g.dtype == torch.float32 for g in grads)
        torch.testing.assert_close(low.float(), b, rtol=0.05, atol=0.05)
