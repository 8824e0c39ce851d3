"""Translator: load a run or checkpoint, batch input lines by length, search, detokenize and
restore input order — exactly one output line per input line, always.

Empty input lines give empty output lines; badly encoded bytes are replaced (with a warning);
lines longer than the source limit are truncated (with a warning). Only an unusable model or an
unreadable file is an error.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import IO, Iterable, Iterator

import torch

from s2s import checkpoint, config, search
from s2s.batching import collate
from s2s.errors import CheckpointError
from s2s.model import Seq2Seq
from s2s.tokenizer import Tokenizer

log = logging.getLogger("s2s")


def translate_lines(model: Seq2Seq, tokenizer: Tokenizer, lines: list[str], *, beam: int = 1,
                    batch_size: int = 64, max_src_len: int = 0, max_len_a: float = 2.0,
                    max_len_b: int = 10, first_line: int = 1) -> list[str]:
    """Translate `lines` (already decoded text) with `model` in eval mode; one output per line.
    `max_src_len` > 0 truncates longer sources (in pieces) with a warning."""
    pieces = tokenizer.encode_src(lines)
    for i, ids in enumerate(pieces):
        if max_src_len and len(ids) > max_src_len:
            log.warning("line %d: %d source pieces, truncated to %d", first_line + i, len(ids),
                        max_src_len)
            pieces[i] = ids[:max_src_len]
    outputs = [""] * len(lines)
    todo = sorted((i for i, ids in enumerate(pieces) if ids), key=lambda i: -len(pieces[i]))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for start in range(0, len(todo), batch_size):
            rows = todo[start:start + batch_size]
            batch = collate([pieces[i] for i in rows])
            hyps = search.search(model, batch.src.to(device), batch.src_lengths, beam=beam,
                                 max_len_a=max_len_a, max_len_b=max_len_b)
            for i, text in zip(rows, tokenizer.decode_tgt([h.tokens for h in hyps])):
                outputs[i] = text.replace("\r", " ").replace("\n", " ")
    finally:
        model.train(was_training)
    return outputs


def decode_input_lines(stream: IO[bytes], first_line: int = 1) -> Iterator[str]:
    """Lines of a binary stream as text: one item per line, invalid UTF-8 replaced (warned)."""
    for number, raw in enumerate(stream, start=first_line):
        raw = raw.rstrip(b"\n").rstrip(b"\r")
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            log.warning("line %d: invalid UTF-8 (%s), bytes replaced", number, exc.reason)
            yield raw.decode("utf-8", errors="replace")


class Translator:
    """A loaded model ready to translate. `Translator.from_run(path).translate(lines, beam=5)`."""

    def __init__(self, model: Seq2Seq, tokenizer: Tokenizer, cfg: config.Config) -> None:
        self.model, self.tokenizer, self.cfg = model.eval(), tokenizer, cfg

    @classmethod
    def from_checkpoint(cls, payload: dict, where: str = "checkpoint") -> "Translator":
        try:
            cfg = config.from_dict(payload["config"], source=f"{where}: stored config")
            tokenizer = Tokenizer.from_bytes(payload["spm"])
        except KeyError as exc:
            raise CheckpointError(f"{where}: missing entry {exc}; not a complete s2s "
                                  f"checkpoint") from exc
        model = Seq2Seq(cfg.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
        try:
            model.load_state_dict(payload["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"{where}: weights do not fit the stored model config: "
                                  f"{str(exc).splitlines()[0]}") from exc
        return cls(model, tokenizer, cfg)

    @classmethod
    def from_run(cls, path: str | Path) -> "Translator":
        """A run directory (its best, else last checkpoint) or a checkpoint file."""
        file = checkpoint.resolve(path)
        return cls.from_checkpoint(checkpoint.load(file), where=str(file))

    def translate(self, lines: list[str], *, beam: int = 1, batch_size: int = 64,
                  max_src_len: int | None = None, max_len_a: float = 2.0, max_len_b: int = 10,
                  first_line: int = 1) -> list[str]:
        limit = self.cfg.data.max_len * 2 if max_src_len is None else max_src_len
        return translate_lines(self.model, self.tokenizer, lines, beam=beam,
                               batch_size=batch_size, max_src_len=limit, max_len_a=max_len_a,
                               max_len_b=max_len_b, first_line=first_line)

    def translate_stream(self, source: IO[bytes], sink: IO[str], *, chunk_lines: int = 1024,
                         **options) -> int:
        """Translate a binary stream chunk by chunk, writing and flushing each chunk's lines.
        Returns the number of lines written."""
        written = 0
        chunk: list[str] = []
        for line in decode_input_lines(source):
            chunk.append(line)
            if len(chunk) >= chunk_lines:
                written += self._flush(chunk, sink, written, options)
                chunk = []
        if chunk:
            written += self._flush(chunk, sink, written, options)
        return written

    def _flush(self, chunk: list[str], sink: IO[str], written: int, options: dict) -> int:
        for text in self.translate(chunk, first_line=written + 1, **options):
            sink.write(text + "\n")
        sink.flush()
        return len(chunk)


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)
