"""Embeddings -> stacked (optionally bidirectional) recurrent layers built from the configured cell.

Legend: B batch, S source length, E embedding size, H hidden (decoder) size.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from s2s.cells import State, registry
from s2s.cells.base import run_steps
from s2s.config import ModelConfig
from s2s.model.dropout import Dropout, site_kind
from s2s.tokenizer import PAD


def reverse_padded(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each sequence of x [B, S, *] within its own length; padding stays in place."""
    steps = torch.arange(x.shape[1], device=x.device).unsqueeze(0)  # [1, S]
    last = (lengths.to(x.device) - 1).unsqueeze(1)  # [B, 1]
    index = torch.where(steps <= last, last - steps, steps)  # [B, S]
    return x.gather(1, index.unsqueeze(-1).expand_as(x))


def dropouts(cfg: ModelConfig) -> tuple[Dropout, Dropout]:
    """(the dropout of embeddings, layers and outputs; word dropout) as configured."""
    return (Dropout(cfg.dropout, site_kind(cfg.locked_dropout)),
            Dropout(cfg.word_dropout, "word"))


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, cfg.emb_size, padding_idx=PAD)
        self.bidirectional = cfg.bidirectional
        self.residual = cfg.residual
        per_direction = cfg.hidden_size // 2 if cfg.bidirectional else cfg.hidden_size
        self.layers = nn.ModuleList()
        for i in range(cfg.n_encoder_layers):
            input_size = cfg.emb_size if i == 0 else cfg.hidden_size
            directions = 2 if cfg.bidirectional else 1
            self.layers.append(nn.ModuleList(
                registry.build(cfg.cell, input_size, per_direction, dict(cfg.cell_options))
                for _ in range(directions)))
        self.dropout, self.word_dropout = dropouts(cfg)
        self.h_dropout = Dropout(cfg.recurrent_dropout, "locked")

    def _run(self, cell, x: Tensor, lengths: Tensor) -> tuple[Tensor, State]:
        """One direction of one layer: the cell's own forward, or with recurrent dropout in
        training its step over time with a locked mask on the h fed back."""
        if self.training and self.h_dropout.p:
            return run_steps(cell, x, lengths, h_dropout=self.h_dropout)
        return cell(x, lengths)

    def forward(self, src: Tensor, lengths: Tensor) -> tuple[Tensor, list[State]]:
        """src [B, S], lengths [B] -> (memory [B, S, H], final state of each layer ([B, H]
        each))."""
        x = self.dropout(self.word_dropout(self.embed(src)))  # [B, S, E]
        finals: list[State] = []
        for i, layer in enumerate(self.layers):
            out, state = self._run(layer[0], x, lengths)  # [B, S, H/2]
            if self.bidirectional:
                back, back_state = self._run(layer[1], reverse_padded(x, lengths), lengths)
                out = torch.cat([out, reverse_padded(back, lengths)], dim=-1)  # [B, S, H]
                state = tuple(torch.cat([f, b], dim=-1) for f, b in zip(state, back_state))
            if self.residual and i > 0:  # the layer's input (H wide after the first layer)
                out = out + x
            finals.append(state)
            x = self.dropout(out) if i < len(self.layers) - 1 else out
        return x, finals
