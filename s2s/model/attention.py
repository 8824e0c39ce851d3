"""Global attention (Luong 2015): scores by dot, general (bilinear) or Bahdanau (additive),
followed by the attentional hidden state h~ = tanh(W_c [context; h]).

Legend: B batch, S source length, H hidden.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from s2s import gemm
from s2s.cells.deferred import linear


class Attention(nn.Module):
    def __init__(self, kind: str, query_size: int, memory_size: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "general":
            self.key = nn.Linear(memory_size, query_size, bias=False)
        elif kind == "bahdanau":
            self.key = nn.Linear(memory_size, query_size, bias=False)
            self.query = nn.Linear(query_size, query_size, bias=True)
            self.v = nn.Linear(query_size, 1, bias=False)
        elif kind == "dot":
            if memory_size != query_size:
                raise ValueError("dot attention needs equal memory and query sizes")
        else:  # the config loader only admits the three kinds above
            raise AssertionError(f"unknown attention {kind!r}")
        self.out = nn.Linear(memory_size + query_size, query_size, bias=kind == "bahdanau")

    def keys(self, memory: Tensor) -> Tensor:
        """Per-batch precomputation: [B, S, H_mem] -> keys [B, S, H]."""
        return memory if self.kind == "dot" else gemm.linear(memory, self.key.weight)

    def forward(self, query: Tensor, memory: Tensor, keys: Tensor, mask: Tensor
                ) -> tuple[Tensor, Tensor]:
        """query [B, H], memory [B, S, H_mem], keys [B, S, H], mask [B, S] (True = real)
        -> (attentional hidden [B, H], weights [B, S])."""
        if self.kind == "bahdanau":
            query_part = linear(query, self.query.weight, self.query.bias)  # [B, H]
            hidden = torch.tanh(keys + query_part.unsqueeze(1))  # [B, S, H]
            scores = gemm.linear(hidden, self.v.weight).squeeze(2)  # [B, S]
        else:
            scores = torch.bmm(keys, query.unsqueeze(2)).squeeze(2)  # [B, S]
        scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=-1)  # [B, S]
        context = torch.bmm(weights.unsqueeze(1), memory).squeeze(1)  # [B, H_mem]
        attn_h = linear(torch.cat([context, query], dim=-1), self.out.weight, self.out.bias)
        return torch.tanh(attn_h), weights  # deferred weight grads in training: see cells.deferred
