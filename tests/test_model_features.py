"""Issue 15's model and recipe features change the computation as documented."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from s2s import config
from s2s.errors import ConfigError
from s2s.model import Seq2Seq
from s2s.model.dropout import Dropout
from s2s.training.optim import lr_factor


def model(**options) -> Seq2Seq:
    cfg = dataclasses.replace(config.ModelConfig(emb_size=16, hidden_size=24, dropout=0.0),
                              **options)
    torch.manual_seed(0)
    return Seq2Seq(cfg, 30, 30)


def test_locked_dropout_mask_is_constant_over_time():
    drop = Dropout(0.5, "locked").train()
    seq = drop(torch.ones(4, 7, 10))
    assert torch.equal(seq, seq[:, :1].expand_as(seq))  # one mask for every time step
    assert (seq == 0).any() and (seq == 2).any()
    first, second = drop(torch.ones(4, 10)), drop(torch.ones(4, 10))
    assert torch.equal(first, second)  # per-step inputs reuse the mask ...
    drop.reset()
    assert not torch.equal(first, drop(torch.ones(4, 10)))  # ... until reset


def test_word_dropout_drops_whole_vectors():
    out = Dropout(0.5, "word").train()(torch.ones(8, 9, 6))
    per_word = out.eq(0).all(-1) | out.eq(2).all(-1)
    assert per_word.all() and out.eq(0).any()


def test_residual_adds_the_layer_input():
    from s2s.model.encoder import reverse_padded

    res = model(layers=2, residual=True).eval()
    src, lengths = torch.randint(4, 30, (3, 5)), torch.tensor([5, 4, 2])

    def layer(i, x):
        fwd, _ = res.encoder.layers[i][0](x, lengths)
        back, _ = res.encoder.layers[i][1](reverse_padded(x, lengths), lengths)
        return torch.cat([fwd, reverse_padded(back, lengths)], -1)

    first = layer(0, res.encoder.embed(src))
    expect = layer(1, first) + first  # the second layer adds its input
    memory, _ = res.encoder(src, lengths)
    assert torch.allclose(memory, expect, atol=1e-6)
    assert not torch.allclose(memory, layer(1, first), atol=1e-3)


@pytest.mark.parametrize("init", ["zero", "mean", "bridge"])
def test_decoder_init(init):
    m = model(decoder_init=init).eval()
    src, lengths = torch.randint(4, 30, (2, 6)), torch.tensor([6, 3])
    enc, state = m.encode(src, lengths)
    h = state.layers[0][0]
    if init == "zero":
        assert not h.any()
    elif init == "mean":
        expect = torch.stack([enc.memory[0, :6].mean(0), enc.memory[1, :3].mean(0)])
        assert torch.allclose(h, expect, atol=1e-6)
    else:
        _, finals = m.encoder(src, lengths)
        assert torch.allclose(h, torch.tanh(m.bridge[0][0](finals[0][0])))


def test_three_way_tying_shares_one_matrix():
    m = model(share_embeddings=True, tie_embeddings=True, emb_size=24)
    assert m.encoder.embed.weight is m.decoder.embed.weight is m.generator.weight
    with pytest.raises(ConfigError, match="one vocabulary"):
        Seq2Seq(dataclasses.replace(m.cfg), 30, 31)
    with pytest.raises(ConfigError, match="prune_vocab=false"):
        config.from_dict({"model": {"share_embeddings": True}})


def test_cosine_schedule_warms_up_then_decays_to_min_lr():
    t = config.from_dict({"train": {"schedule": "cosine", "warmup_steps": 10, "max_steps": 110,
                                    "lr": 1.0, "min_lr": 0.1}}).train
    f = lr_factor(t)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.55)
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    timed = config.from_dict({"train": {"schedule": "cosine", "max_time": 100.0,
                                        "lr": 1.0}}).train
    clock = [50.0]
    assert lr_factor(timed, lambda: clock[0])(5) == pytest.approx(0.5)  # half the time gone


@pytest.mark.parametrize("cell", ["ln-lstm", "ln-gru"])
def test_layer_norm_cells_forward_matches_steps(cell):
    from s2s.cells import registry

    c = registry.build(cell, 8, 6, {}).eval()
    x, lengths = torch.randn(3, 5, 8), torch.tensor([5, 2, 4])
    out, final = c(x, lengths)
    state = c.initial_state(3, torch.device("cpu"), torch.float32)
    for t in range(5):
        h, new = c.step(x[:, t], state)
        keep = (t < lengths).unsqueeze(1)
        state = tuple(torch.where(keep, n, o) for n, o in zip(new, state))
        assert torch.allclose(out[:, t], h * keep, atol=1e-6)
    assert torch.allclose(final[0], state[0], atol=1e-6)


def test_recipe_averages_tunes_and_translate_uses_serving_json(tmp_path, toy_data):
    import json

    from s2s import checkpoint
    from s2s.training import train
    from s2s.translate import Translator

    cfg = config.load(Path(__file__).parents[1] / "configs" / "toy.yaml", [
        f"data.dir={toy_data}", "train.max_steps=200", "train.checkpoint_every=100",
        "train.validate_every=100", "train.average_last=2", "train.tune_length_penalty=true",
        "train.tune_beam=2"])
    run = tmp_path / "run"
    result = train(cfg, run, console=False)
    record = json.loads((run / checkpoint.SERVING).read_text())
    assert (run / "averaged.pt").is_file()
    assert len(record["valid"]) == 2 * 9  # best.pt and averaged.pt x the penalty grid
    best = max(record["valid"], key=lambda r: r["bleu"])
    assert record["checkpoint"] == best["checkpoint"] and "serving" in result
    assert checkpoint.resolve(run) == (run / record["checkpoint"]).resolve()
    translator = Translator.from_run(run)
    assert translator.search_defaults == record["search"]
    (run / checkpoint.SERVING).write_text("{not json")
    with pytest.raises(Exception, match="serving.json is damaged"):
        checkpoint.resolve(run)
