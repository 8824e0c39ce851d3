"""The encoder-decoder: embeddings -> encoder -> attention -> input-feeding decoder -> output."""
from __future__ import annotations

from s2s.model.seq2seq import DecoderState, EncoderOut, Seq2Seq

__all__ = ["DecoderState", "EncoderOut", "Seq2Seq"]
