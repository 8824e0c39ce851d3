"""SentencePiece tokenization: train, load, encode, decode. Owns the special ids.

With a joint SentencePiece model each side's vocabulary is, by default, pruned to the pieces that
occur on that side of the training data (`data.prune_vocab`): a German piece never seen in the
source needs no source embedding, and an English piece never seen in the target needs no output
row. Model ids then differ from SentencePiece ids; the Tokenizer maps between them.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from s2s.config import DataConfig
from s2s.errors import CheckpointError, DataError

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIALS = (PAD, UNK, BOS, EOS)
JOINT, SRC, TGT = "spm.model", "spm.src.model", "spm.tgt.model"
KEPT = "vocab.json"  # the SentencePiece ids each side keeps, when pruned


def _processor(path: Path | None = None, proto: bytes | None = None):
    import sentencepiece as spm

    try:
        if proto is not None:
            return spm.SentencePieceProcessor(model_proto=proto)
        return spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError, TypeError) as exc:
        where = path or "in the checkpoint"
        raise CheckpointError(f"SentencePiece model {where} cannot be loaded ({exc}); "
                              f"the run directory or checkpoint is incomplete or corrupt") from exc


def _train_model(lines: Iterator[str], prefix: Path, cfg: DataConfig) -> None:
    import sentencepiece as spm

    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=lines, model_prefix=str(prefix), vocab_size=cfg.vocab_size,
            model_type=cfg.spm_model_type, character_coverage=cfg.character_coverage,
            input_sentence_size=cfg.spm_input_sentence_size, shuffle_input_sentence=True,
            pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS, hard_vocab_limit=False,
            num_threads=min(2, os.cpu_count() or 1), minloglevel=2,
        )
    except RuntimeError as exc:
        raise DataError(f"training SentencePiece ({prefix.name}) failed: {exc}. Check "
                        f"data.vocab_size against the amount of training text") from exc
    (prefix.parent / f"{prefix.name}.vocab").unlink(missing_ok=True)


class Side:
    """One side's SentencePiece processor and, if pruned, the SentencePiece ids it keeps
    (model id i <-> SentencePiece id kept[i]; pieces not kept encode as UNK)."""

    def __init__(self, processor, kept: list[int] | None = None) -> None:
        ids = (processor.pad_id(), processor.unk_id(), processor.bos_id(), processor.eos_id())
        if ids != SPECIALS:
            raise CheckpointError(f"SentencePiece model has special ids {ids}, s2s needs "
                                  f"pad/unk/bos/eos = {SPECIALS}")
        self.processor, self.kept = processor, kept
        if kept is not None:
            if list(kept[:4]) != list(SPECIALS):
                raise CheckpointError("pruned vocabulary must start with the special ids")
            self.to_model = np.full(processor.get_piece_size(), UNK, dtype=np.int64)
            self.to_model[np.asarray(kept)] = np.arange(len(kept))
            self.to_spm = np.asarray(kept, dtype=np.int64)

    @property
    def size(self) -> int:
        return len(self.kept) if self.kept is not None else self.processor.get_piece_size()

    def encode(self, lines: list[str]) -> list[list[int]]:
        ids = self.processor.encode(lines)
        if self.kept is None:
            return ids
        return [self.to_model[np.asarray(s, dtype=np.int64)].tolist() if s else [] for s in ids]

    def decode(self, ids: list[list[int]]) -> list[str]:
        if self.kept is not None:
            ids = [self.to_spm[np.asarray(s, dtype=np.int64)].tolist() if s else [] for s in ids]
        return self.processor.decode(ids)

    def pieces(self, ids: list[int]) -> list[str]:
        """Model ids -> piece strings."""
        spm_ids = self.to_spm[np.asarray(ids, dtype=np.int64)].tolist() \
            if self.kept is not None and ids else ids
        return [self.processor.id_to_piece(int(i)) for i in spm_ids]

    def seen(self, lines: Iterable[str], chunk: int = 10_000) -> list[int]:
        """Sorted SentencePiece ids occurring in `lines`, specials included."""
        found = np.zeros(self.processor.get_piece_size(), dtype=bool)
        found[list(SPECIALS)] = True
        batch: list[str] = []
        for line in lines:
            batch.append(line)
            if len(batch) >= chunk:
                for ids in self.processor.encode(batch):
                    found[ids] = True
                batch = []
        for ids in self.processor.encode(batch):
            found[ids] = True
        return np.flatnonzero(found).tolist()


class Tokenizer:
    """Source and target sides (sharing one SentencePiece model when the vocabulary is joint)."""

    def __init__(self, src: Side, tgt: Side) -> None:
        self.src, self.tgt = src, tgt

    @property
    def src_vocab_size(self) -> int:
        return self.src.size

    @property
    def tgt_vocab_size(self) -> int:
        return self.tgt.size

    @classmethod
    def train(cls, src_lines: Iterable[str], tgt_lines: Iterable[str], cfg: DataConfig,
              out_dir: str | Path) -> Tokenizer:
        """Train SentencePiece on the training text (iterables are read twice when pruning)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if iter(src_lines) is src_lines:  # a one-shot iterator cannot be read twice
            src_lines = list(src_lines)
        if iter(tgt_lines) is tgt_lines:
            tgt_lines = list(tgt_lines)
        if cfg.joint_vocab:
            both = (line for lines in (src_lines, tgt_lines) for line in lines if line)
            _train_model(both, out / JOINT.removesuffix(".model"), cfg)
            if cfg.prune_vocab:
                joint = Side(_processor(out / JOINT))
                kept = {"src": joint.seen(src_lines), "tgt": joint.seen(tgt_lines)}
                (out / KEPT).write_text(json.dumps(kept), encoding="utf-8")
        else:
            _train_model((s for s in src_lines if s), out / SRC.removesuffix(".model"), cfg)
            _train_model((t for t in tgt_lines if t), out / TGT.removesuffix(".model"), cfg)
        return cls.load(out)

    @staticmethod
    def copy(src_dir: str | Path, dst_dir: str | Path) -> None:
        """Copy the SentencePiece files of a run directory (or a cache entry) to another."""
        import shutil

        Path(dst_dir).mkdir(parents=True, exist_ok=True)
        for name in (JOINT, SRC, TGT, KEPT):
            if (Path(src_dir) / name).is_file():
                shutil.copyfile(Path(src_dir) / name, Path(dst_dir) / name)

    @classmethod
    def exists(cls, run_dir: str | Path) -> bool:
        run = Path(run_dir)
        return (run / JOINT).is_file() or ((run / SRC).is_file() and (run / TGT).is_file())

    @classmethod
    def load(cls, run_dir: str | Path) -> Tokenizer:
        run = Path(run_dir)
        if (run / JOINT).is_file():
            return cls.from_bytes({"joint": (run / JOINT).read_bytes(),
                                   **({"kept": (run / KEPT).read_text(encoding="utf-8")}
                                      if (run / KEPT).is_file() else {})})
        if (run / SRC).is_file() and (run / TGT).is_file():
            return cls.from_bytes({"src": (run / SRC).read_bytes(),
                                   "tgt": (run / TGT).read_bytes()})
        raise CheckpointError(f"{run}: no SentencePiece model ({JOINT}, or {SRC} and {TGT}); "
                              f"point at a run directory written by `s2s train`")

    def to_bytes(self) -> dict[str, bytes | str]:
        """Serialized model(s) (+ kept ids), stored in checkpoints: a checkpoint is
        self-contained."""
        if self.src.processor is self.tgt.processor:
            blobs: dict[str, bytes | str] = {"joint": self.src.processor.serialized_model_proto()}
            if self.src.kept is not None:
                blobs["kept"] = json.dumps({"src": self.src.kept, "tgt": self.tgt.kept})
            return blobs
        return {"src": self.src.processor.serialized_model_proto(),
                "tgt": self.tgt.processor.serialized_model_proto()}

    @classmethod
    def from_bytes(cls, blobs: dict) -> Tokenizer:
        if "joint" in blobs:
            joint = _processor(proto=blobs["joint"])
            kept = json.loads(blobs["kept"]) if "kept" in blobs else {"src": None, "tgt": None}
            return cls(Side(joint, kept["src"]), Side(joint, kept["tgt"]))
        if "src" in blobs and "tgt" in blobs:
            return cls(Side(_processor(proto=blobs["src"])), Side(_processor(proto=blobs["tgt"])))
        raise CheckpointError("checkpoint holds no SentencePiece model")

    def encode_src(self, lines: list[str]) -> list[list[int]]:
        return self.src.encode(lines)

    def encode_tgt(self, lines: list[str]) -> list[list[int]]:
        return self.tgt.encode(lines)

    def decode_tgt(self, ids: list[list[int]]) -> list[str]:
        return self.tgt.decode(ids)
