"""Configuration: frozen dataclasses are the only place defaults live.

A YAML file is loaded strictly (unknown keys and badly typed values are rejected with their key
path, every problem at once), then `--set a.b=value` overrides are applied the same way.
Values in `--set` are parsed as YAML scalars: `--set train.max_time=900 --set model.cell=gru`.
"""
from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from s2s import devices
from s2s.configparse import describe_type, parse_override, shown, strict_loader, type_ok
from s2s.errors import ConfigError

# the range rules a numeric field may carry (metadata "rule"), checked by `_build`
RULES = {"positive": ("> 0", lambda v: v > 0), "non_negative": (">= 0", lambda v: v >= 0),
         "unit_interval": ("in [0, 1)", lambda v: 0 <= v < 1),
         "fraction": ("in (0, 1]", lambda v: 0 < v <= 1),
         "seed": ("in [0, 2**32)", lambda v: 0 <= v < 2 ** 32)}


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
    share_embeddings: bool = _f(False, "encoder and decoder share one embedding matrix (needs "
                                       "data.joint_vocab, data.prune_vocab false); with "
                                       "tie_embeddings: three-way tying")
    residual: bool = _f(False, "stacked layers after the first add their input to their "
                               "output (encoder and decoder)")
    locked_dropout: bool = _f(False, "variational dropout: one mask per sequence, the same at "
                                     "every time step, for embeddings, between layers and on "
                                     "outputs")
    recurrent_dropout: float = _f(0.0, "variational dropout on the recurrent state h fed back "
                                       "into each cell (one mask per sequence); the encoder "
                                       "then steps its cells one time step at a time",
                                  "unit_interval")
    word_dropout: float = _f(0.0, "drops whole source and target words in training (their "
                                  "embedding is zeroed, the rest scaled)", "unit_interval")
    decoder_init: Literal["last", "mean", "zero", "bridge"] = _f(
        "last", "the decoder's initial state: the encoder's last states, the mean of its "
                "outputs, zeros, or tanh(a learned layer of the last states)")
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
    schedule: Literal["constant", "plateau", "inverse_sqrt", "linear", "cosine"] = _f(
        "constant", "learning-rate schedule; linear and cosine decay to min_lr over the budget "
                    "(max_steps or max_time, whichever runs out first)")
    warmup_steps: int = _f(0, "linear warm-up steps (constant, inverse_sqrt, linear, cosine)",
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
    average_last: int = _f(0, "after training: average the newest N periodic checkpoints "
                              "into RUN/averaged.pt (0: none)", "non_negative")
    tune_length_penalty: bool = _f(False, "after training: pick the checkpoint (best or "
                                          "averaged) and gnmt alpha by beam BLEU on the "
                                          "validation set; translate RUN uses them")
    tune_beam: int = _f(5, "the beam of tune_length_penalty", "positive")
    max_nonfinite: int = _f(10, "non-finite losses in a row that stop the run (each is "
                                "skipped)", "positive", resumable=True)
    seed: int = _f(1234, "seed of initialisation, batching and dropout", "seed")
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
                problems.append(f"'{path}' must be a mapping of keys, got {shown(value)}")
                continue
            values[key] = _build(hint, value, f"{path}.", problems)
            continue
        ok, coerced = type_ok(value, hint)
        if not ok:
            problems.append(f"'{path}' must be {describe_type(hint)}, got {shown(value)}")
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
    if t.schedule in ("linear", "cosine") and not (t.max_steps or t.max_time):
        problems.append(f"'train.schedule' {t.schedule!r} decays over the budget: set "
                        f"train.max_steps or train.max_time > 0")
    if t.average_last > t.keep_last:
        problems.append(f"'train.average_last' {t.average_last} averages more checkpoints than "
                        f"train.keep_last={t.keep_last} keeps: raise keep_last")
    if t.tune_length_penalty and not t.valid_bleu:
        problems.append("'train.tune_length_penalty' needs 'train.valid_bleu: true'")
    m, d = cfg.model, cfg.data
    if m.share_embeddings and not (d.joint_vocab and not d.prune_vocab):
        problems.append("'model.share_embeddings' needs one vocabulary for both sides: set "
                        "data.joint_vocab=true and data.prune_vocab=false")
    if t.schedule == "plateau" and t.warmup_steps:
        problems.append("'train.warmup_steps' is not used by the 'plateau' schedule: set it to 0 "
                        "or choose constant, inverse_sqrt or linear")


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
        raw = yaml.load(text, Loader=strict_loader())
    except RecursionError as exc:
        raise ConfigError(f"config {path}: nested too deeply to be an s2s config (a mapping "
                          f"of sections data/model/train)") from exc
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
