"""Translator: load a run or checkpoint, batch input lines by length, search, detokenize and
restore input order — exactly one output line per input line, always.

Empty input lines give empty output lines; badly encoded bytes are replaced (with a warning);
lines longer than the source limit are truncated (with a warning). Only an unusable model or an
unreadable file is an error.
"""
from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

import torch

from s2s import checkpoint, config, devices, search
from s2s import precision as precisions
from s2s import shortlist as shortlists
from s2s.batching import collate
from s2s.errors import CheckpointError, ConfigError
from s2s.model import Seq2Seq
from s2s.options import DEFAULT_FREQUENT, DEFAULTS, source_limit
from s2s.tokenizer import Tokenizer

log = logging.getLogger("s2s")


def _batches(lengths: list[int], batch_size: int, max_tokens: int) -> Iterator[list[int]]:
    """Indices of non-empty inputs, longest first, in batches of at most `batch_size` sentences
    and (when max_tokens > 0) at most `max_tokens` padded source pieces."""
    todo = sorted((i for i, n in enumerate(lengths) if n), key=lambda i: -lengths[i])
    batch: list[int] = []
    for i in todo:
        too_many = max_tokens and batch and lengths[batch[0]] * (len(batch) + 1) > max_tokens
        if len(batch) >= batch_size or too_many:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def search_lines(model, tokenizer: Tokenizer, lines: list[str], opts: search.SearchOptions, *,
                 batch_size: int = 64, max_tokens: int = 0, max_src_len: int = 0,
                 first_line: int = 1, precision: str = "fp32", int8_cache: dict | None = None,
                 shortlist: tuple[dict, int, int] | None = None
                 ) -> tuple[list[list[int]], list[list[search.Hypothesis]]]:
    """Search every line (already decoded text): (source pieces, up to opts.nbest hypotheses)
    per line, in input order. An empty line gets one empty hypothesis; `max_src_len` > 0
    truncates longer sources (in pieces) with a warning. `precision` is a resolved one
    (fp32, bf16: autocast, int8: int8 products with weights packed into `int8_cache`).
    `shortlist` (lexicon, k, frequent): search each batch over its shortlist only."""
    pieces = tokenizer.encode_src(lines)
    for i, ids in enumerate(pieces):
        if max_src_len and len(ids) > max_src_len:
            log.warning("line %d: %d source pieces, truncated to %d", first_line + i, len(ids),
                        max_src_len)
            pieces[i] = ids[:max_src_len]
    results = [[search.Hypothesis([], 0.0, 0.0)] for _ in lines]
    members = _members(model)
    modes = [m.training for m in members]
    for m in members:
        m.eval()
    device = next(members[0].parameters()).device
    generator = search.sampler(opts, device)  # one per call: reproducible, no repeated draws
    try:
        for rows in _batches([len(p) for p in pieces], batch_size, max_tokens):
            batch = collate([pieces[i] for i in rows])
            vocab = None if shortlist is None else shortlists.select(shortlist[0], batch.src,
                                                                    *shortlist[1:]).to(device)
            with precisions.compute(precision, device, int8_cache=int8_cache):
                hyps = search.search(model, batch.src.to(device), batch.src_lengths, opts,
                                     generator, vocab)
            for i, found in zip(rows, hyps):
                results[i] = found
    finally:
        for m, mode in zip(members, modes):
            m.train(mode)
    return pieces, results


def _members(model) -> list:
    """The models of an Ensemble, or [model]."""
    return model.models if isinstance(model, search.Ensemble) else [model]


def _clean(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


def translate_lines(model, tokenizer: Tokenizer, lines: list[str], *, batch_size: int = 64,
                    max_src_len: int = 0, first_line: int = 1, **options) -> list[str]:
    """The best translation of each line (used by validation); one output per line. Options
    are SearchOptions' fields (their defaults there)."""
    opts = search.SearchOptions(**options)
    _, hyps = search_lines(model, tokenizer, lines, opts, batch_size=batch_size,
                           max_src_len=max_src_len, first_line=first_line)
    return [_clean(t) for t in tokenizer.decode_tgt([h[0].tokens for h in hyps])]


def decode_input_lines(stream: Iterable[bytes], first_line: int = 1) -> Iterator[str]:
    """Raw lines (a binary stream or a list) as text: one item per line, invalid UTF-8
    replaced (warned)."""
    for number, raw in enumerate(stream, start=first_line):
        raw = raw.rstrip(b"\n").rstrip(b"\r")
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            log.warning("line %d: invalid UTF-8 (%s), bytes replaced", number, exc.reason)
            yield raw.decode("utf-8", errors="replace")


class Translator:
    """Loaded model(s) ready to translate: `Translator.from_run(path).translate(lines, beam=5)`.
    Several checkpoints sharing their SentencePiece model(s) form an ensemble."""

    def __init__(self, model, tokenizer: Tokenizer, cfg: config.Config,
                 lexicon: dict | None = None, where: str = "the model",
                 lexicon_file: Path | None = None) -> None:
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        # the target-vocabulary lexicon of --shortlist (s2s.shortlist): the run's lexicon file
        # (`s2s lexicon`) if there is one, else the checkpoint's; read and checked on first use
        self._lexicon, self._lexicon_file, self.where = lexicon, lexicon_file, where
        self._lexicon_checked = False
        self._int8: dict = {}  # packed int8 weights (--precision int8), made on first use
        # search options of the run's serving.json (the recipe's tuned length penalty): used
        # where a call does not give them
        self.search_defaults: dict = {}
        for m in _members(model):
            m.eval()

    @classmethod
    def from_checkpoint(cls, payload: dict, where: str = "checkpoint",
                        lexicon_file: Path | None = None, device: str = "auto") -> Translator:
        """`lexicon_file`: a lexicon used instead of the checkpoint's, if it exists; `device`:
        where the model computes (s2s.devices: auto, cpu, cuda, cuda:N)."""
        target = devices.resolve(device)
        for key, kind in (("config", dict), ("spm", dict), ("model", dict)):
            if key not in payload:
                raise CheckpointError(f"{where}: missing entry '{key}'; not a complete s2s "
                                      f"checkpoint")
            if not isinstance(payload[key], kind):
                raise CheckpointError(f"{where}: entry '{key}' is a {type(payload[key]).__name__}"
                                      f", not a mapping; the checkpoint is damaged or was not "
                                      f"written by s2s")
        cfg = config.from_dict(payload["config"], source=f"{where}: stored config")
        try:
            tokenizer = Tokenizer.from_bytes(payload["spm"])
        except (ValueError, KeyError, TypeError) as exc:  # e.g. the kept ids are not JSON
            raise CheckpointError(f"{where}: the stored SentencePiece metadata is damaged "
                                  f"({type(exc).__name__}: {exc})") from exc
        model = Seq2Seq(cfg.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
        try:
            model.load_state_dict(payload["model"])
        except (RuntimeError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{where}: weights do not fit the stored model config: "
                                  f"{str(exc).splitlines()[0]}") from exc
        return cls(model.to(target), tokenizer, cfg, payload.get("lexicon"), where,
                   lexicon_file)

    @classmethod
    def from_run(cls, path: str | Path | list[str | Path], device: str = "auto"
                 ) -> Translator:
        """A run directory (its best, else last checkpoint) or a checkpoint file; a list of
        them is an ensemble. `device`: as for from_checkpoint (the checkpoint may come from
        any device)."""
        devices.resolve(device)  # a wrong device fails before any checkpoint is read
        paths = [path] if isinstance(path, (str, Path)) else list(path)
        from s2s import export

        if len(paths) == 1 and export.is_export(paths[0]):  # `s2s export`: onnxruntime
            return cls.from_export(paths[0])
        members = []
        for item in paths:
            file = checkpoint.resolve(item)
            payload = checkpoint.load(file)
            # a lexicon (re)built by `s2s lexicon` (runs from before lexicons were in
            # checkpoints have only that)
            lexicon = checkpoint.run_dir_of(file) / shortlists.LEXICON_FILE
            members.append((file, payload.get("spm"),
                            cls.from_checkpoint(payload, str(file), lexicon, device)))
        if len(members) == 1:
            record = checkpoint.serving(paths[0]) if Path(paths[0]).is_dir() else None
            if record is not None:
                members[0][2].search_defaults = dict(record["search"])
            return members[0][2]
        first_file, first_spm, first = members[0]
        for file, spm, _ in members[1:]:
            if spm != first_spm:
                raise CheckpointError(f"{file} and {first_file} do not share their SentencePiece "
                                      f"model(s); an ensemble's members must use the same "
                                      f"vocabularies")
        return cls(search.Ensemble([m.model for _, _, m in members]), first.tokenizer, first.cfg,
                   first._lexicon, first.where, first._lexicon_file)

    @classmethod
    def from_export(cls, directory: str | Path) -> Translator:
        """A folder written by `s2s export`: its ONNX graphs run by onnxruntime (CPU)."""
        from s2s import export

        model = export.OnnxModel(directory)  # it checks the manifest
        cfg = config.from_dict(model.manifest["config"], source=f"{directory}: manifest")
        return cls(model, Tokenizer.load(directory), cfg, None, str(directory))

    def search(self, lines: list[str], *, batch_size: int = 64, max_tokens: int = 0,
               max_src_len: int | None = None, first_line: int = 1, precision: str = "auto",
               shortlist: int = 0, shortlist_frequent: int = DEFAULT_FREQUENT,
               **options) -> list[list[dict]]:
        """Up to `nbest` results per line, best first: dicts with translation, score,
        log_prob (and with attention=True: alignment [target piece][source piece],
        source_pieces, target_pieces). Options are SearchOptions' fields (their defaults
        there); `max_src_len` None: source_limit(the run's config). `precision` is one
        of s2s.precision.INFER_CHOICES (auto: bf16 where the hardware has it natively, else
        fp32; int8: dynamic int8 products). `shortlist` k > 0: each batch searches only the
        k best translations of its source pieces (the run's lexicon) and the
        `shortlist_frequent` most frequent target pieces; scores are normalised over them."""
        opts = search.SearchOptions(**{**self.search_defaults, **options})
        lexicon = (self.lexicon(), shortlist, shortlist_frequent) if shortlist else None
        limit = source_limit(self.cfg) if max_src_len is None else max_src_len
        pieces, hyps = search_lines(self.model, self.tokenizer, lines, opts,
                                    batch_size=batch_size, max_tokens=max_tokens,
                                    max_src_len=limit, first_line=first_line,
                                    precision=self.resolve_precision(precision),
                                    int8_cache=self._int8, shortlist=lexicon)
        flat = [h for found in hyps for h in found]
        texts = iter(self.tokenizer.decode_tgt([h.tokens for h in flat]))
        out = []
        for src_ids, found in zip(pieces, hyps):
            items = []
            for h in found:
                item = {"translation": _clean(next(texts)), "score": h.score,
                        "log_prob": h.log_prob}
                if opts.attention:
                    item["source_pieces"] = self.tokenizer.src.pieces(src_ids)
                    item["target_pieces"] = self.tokenizer.tgt.pieces(h.tokens) + ["</s>"]
                    item["alignment"] = [[round(w, 4) for w in row[:len(src_ids)]]
                                         for row in (h.attention or [])]
                items.append(item)
            out.append(items)
        return out

    def translate(self, lines: list[str], **options) -> list[str]:
        """The best translation of each line; one output per line. Options: as for `search`."""
        return [items[0]["translation"] for items in self.search(lines, **options)]

    def lexicon(self) -> dict:
        """The target-vocabulary lexicon of --shortlist (CheckpointError if there is none)."""
        if not self._lexicon_checked:
            vocab = self.tokenizer.tgt_vocab_size
            found = shortlists.load(self._lexicon_file, vocab) if self._lexicon_file else None
            if found is None and self._lexicon is not None:
                found = shortlists.checked(self._lexicon, self.where, vocab)
            self._lexicon, self._lexicon_checked = found, True
        if self._lexicon is None:
            raise CheckpointError(f"--shortlist: {self.where} has no target-vocabulary lexicon "
                                  f"(trained before s2s had them); build one with `s2s lexicon "
                                  f"RUN`, or leave --shortlist off")
        return self._lexicon

    @property
    def device(self) -> torch.device:
        return next(_members(self.model)[0].parameters()).device

    def resolve_precision(self, precision: str = "auto") -> str:
        """`precision` (auto, fp32, bf16, int8) as it runs on this model's device."""
        from s2s.export import OnnxModel

        if isinstance(self.model, OnnxModel):  # onnxruntime runs the exported graphs in fp32
            if precision not in ("auto", "fp32"):
                raise ConfigError(f"--precision {precision}: an exported model ({self.where}) "
                                  f"runs in fp32 under onnxruntime; use auto or fp32")
            return "fp32"
        if precision == "int8" and self.device.type != "cpu":
            raise ConfigError(f"--precision int8 runs on CPU only; the model is on "
                              f"{self.device}")
        return precisions.resolve(precision, self.device, what="--precision")

    def score(self, sources: list[str], targets: list[str], *, batch_size: int = 64,
              precision: str = "auto") -> list[float]:
        """Forced decoding: log-probability of each target given its source (EOS included),
        computed in `precision` (as in `search`)."""
        resolved = self.resolve_precision(precision)
        src, tgt = self.tokenizer.encode_src(sources), self.tokenizer.encode_tgt(targets)
        out = [0.0] * len(sources)
        device = self.device
        for rows in _batches([max(len(s), 1) for s in src], batch_size, 0):
            batch = collate([src[i] for i in rows], [tgt[i] for i in rows])
            with precisions.compute(resolved, device, int8_cache=self._int8):
                totals = search.score(self.model, batch.src.to(device), batch.src_lengths,
                                      batch.tgt_in.to(device), batch.tgt_out.to(device))
            for i, value in zip(rows, totals.tolist()):
                out[i] = value
        return out

    def translate_stream(self, source: IO[bytes], sink: IO[str], *, window: int = 1024,
                         json_lines: bool = False, **options) -> int:
        """Translate a binary stream window by window, writing and flushing each window's lines
        as soon as it is done. A window is `window` lines (sorted by length into batches), or
        fewer when no more input is ready yet: an interactive producer gets its answers
        without closing the stream. Returns the number of lines written."""
        written = 0
        for raw_lines in read_batches(source, window):
            lines = list(decode_input_lines(raw_lines, first_line=written + 1))
            found = self.search(lines, first_line=written + 1, **options)
            for items in found:
                if json_lines:
                    record = {"line": written + 1, **items[0]}
                    if options.get("nbest", DEFAULTS.nbest) > 1:
                        record = {"line": written + 1, "nbest": items}
                    sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                else:
                    sink.write(items[0]["translation"] + "\n")
                written += 1
            sink.flush()
        return written


def read_batches(source: IO[bytes], max_lines: int) -> Iterator[list[bytes]]:
    """Raw lines of a binary stream in batches of up to `max_lines`; a batch is handed over
    early when the stream has no more data ready (pipes, terminals)."""
    import select

    try:
        fd = source.fileno()
        select.select([fd], [], [], 0)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        fd = None  # not a selectable stream (in-memory, some platforms): full batches only
    if fd is None or _is_regular(fd):
        batch: list[bytes] = []
        for line in source:
            batch.append(line)
            if len(batch) >= max_lines:
                yield batch
                batch = []
        if batch:
            yield batch
        return
    read = getattr(source, "read1", None) or (lambda n: os.read(fd, n))
    pending = b""
    batch = []
    while True:
        # with lines waiting: a short grace period lets a busy producer refill the pipe before
        # the window is handed over
        ready = select.select([fd], [], [], 0.02)[0] if batch else [fd]
        if not ready:  # nothing more right now: translate what we have
            yield batch
            batch = []
            continue
        chunk = read(1 << 16)
        if not chunk:
            break
        *lines, pending = (pending + chunk).split(b"\n")
        batch.extend(line + b"\n" for line in lines)
        while len(batch) >= max_lines:
            yield batch[:max_lines]
            batch = batch[max_lines:]
    if pending:
        batch.append(pending)
    if batch:
        yield batch


def _is_regular(fd: int) -> bool:
    import stat

    return stat.S_ISREG(os.fstat(fd).st_mode)


