"""Global attention (Luong 2015): scores by dot, general (bilinear) or Bahdanau (additive),
followed by the attentional hidden state h~ = tanh(W_c [context; h]).

Legend: B batch, S source length, H hidden.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from s2s.ops import gemm
from s2s.ops.deferred import linear


class _Scores(torch.autograd.Function):
    """keys [B, S, H], query [B, H] -> keys @ query [B, S], computed as one [1, H] @ [H, S]
    product per row: torch.bmm(keys, query[..., None]) (an [S, H] @ [H, 1] per row) ran 3-6x
    slower on CPU, and its backward 4x. Backward: d_keys is an outer product, d_query one
    [1, S] @ [S, H] product per row. Any dtype (autocast included: the products run in the
    dtype of the output and of its gradient)."""

    @staticmethod
    def forward(ctx, keys: Tensor, query: Tensor) -> Tensor:
        ctx.save_for_backward(keys, query)
        return torch.bmm(query.unsqueeze(1), keys.transpose(1, 2)).squeeze(1)  # [B, S]

    @staticmethod
    def backward(ctx, grad: Tensor):
        keys, query = ctx.saved_tensors
        d_keys = d_query = None
        if ctx.needs_input_grad[0]:
            d_keys = (grad.unsqueeze(2) * query.to(grad.dtype).unsqueeze(1)).to(keys.dtype)
        if ctx.needs_input_grad[1]:  # [B, 1, S] @ [B, S, H]
            d_query = torch.bmm(grad.unsqueeze(1), keys.to(grad.dtype)).squeeze(1).to(query.dtype)
        return d_keys, d_query


class _Context(torch.autograd.Function):
    """weights [B, S], memory [B, S, H] -> weights @ memory [B, H], with a backward of one
    [1, H] @ [H, S] product per row (d_weights) and an outer product (d_memory): torch.bmm's
    own backward ran 2x slower on CPU."""

    @staticmethod
    def forward(ctx, weights: Tensor, memory: Tensor) -> Tensor:
        ctx.save_for_backward(weights, memory)
        return torch.bmm(weights.unsqueeze(1), memory).squeeze(1)  # [B, H]

    @staticmethod
    def backward(ctx, grad: Tensor):
        weights, memory = ctx.saved_tensors
        d_weights = d_memory = None
        if ctx.needs_input_grad[0]:
            d_weights = torch.bmm(grad.unsqueeze(1), memory.to(grad.dtype).transpose(1, 2)
                                  ).squeeze(1).to(weights.dtype)
        if ctx.needs_input_grad[1]:
            d_memory = (weights.to(grad.dtype).unsqueeze(2) * grad.unsqueeze(1)).to(memory.dtype)
        return d_weights, d_memory


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
            scores = _Scores.apply(keys, query)  # [B, S]
        scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=-1)  # [B, S]
        context = _Context.apply(weights, memory)  # [B, H_mem]
        attn_h = linear(torch.cat([context, query], dim=-1), self.out.weight, self.out.bias)
        # deferred weight gradients in training: see s2s.ops.deferred
        return torch.tanh(attn_h), weights
