"""Input-feeding attentional decoder built from the configured cell.

Legend: B batch, S source length, T target length, E embedding size, H hidden size.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from s2s.cells import State, registry
from s2s.config import ModelConfig
from s2s.model.attention import Attention
from s2s.model.dropout import Dropout, site_kind
from s2s.model.encoder import dropouts
from s2s.tokenizer import PAD


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, cfg.emb_size, padding_idx=PAD)
        self.input_feeding = cfg.input_feeding
        self.hidden_size = cfg.hidden_size
        self.cells = nn.ModuleList()
        for i in range(cfg.n_decoder_layers):
            input_size = (cfg.emb_size + cfg.hidden_size * cfg.input_feeding) if i == 0 \
                else cfg.hidden_size
            self.cells.append(registry.build(cfg.cell, input_size, cfg.hidden_size,
                                             dict(cfg.cell_options)))
        self.attention = Attention(cfg.attention, cfg.hidden_size, cfg.hidden_size)
        self.residual = cfg.residual
        locked = site_kind(cfg.locked_dropout)
        self.dropout, self.word_dropout = dropouts(cfg)  # embeddings (whole sequences)
        # per-step sites: each its own module, so that a locked mask is kept per site
        self.layer_dropouts = nn.ModuleList(Dropout(cfg.dropout, locked)
                                            for _ in range(len(self.cells) - 1))
        self.out_dropout = Dropout(cfg.dropout, locked)
        self.h_dropouts = nn.ModuleList(Dropout(cfg.recurrent_dropout, "locked")
                                        for _ in self.cells)

    def step(self, emb: Tensor, layers: tuple[State, ...], feed: Tensor, memory: Tensor,
             keys: Tensor, mask: Tensor) -> tuple[Tensor, tuple[State, ...], Tensor]:
        """One target step. emb [B, E], feed [B, H] (previous attentional hidden)
        -> (attentional hidden [B, H] (dropout applied), new layer states, weights [B, S])."""
        x = torch.cat([emb, feed], dim=-1) if self.input_feeding else emb  # [B, E(+H)]
        new_layers = []
        for i, cell in enumerate(self.cells):
            state = layers[i]
            if self.h_dropouts[i].p:  # variational recurrent dropout on the h fed back
                state = (self.h_dropouts[i](state[0]), *state[1:])
            h, state = cell.step(x, state)  # [B, H]
            new_layers.append(state)
            if self.residual and i > 0:
                h = h + x
            x = self.layer_dropouts[i](h) if i < len(self.cells) - 1 else h
        attn_h, weights = self.attention(h, memory, keys, mask)
        return self.out_dropout(attn_h), tuple(new_layers), weights
