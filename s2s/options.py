"""Decoding options: the one place their defaults, allowed values and help texts are written.

`SearchOptions` validates itself; `s2s translate`'s options, `Translator` and s2s.search take
their defaults from it. Torch-free (only dataclasses, typing and s2s.errors), so that s2s.cli
can import it at start-up.

A field's metadata: help (the `s2s translate` help text), choices (allowed values) or min /
max / min_open (allowed range; the field's type is its default's: int or float).
"""
from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

from s2s.errors import ConfigError

if TYPE_CHECKING:
    from s2s.config import Config

LengthPenalty = Literal["none", "average", "gnmt"]
LENGTH_PENALTIES: tuple[str, ...] = get_args(LengthPenalty)

DEFAULT_FREQUENT = 500  # --shortlist-frequent: the most frequent target pieces always kept
SOURCE_LIMIT_FACTOR = 2  # default source limit: this many times the training limit data.max_len


def source_limit(cfg: Config) -> int:
    """Source pieces a translation keeps by default (longer sources are truncated): twice the
    training limit data.max_len."""
    return SOURCE_LIMIT_FACTOR * cfg.data.max_len


def _meta(text: str, **allowed) -> dict:
    return {"help": text, **allowed}


@dataclass(frozen=True)
class SearchOptions:
    beam: int = field(default=1, metadata=_meta(
        "Hypotheses kept per sentence (1: greedy).", min=1))
    nbest: int = field(default=1, metadata=_meta(
        "Hypotheses returned per sentence (at most the beam; when sampling: samples).", min=1))
    length_penalty: LengthPenalty = field(default="none", metadata=_meta(
        "average: log-prob / length; gnmt: / ((5+len)/6)^alpha.", choices=LENGTH_PENALTIES))
    alpha: float = field(default=0.6, metadata=_meta(
        "Exponent of the gnmt length penalty.", min=0))
    coverage_penalty: float = field(default=0.0, metadata=_meta(
        "GNMT coverage penalty beta (0: off).", min=0))
    min_len: int = field(default=0, metadata=_meta(
        "Output pieces before EOS is allowed.", min=0))
    max_len_a: float = field(default=2.0, metadata=_meta(
        "Output limit: a * source pieces + b (EOS included).", min=0))
    max_len_b: int = field(default=10, metadata=_meta(
        "Output limit: a * source pieces + b (EOS included).", min=0))
    sampling: bool = field(default=False, metadata=_meta("Sample instead of searching."))
    temperature: float = field(default=1.0, metadata=_meta(
        "Sampling: divides the log-probabilities.", min=0, min_open=True))
    top_k: int = field(default=0, metadata=_meta(
        "Sampling: only the k most probable pieces (0: the whole vocabulary).", min=0))
    top_p: float = field(default=1.0, metadata=_meta(
        "Sampling: only the most probable pieces whose probabilities sum to p (nucleus).",
        min=0, min_open=True, max=1))
    seed: int | None = field(default=None, metadata=_meta("Seed for sampling."))
    attention: bool = field(default=False, metadata=_meta(
        "Return each hypothesis's attention weights."))

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check(f.name, getattr(self, f.name))


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(SearchOptions)}


def check(name: str, value) -> None:
    """ConfigError (naming the option, the value and what is allowed) unless `value` is allowed
    for SearchOptions field `name`."""
    meta = FIELDS[name].metadata
    if "choices" in meta:
        if value not in meta["choices"]:
            raise ConfigError(f"{name} {value!r} is not one of {', '.join(meta['choices'])}")
        return
    if "min" not in meta and "max" not in meta:
        return
    integer = isinstance(FIELDS[name].default, int)
    kind = numbers.Integral if integer else numbers.Real
    lo, hi, lo_open = meta.get("min"), meta.get("max"), meta.get("min_open", False)
    ok = isinstance(value, kind) and not isinstance(value, bool)
    ok = ok and (lo is None or (value > lo if lo_open else value >= lo))
    ok = ok and (hi is None or value <= hi)
    if not ok:
        raise ConfigError(f"{name} {value!r} is not {_allowed(integer, lo, hi, lo_open)}")


def _allowed(integer: bool, lo, hi, lo_open: bool) -> str:
    """'an integer >= 1', 'a number > 0', 'a number in (0, 1]'."""
    kind = "an integer" if integer else "a number"
    if lo is not None and hi is not None:
        return f"{kind} in {'(' if lo_open else '['}{lo}, {hi}]"
    if lo is not None:
        return f"{kind} {'>' if lo_open else '>='} {lo}"
    return f"{kind} <= {hi}"


DEFAULTS = SearchOptions()
