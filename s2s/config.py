"""Configuration: frozen dataclasses are the only place defaults live.

A YAML file is loaded strictly (unknown keys and badly typed values are rejected with their key
path, every problem at once), then `--set a.b=value` overrides are applied the same way.
Values in `--set` are parsed as YAML scalars: `--set train.max_time=900 --set model.cell=gru`.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from s2s.errors import ConfigError


@dataclass(frozen=True)
class DataConfig:
    dir: str | None = None  # directory with {split}.{lang}[.gz], {split}.tsv or {split}.jsonl
    hub: str | None = None  # a 🤗 Hub dataset name instead of `dir` (needs network)
    hub_config: str | None = None
    src_lang: str = "en"
    tgt_lang: str = "de"
    train: str = "train"  # split names
    valid: str = "val"
    src_field: str | None = None  # TSV/JSONL/Hub field names; default: src_lang / tgt_lang
    tgt_field: str | None = None
    vocab_size: int = 8000
    spm_model_type: Literal["unigram", "bpe"] = "unigram"
    joint_vocab: bool = True
    prune_vocab: bool = True  # joint model: each side keeps only pieces seen on that side
    character_coverage: float = 1.0
    spm_input_sentence_size: int = 2_000_000  # sentences sampled to train SentencePiece
    max_len: int = 100  # training pairs with more pieces on either side are dropped


@dataclass(frozen=True)
class ModelConfig:
    cell: str = "lstm"  # an entry-point name in the `s2s.cells` group
    cell_options: dict = field(default_factory=dict)  # keyword options of the cell's __init__
    attention: Literal["general", "dot", "bahdanau"] = "general"
    emb_size: int = 256
    hidden_size: int = 512  # decoder size; a bidirectional encoder layer has hidden_size/2 per side
    layers: int = 1  # encoder and decoder layers, unless set separately below
    encoder_layers: int | None = None
    decoder_layers: int | None = None
    bidirectional: bool = True
    dropout: float = 0.3
    input_feeding: bool = True
    tie_embeddings: bool = False  # output layer shares the target embedding matrix
    init_range: float = 0.1  # uniform(-r, r) initialisation; 0 keeps the modules' defaults

    @property
    def n_encoder_layers(self) -> int:
        return self.encoder_layers or self.layers

    @property
    def n_decoder_layers(self) -> int:
        return self.decoder_layers or self.layers


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 64
    batch_type: Literal["sents", "tokens"] = "sents"  # tokens: count x (longer side + 1) budget
    max_steps: int = 0  # 0: no step budget
    max_time: float = 0.0  # seconds of training; 0: no time budget
    max_epochs: int = 0  # 0: no epoch budget
    optimizer: Literal["adam"] = "adam"
    lr: float = 1e-3
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 0.0
    clip_norm: float = 5.0  # 0: no clipping
    label_smoothing: float = 0.0
    normalization: Literal["tokens", "sents"] = "tokens"
    # auto: bf16 autocast where the hardware computes bf16 natively, else fp32 (s2s.precision)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    accum_steps: int = 1  # batches whose gradients are summed into one optimizer step
    schedule: Literal["constant", "plateau", "inverse_sqrt", "linear"] = "constant"
    warmup_steps: int = 0  # linear warm-up (constant, inverse_sqrt, linear schedules)
    decay_factor: float = 0.5  # plateau: lr *= decay_factor after `decay_patience` bad validations
    decay_patience: int = 2
    min_lr: float = 0.0
    log_every: int = 100
    checkpoint_every: int = 1000
    validate_every: int = 1000
    valid_bleu: bool = True  # greedy-decode the validation set and report BLEU/chrF
    valid_batch_size: int = 64
    metric: Literal["bleu", "chrf", "loss"] = "bleu"  # picks best checkpoints and early stopping
    patience: int = 0  # stop after this many validations without improvement; 0: never
    keep_last: int = 3  # periodic checkpoints kept (checkpoints/step-N.pt; last.pt: the newest)
    keep_best: int = 1  # best checkpoints kept by `metric` (best.pt links the best)
    max_nonfinite: int = 10  # non-finite losses in a row that stop the run (each is skipped)
    seed: int = 1234
    threads: int = 0  # torch intra-op threads; 0: torch's default


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


POSITIVE = {
    "data.vocab_size", "data.max_len", "data.spm_input_sentence_size", "model.emb_size",
    "model.hidden_size", "model.layers", "train.batch_size", "train.lr", "train.log_every",
    "train.checkpoint_every", "train.validate_every", "train.valid_batch_size",
    "train.accum_steps", "train.keep_last", "train.keep_best", "train.max_nonfinite",
}
NON_NEGATIVE = {
    "train.max_steps", "train.max_time", "train.max_epochs", "train.clip_norm",
    "train.weight_decay", "model.init_range", "train.threads", "train.warmup_steps",
    "train.patience", "train.min_lr", "train.decay_patience",
}
UNIT_INTERVAL = {"model.dropout", "train.label_smoothing", "train.decay_factor"}


def _type_ok(value: Any, hint: Any) -> tuple[bool, Any]:
    """Check `value` against a type hint; returns (ok, value coerced: int -> float only)."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return value in typing.get_args(hint), value
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(hint):
            ok, coerced = _type_ok(value, arm)
            if ok:
                return True, coerced
        return False, value
    if hint is type(None):
        return value is None, value
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is dict or origin is dict:
        return isinstance(value, dict), value
    return isinstance(value, hint), value


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


def _build(cls: type, raw: Mapping[str, Any], prefix: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if key not in names:
            known = ", ".join(sorted(names))
            problems.append(f"unknown key '{path}' (known keys here: {known})")
            continue
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, Mapping):
                problems.append(f"'{path}' must be a mapping of keys, got {value!r}")
                continue
            values[key] = _build(hint, value, f"{path}.", problems)
            continue
        ok, coerced = _type_ok(value, hint)
        if not ok:
            problems.append(f"'{path}' must be {_describe(hint)}, got {value!r}")
            continue
        if isinstance(coerced, (int, float)) and not isinstance(coerced, bool):
            if path in POSITIVE and coerced <= 0:
                problems.append(f"'{path}' must be > 0, got {coerced!r}")
            elif path in NON_NEGATIVE and coerced < 0:
                problems.append(f"'{path}' must be >= 0, got {coerced!r}")
            elif path in UNIT_INTERVAL and not 0 <= coerced < 1:
                problems.append(f"'{path}' must be in [0, 1), got {coerced!r}")
        values[key] = coerced
    try:
        return cls(**values)
    except TypeError as exc:  # only reachable through a bug: every key was checked above
        raise AssertionError(f"building {cls.__name__}: {exc}") from exc


def _check_cross_field(cfg: Config, problems: list[str]) -> None:
    if cfg.model.bidirectional and cfg.model.hidden_size % 2:
        problems.append(
            f"'model.hidden_size' must be even with a bidirectional encoder (each direction gets "
            f"half), got {cfg.model.hidden_size}"
        )
    for key in ("encoder_layers", "decoder_layers"):
        value = getattr(cfg.model, key)
        if value is not None and value <= 0:
            problems.append(f"'model.{key}' must be > 0 or null, got {value}")
    t = cfg.train
    if t.metric != "loss" and not t.valid_bleu:
        problems.append(f"'train.metric' {t.metric!r} needs 'train.valid_bleu: true' (validation "
                        f"decoding); set train.metric=loss or train.valid_bleu=true")
    if t.schedule == "linear" and not t.max_steps:
        problems.append("'train.schedule' 'linear' decays to 0 at train.max_steps: set "
                        "train.max_steps > 0")
    if t.schedule == "plateau" and t.warmup_steps:
        problems.append("'train.warmup_steps' is not used by the 'plateau' schedule: set it to 0 "
                        "or choose constant, inverse_sqrt or linear")


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (['a', 'b'], value parsed as a YAML scalar)."""
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.max_steps=1000")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string; users mean a number
        try:
            value = float(value) if value.strip().lower() not in ("nan", "inf", "-inf") else value
        except ValueError:
            pass
    return key.strip().split("."), value


def from_dict(raw: Mapping[str, Any], overrides: list[str] | tuple[str, ...] = (),
              source: str = "config") -> Config:
    """Build a Config from nested mappings plus `a.b=v` overrides; all problems at once."""
    merged: dict[str, Any] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in raw.items()}
    problems: list[str] = []
    for text in overrides:
        path, value = parse_override(text)
        node = merged
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = value
    cfg = _build(Config, merged, "", problems)
    if not problems:
        _check_cross_field(cfg, problems)
    if problems:
        listing = "\n  ".join(problems)
        raise ConfigError(f"{source}: {len(problems)} problem(s):\n  {listing}")
    return cfg


def load(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML config file (or only defaults when path is None) and apply overrides."""
    import yaml

    if path is None:
        return from_dict({}, overrides, source="--set")
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config {path}: cannot read it ({exc.strerror}); check the path") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config {path}: not UTF-8 text ({exc.reason})") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"config {where}: invalid YAML: {problem}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path}: the top level must be a mapping with sections "
                          f"data/model/train, got {type(raw).__name__}")
    return from_dict(raw, overrides, source=f"config {path}")


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump(cfg: Config, path: str | Path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
