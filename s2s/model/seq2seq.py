"""The encoder-decoder model and the three operations search uses: encode / step / reorder.

Legend: B batch, S source length, T target length, H hidden size, V target vocabulary.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s2s.cells import State
from s2s.config import ModelConfig
from s2s.errors import ConfigError
from s2s.model.decoder import Decoder
from s2s.model.dropout import reset_all
from s2s.model.encoder import Encoder
from s2s.ops import gemm
from s2s.ops.deferred import deferred_weight_grads
from s2s.ops.masks import length_mask
from s2s.tokenizer import PAD


class EncoderOut(NamedTuple):
    memory: Tensor  # [B, S, H]
    keys: Tensor  # [B, S, H] attention keys, computed once per batch
    mask: Tensor  # [B, S] True at real source positions


class DecoderState(NamedTuple):
    layers: tuple[State, ...]  # one cell state per decoder layer, each a tuple of [B, H]
    feed: Tensor  # [B, H] previous attentional hidden (zeros at the start)


def reorder(obj, index: Tensor):
    """Select rows `index` [B'] of every tensor in an EncoderOut / DecoderState / nested tuple."""
    if isinstance(obj, Tensor):
        return obj.index_select(0, index)
    if isinstance(obj, tuple):
        items = [reorder(item, index) for item in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    raise TypeError(f"cannot reorder {type(obj).__name__}")


class Seq2Seq(nn.Module):
    def __init__(self, cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg, src_vocab_size)
        self.decoder = Decoder(cfg, tgt_vocab_size)
        self.project = nn.Linear(cfg.hidden_size, cfg.emb_size, bias=False) \
            if cfg.tie_embeddings and cfg.emb_size != cfg.hidden_size else None
        self.generator = nn.Linear(cfg.emb_size if self.project else cfg.hidden_size,
                                   tgt_vocab_size)
        self.bridge = None
        if cfg.decoder_init == "bridge":  # tanh(W s + b) per decoder layer and state part
            parts = len(self.decoder.cells[0].initial_state(1, torch.device("cpu"),
                                                            torch.float32))
            self.bridge = nn.ModuleList(
                nn.ModuleList(nn.Linear(cfg.hidden_size, cfg.hidden_size) for _ in range(parts))
                for _ in self.decoder.cells)
        if cfg.init_range:
            for p in self.parameters():
                nn.init.uniform_(p, -cfg.init_range, cfg.init_range)
            for m in self.modules():  # gains of 1 +- 0.1, not +- 0.1: layer norms keep theirs
                if isinstance(m, nn.LayerNorm):
                    m.reset_parameters()
        if cfg.share_embeddings:
            if src_vocab_size != tgt_vocab_size:
                raise ConfigError(f"model.share_embeddings needs one vocabulary; the source has "
                                  f"{src_vocab_size} pieces, the target {tgt_vocab_size}: set "
                                  f"data.joint_vocab=true and data.prune_vocab=false")
            self.decoder.embed.weight = self.encoder.embed.weight
        if cfg.tie_embeddings:
            self.generator.weight = self.decoder.embed.weight
        with torch.no_grad():
            self.encoder.embed.weight[PAD].zero_()
            self.decoder.embed.weight[PAD].zero_()

    # -- the interface search uses -------------------------------------------------------------
    def encode(self, src: Tensor, src_lengths: Tensor) -> tuple[EncoderOut, DecoderState]:
        """src [B, S], src_lengths [B] -> encoder output and the decoder's initial state."""
        memory, finals = self.encoder(src, src_lengths)  # [B, S, H], per-layer states
        return self.encoded(memory, finals, src_lengths)

    def encoded(self, memory: Tensor, finals: list[State], src_lengths: Tensor
                ) -> tuple[EncoderOut, DecoderState]:
        """What encode makes of the encoder's output: attention keys and mask, the decoder's
        initial state (model.decoder_init) and input feed."""
        device = memory.device
        mask = length_mask(src_lengths, memory.shape[1], device)  # [B, S]
        layers = self.initial_layers(finals, memory, mask)
        if not self.training and torch.is_autocast_enabled(device.type):
            # searching under autocast: cast the memory once, not at every step's bmm
            memory = memory.to(torch.get_autocast_dtype(device.type))
        feed = memory.new_zeros(memory.shape[0], self.cfg.hidden_size)  # [B, H]
        keys = self.decoder.attention.keys(memory)
        return EncoderOut(memory, keys, mask), DecoderState(layers, feed)

    def initial_layers(self, finals: list[State], memory: Tensor, mask: Tensor
                       ) -> tuple[State, ...]:
        """The decoder layers' initial states (model.decoder_init): last: the encoder layers'
        final states (decoder layer i gets encoder layer min(i, last)); bridge: tanh of a
        learned layer of those; mean: every state part is the mean of the encoder's outputs
        over the real source positions; zero: the cells' initial states."""
        init, n_enc, cells = self.cfg.decoder_init, len(finals), self.decoder.cells
        if init == "zero":
            return tuple(cell.initial_state(memory.shape[0], memory.device, finals[0][0].dtype)
                         for cell in cells)
        if init == "mean":
            real = mask.unsqueeze(2).to(memory.dtype)  # [B, S, 1]
            mean = (memory * real).sum(1) / real.sum(1).clamp(min=1)  # [B, H]
            mean = mean.to(finals[0][0].dtype)
            return tuple(tuple(mean for _ in finals[0]) for _ in cells)
        layers = tuple(finals[min(i, n_enc - 1)] for i in range(len(cells)))
        if init == "bridge":
            layers = tuple(tuple(torch.tanh(linear(part)) for linear, part in zip(bridge, state))
                           for bridge, state in zip(self.bridge, layers))
        return layers

    def step(self, tokens: Tensor, enc: EncoderOut, state: DecoderState,
             vocab: Tensor | None = None) -> tuple[Tensor, DecoderState, Tensor]:
        """tokens [B] (previous target ids) -> (log-probabilities [B, V], state, attention [B, S]).
        With `vocab` (sorted target ids [V'], a shortlist) the log-probabilities are [B, V'],
        normalised over those ids only."""
        emb = self.decoder.dropout(self.decoder.embed(tokens))  # [B, E]
        out, layers, weights = self.decoder.step(emb, state.layers, state.feed, *enc)
        logits = self.logits(out, vocab)  # [B, V or V']
        log_probs = torch.log_softmax(logits, dim=-1, dtype=torch.float32)
        return log_probs, DecoderState(layers, out), weights

    @staticmethod
    def reorder(obj, index: Tensor):
        return reorder(obj, index)

    # -- training --------------------------------------------------------------------------------
    def logits(self, hidden: Tensor, vocab: Tensor | None = None) -> Tensor:
        """[..., H] -> [..., V] (or [..., V'] over the target ids `vocab` [V'])"""
        if self.project is not None:
            hidden = gemm.linear(hidden, self.project.weight)
        if vocab is None:
            return gemm.linear(hidden, self.generator.weight, self.generator.bias)
        return gemm.linear_rows(hidden, self.generator.weight, self.generator.bias, vocab)

    def forward(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher forcing: src [B, S], tgt_in [B, T] -> decoder outputs [B, T, H]
        (apply `logits` for [B, T, V]; `loss` does both)."""
        reset_all(self)  # locked dropout: new masks for this batch
        enc, state = self.encode(src, src_lengths)
        emb = self.decoder.dropout(self.decoder.word_dropout(self.decoder.embed(tgt_in)))
        layers, feed, outputs = state.layers, state.feed, []
        # each step's weight gradients become one GEMM over all steps (see s2s.ops.deferred)
        with deferred_weight_grads():
            # unbind: one backward node, not a zero-filled slice per step
            for emb_t in emb.unbind(1):
                feed, layers, _ = self.decoder.step(emb_t, layers, feed, *enc)
                outputs.append(feed)
        return torch.stack(outputs, dim=1)  # [B, T, H]

    def loss(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor, tgt_out: Tensor,
             label_smoothing: float = 0.0) -> tuple[Tensor, Tensor]:
        """(summed smoothed loss for the gradient, summed plain NLL for reporting), over
        non-pad target tokens."""
        hidden = self.forward(src, src_lengths, tgt_in)  # [B, T, H]
        gold = tgt_out.flatten()  # [B*T]
        keep = gold != PAD
        gold = gold[keep]  # [N] real target tokens only: no output layer work on padding
        logits = self.logits(hidden.flatten(0, 1)[keep]).float()  # [N, V]
        if not label_smoothing:
            nll = F.cross_entropy(logits, gold, reduction="sum")
            return nll, nll.detach()
        log_probs = torch.log_softmax(logits, dim=-1)  # [N, V]
        nll = -log_probs.gather(1, gold.unsqueeze(1)).sum()
        uniform = -log_probs.mean(dim=-1).sum()
        return (1 - label_smoothing) * nll + label_smoothing * uniform, nll.detach()
