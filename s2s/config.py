"""Configuration: frozen dataclasses are the only place defaults live.

A YAML file is loaded strictly (unknown keys and badly typed values are rejected with their key
path, every problem at once), then `--set a.b=value` overrides are applied the same way.
Values in `--set` are parsed as YAML scalars: `--set train.max_time=900 --set model.cell=gru`.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from s2s import devices
from s2s.errors import ConfigError

# the range rules a numeric field may carry (metadata "rule"), checked by `_build`
RULES = {"positive": ("> 0", lambda v: v > 0), "non_negative": (">= 0", lambda v: v >= 0),
         "unit_interval": ("in [0, 1)", lambda v: 0 <= v < 1),
         "fraction": ("in (0, 1]", lambda v: 0 < v <= 1)}


def _f(default: Any = dataclasses.MISSING, help: str = "", rule: str | None = None, *,
       resumable: bool = False, factory: Any = dataclasses.MISSING) -> Any:
    """A config field with its one-line help, its range rule (a key of RULES) and whether a
    resumed run may change it."""
    assert rule is None or rule in RULES, rule
    return field(default=default, default_factory=factory,
                 metadata={"help": help, "rule": rule, "resumable": resumable})


@dataclass(frozen=True)
class DataConfig:
    dir: str | None = _f(None, "directory with {split}.{lang}[.gz], {split}.tsv or "
                               "{split}.jsonl files")
    hub: str | None = _f(None, "a 🤗 Hub dataset name instead of `dir` (needs network)")
    hub_config: str | None = _f(None, "the Hub dataset's configuration name")
    src_lang: str = _f("en", "source language code (file suffix / field name)")
    tgt_lang: str = _f("de", "target language code (file suffix / field name)")
    train: str = _f("train", "name of the training split")
    valid: str = _f("val", "name of the validation split")
    src_field: str | None = _f(None, "TSV/JSONL/Hub source field name; default: src_lang")
    tgt_field: str | None = _f(None, "TSV/JSONL/Hub target field name; default: tgt_lang")
    vocab_size: int = _f(8000, "SentencePiece pieces (per model)", "positive")
    spm_model_type: Literal["unigram", "bpe"] = _f("unigram", "SentencePiece model type")
    joint_vocab: bool = _f(True, "one SentencePiece model for both sides")
    prune_vocab: bool = _f(True, "joint model: each side keeps only the pieces seen on it")
    character_coverage: float = _f(1.0, "SentencePiece character coverage", "fraction")
    spm_input_sentence_size: int = _f(1_000_000, "sentences sampled to train SentencePiece "
                                                 "(its memory grows with them)",
                                      "positive")
    max_len: int = _f(100, "training pairs with more pieces on either side are dropped; "
                           "translate truncates sources at twice this", "positive")


@dataclass(frozen=True)
class ModelConfig:
    cell: str = _f("lstm", "recurrent cell: an entry-point name in the `s2s.cells` group "
                           "(`s2s plugins` lists them)")
    cell_options: dict = _f(help="keyword options of the cell's __init__", factory=dict)
    attention: Literal["general", "dot", "bahdanau"] = _f("general", "attention score")
    emb_size: int = _f(256, "embedding size", "positive")
    hidden_size: int = _f(512, "decoder size; a bidirectional encoder layer has half per side",
                          "positive")
    layers: int = _f(1, "encoder and decoder layers, unless set separately", "positive")
    encoder_layers: int | None = _f(None, "encoder layers (null: `layers`)")
    decoder_layers: int | None = _f(None, "decoder layers (null: `layers`)")
    bidirectional: bool = _f(True, "bidirectional encoder")
    dropout: float = _f(0.3, "dropout on embeddings, between layers and on outputs",
                        "unit_interval")
    input_feeding: bool = _f(True, "feed the previous attentional state to the decoder")
    tie_embeddings: bool = _f(False, "the output layer shares the target embedding matrix")
    init_range: float = _f(0.1, "uniform(-r, r) initialisation; 0 keeps the modules' defaults",
                           "non_negative")

    @property
    def n_encoder_layers(self) -> int:
        return self.encoder_layers or self.layers

    @property
    def n_decoder_layers(self) -> int:
        return self.decoder_layers or self.layers


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = _f(64, "sentences per batch, or tokens with batch_type tokens", "positive")
    batch_type: Literal["sents", "tokens"] = _f(
        "sents", "tokens: a budget of sentences x (longer side + 1)")
    max_steps: int = _f(0, "step budget; 0: none", "non_negative", resumable=True)
    max_time: float = _f(0.0, "seconds of training; 0: no time budget", "non_negative",
                         resumable=True)
    max_epochs: int = _f(0, "epoch budget; 0: none", "non_negative", resumable=True)
    optimizer: Literal["adam", "adamw", "sgd"] = _f(
        "adam", "adam, adamw (decoupled weight decay) or sgd (with `momentum`)")
    lr: float = _f(1e-3, "learning rate (peak, after warm-up)", "positive")
    adam_beta1: float = _f(0.9, "adam/adamw beta1", "unit_interval")
    adam_beta2: float = _f(0.999, "adam/adamw beta2", "unit_interval")
    momentum: float = _f(0.0, "sgd momentum", "unit_interval")
    weight_decay: float = _f(0.0, "L2 penalty (adam, sgd) or decoupled decay (adamw)",
                             "non_negative")
    clip_norm: float = _f(5.0, "gradient norm clipping; 0: none", "non_negative")
    label_smoothing: float = _f(0.0, "label smoothing of the training loss", "unit_interval")
    normalization: Literal["tokens", "sents"] = _f(
        "tokens", "the loss is divided by the batch's target tokens or sentences")
    precision: Literal["auto", "fp32", "bf16"] = _f(
        "auto", "auto: bf16 autocast where the hardware computes bf16 natively, else fp32",
        resumable=True)
    accum_steps: int = _f(1, "batches whose gradients are summed into one optimizer step",
                          "positive")
    schedule: Literal["constant", "plateau", "inverse_sqrt", "linear"] = _f(
        "constant", "learning-rate schedule")
    warmup_steps: int = _f(0, "linear warm-up steps (constant, inverse_sqrt, linear)",
                           "non_negative")
    decay_factor: float = _f(0.5, "plateau: lr *= decay_factor after decay_patience bad "
                                  "validations", "unit_interval")
    decay_patience: int = _f(2, "plateau: bad validations before a decay", "non_negative")
    min_lr: float = _f(0.0, "the learning rate's floor", "non_negative")
    log_every: int = _f(100, "steps between logged training values", "positive",
                        resumable=True)
    checkpoint_every: int = _f(1000, "steps between checkpoints", "positive", resumable=True)
    validate_every: int = _f(1000, "steps between validations", "positive", resumable=True)
    valid_bleu: bool = _f(True, "greedy-decode the validation set and report BLEU/chrF")
    valid_batch_size: int = _f(64, "validation sentences per batch", "positive",
                               resumable=True)
    metric: Literal["bleu", "chrf", "loss"] = _f(
        "bleu", "picks the best checkpoints and drives early stopping")
    patience: int = _f(0, "stop after this many validations without improvement; 0: never",
                       "non_negative", resumable=True)
    keep_last: int = _f(3, "periodic checkpoints kept (last.pt: the newest)", "positive",
                        resumable=True)
    keep_best: int = _f(1, "best checkpoints kept by `metric` (best.pt: the best)",
                        "positive", resumable=True)
    max_nonfinite: int = _f(10, "non-finite losses in a row that stop the run (each is "
                                "skipped)", "positive", resumable=True)
    seed: int = _f(1234, "seed of initialisation, batching and dropout")
    threads: int = _f(0, "torch intra-op threads; 0: torch's default", "non_negative",
                      resumable=True)
    device: str = _f("auto", "where training computes: auto (CUDA when available, else the "
                             "CPU), cpu, cuda or cuda:N", resumable=True)


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def fields_of(cls: type = Config, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field]]:
    """(dotted key, field) of every config key, in declaration order."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from fields_of(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f


# config keys a resumed run may change; any other difference refuses the resume
RESUMABLE = frozenset(key for key, f in fields_of() if f.metadata.get("resumable"))


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
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    names = set(by_name)
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
        rule = by_name[key].metadata.get("rule")
        if rule and isinstance(coerced, (int, float)) and not isinstance(coerced, bool):
            text, ok = RULES[rule]
            if not ok(coerced):
                problems.append(f"'{path}' must be {text}, got {coerced!r}")
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
    if devices.problem(t.device):
        problems.append(f"'train.device' {devices.problem(t.device)}")
    if t.metric != "loss" and not t.valid_bleu:
        problems.append(f"'train.metric' {t.metric!r} needs 'train.valid_bleu: true' (validation "
                        f"decoding); set train.metric=loss or train.valid_bleu=true")
    if t.schedule == "linear" and not t.max_steps:
        problems.append("'train.schedule' 'linear' decays to 0 at train.max_steps: set "
                        "train.max_steps > 0")
    if t.schedule == "plateau" and t.warmup_steps:
        problems.append("'train.warmup_steps' is not used by the 'plateau' schedule: set it to 0 "
                        "or choose constant, inverse_sqrt or linear")


def _strict_loader():
    """yaml.SafeLoader that rejects a key given twice in one mapping (PyYAML keeps the last
    silently), with the line of the second one."""
    import yaml

    class Strict(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    hash(key)
                except TypeError:
                    continue  # SafeLoader itself reports an unhashable key
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} given twice in one mapping; keep one",
                        key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return Strict


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
        raise ConfigError(f"config {path}: cannot read it ({exc.strerror}); check the "
                          f"path") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config {path}: not UTF-8 text ({exc.reason})") from exc
    try:
        raw = yaml.load(text, Loader=_strict_loader())
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


def flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as {dotted key: value} (cell_options stays one value)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "cell_options":
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def dump(cfg: Config, path: str | Path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")


def describe(cfg: Config) -> str:
    """`cfg` as YAML that `load` reads back: every key with its one-line help, and its default
    where the value differs from it."""
    import yaml

    def scalar(value: Any) -> str:
        text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
        return text[:-3].strip() if text.endswith("...") else text

    defaults, lines, section = Config(), [], ""
    for key, f in fields_of():
        head, name = key.split(".")
        if head != section:
            lines.append(f"{head}:")
            section = head
        value = getattr(getattr(cfg, head), name)
        default = getattr(getattr(defaults, head), name)
        note = f" (default: {scalar(default)})" if value != default else ""
        lines.append(f"  {name}: {scalar(value)}  # {f.metadata['help']}{note}")
    return "\n".join(lines) + "\n"
