"""s2s.training.optim: train.optimizer gives the optimizer users expect, with its settings."""
from __future__ import annotations

import pytest
import torch

from s2s import config
from s2s.training import optim


@pytest.mark.parametrize("name, kind", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                        ("sgd", torch.optim.SGD)])
def test_each_optimizer_with_its_settings(name, kind):
    cfg = config.from_dict({}, [f"train.optimizer={name}", "train.lr=0.5",
                                "train.weight_decay=0.01", "train.momentum=0.9",
                                "train.adam_beta1=0.8"])
    opt = optim.optimizer([torch.nn.Parameter(torch.ones(2))], cfg.train)
    assert type(opt) is kind
    group = opt.param_groups[0]
    assert group["lr"] == 0.5 and group["weight_decay"] == 0.01
    if name == "sgd":
        assert group["momentum"] == 0.9
    else:
        assert group["betas"] == (0.8, 0.999)


def test_sgd_with_momentum_descends():
    cfg = config.from_dict({}, ["train.optimizer=sgd", "train.lr=0.1", "train.momentum=0.5"])
    w = torch.nn.Parameter(torch.tensor([3.0]))
    opt = optim.optimizer([w], cfg.train)
    for _ in range(50):
        opt.zero_grad()
        (w ** 2).sum().backward()
        opt.step()
    assert abs(float(w.detach())) < 1e-3


def test_an_unknown_optimizer_lists_the_known_ones():
    with pytest.raises(Exception, match="'adam', 'adamw', 'sgd'"):
        config.from_dict({}, ["train.optimizer=rmsprop"])
