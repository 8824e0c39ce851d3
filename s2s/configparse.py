"""Parsing helpers of s2s.config: type checks against the dataclasses' hints, a YAML loader
that rejects duplicate keys, and `--set KEY=VALUE` parsing."""
from __future__ import annotations

import types
import typing
from typing import Any, Literal

from s2s.errors import ConfigError


def type_ok(value: Any, hint: Any) -> tuple[bool, Any]:
    """Check `value` against a type hint; returns (ok, value coerced: int -> float only)."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return value in typing.get_args(hint), value
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(hint):
            ok, coerced = type_ok(value, arm)
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


def describe_type(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


def strict_loader():
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


def shown(value: Any) -> str:
    """A value as error messages show it: repr, cut short (a YAML anchor bomb expands to a
    huge structure; reprlib never builds the whole text)."""
    import reprlib

    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlevel, r.maxlist, r.maxdict = 60, 60, 2, 4, 4
    return r.repr(value)
