"""Tiny random float64 models and source batches for the search tests (tests/test_search.py,
tests/test_shortlist.py): small enough to enumerate every output exhaustively."""
from __future__ import annotations

import torch

from s2s.batching import pad
from s2s.config import ModelConfig
from s2s.model import Seq2Seq
from s2s.tokenizer import EOS

SRC_V = 7


def tiny_model(seed: int, tgt_vocab: int = 6, cell: str = "lstm", eos_shift: float = 0.0
               ) -> Seq2Seq:
    """A random float64 model in eval mode with peaky output distributions (init_range 1,
    logits doubled), so that the best outputs have a range of lengths. `eos_shift` moves the
    EOS logit (very negative: the model never wants to stop)."""
    torch.manual_seed(seed)
    model = Seq2Seq(ModelConfig(emb_size=8, hidden_size=16, cell=cell, dropout=0.0,
                                init_range=1.0), SRC_V, tgt_vocab)
    with torch.no_grad():
        model.generator.weight.mul_(2.0)
        model.generator.bias.mul_(2.0)
        model.generator.bias[EOS] += eos_shift
    return model.double().eval()


def sources(seed: int, n: int, min_len: int = 1, max_len: int = 6) -> list[list[int]]:
    g = torch.Generator().manual_seed(1000 + seed)
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=g).tolist()
    return [torch.randint(4, SRC_V, (k,), generator=g).tolist() for k in lengths]


def padded(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    return pad(seqs), torch.tensor([len(s) for s in seqs])
