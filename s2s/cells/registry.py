"""Cell discovery through the `s2s.cells` entry-point group.

Discovery lists entry points without importing them; only the cell a run asks for is imported,
so a broken plugin never breaks runs that use other cells. Nothing is registered by import side
effects, so every process (data-loader or distributed workers included) finds the same cells.
"""
from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from torch import nn

from s2s.errors import PluginError

GROUP = "s2s.cells"
CONTRACT_METHODS = ("initial_state", "step", "forward")


@dataclass(frozen=True)
class CellEntry:
    """One installed cell: where it comes from, not yet imported."""

    name: str
    value: str  # "module:Class"
    dist: str  # distribution that declares it
    version: str

    @property
    def origin(self) -> str:
        return f"cell '{self.name}' ({self.value}) from {self.dist} {self.version}"


_SCANS: dict[tuple[str, ...], list[CellEntry]] = {}


def _entries() -> list[CellEntry]:
    """The group's entry points, scanned once per sys.path (a scan costs ~30 ms)."""
    key = tuple(sys.path)
    if key not in _SCANS:
        _SCANS[key] = _scan()
    return _SCANS[key]


def _scan() -> list[CellEntry]:
    found: dict[tuple[str, str, str], CellEntry] = {}
    for ep in metadata.entry_points(group=GROUP):
        dist = getattr(ep, "dist", None)
        entry = CellEntry(ep.name, ep.value, dist.metadata["Name"] if dist else "?",
                          dist.version if dist else "?")
        # the same distribution seen twice on sys.path is one entry, not a conflict
        found.setdefault((entry.name, entry.value, entry.dist), entry)
    return sorted(found.values(), key=lambda e: (e.name, e.dist))


def discover() -> dict[str, list[CellEntry]]:
    """Every cell name -> the entries declaring it (more than one is a conflict)."""
    by_name: dict[str, list[CellEntry]] = {}
    for entry in _entries():
        by_name.setdefault(entry.name, []).append(entry)
    return by_name


def find(name: str) -> CellEntry:
    """The single entry for `name`, or a PluginError listing what exists / who conflicts."""
    by_name = discover()
    entries = by_name.get(name)
    if not entries:
        names = ", ".join(sorted(by_name)) or "(none: is s2s installed, e.g. `pip install -e .`?)"
        raise PluginError(f"unknown cell '{name}'; installed cells: {names}. Set model.cell to "
                          f"one of them or pip-install the package that provides '{name}'")
    if len(entries) > 1:
        both = "; ".join(e.origin for e in entries)
        raise PluginError(f"cell name '{name}' is declared by more than one distribution: {both}. "
                          f"Uninstall one of them")
    return entries[0]


def check_class(obj: Any, label: str) -> type[nn.Module]:
    """Check the class-level rules of the cell contract (an nn.Module subclass with the contract
    methods and `__init__(input_size, hidden_size, *, options...)`); returns `obj` or raises a
    PluginError whose message starts with `label`. s2s.testing.check_cell uses it too."""
    if not (inspect.isclass(obj) and issubclass(obj, nn.Module)):
        raise PluginError(f"{label}: a cell must be an nn.Module subclass, "
                          f"got {type(obj).__name__} {obj!r}")
    missing = [m for m in CONTRACT_METHODS if not callable(getattr(obj, m, None))]
    if missing:
        raise PluginError(f"{label}: missing method(s) {', '.join(missing)} of the cell "
                          f"contract (docs/plugins.md)")
    params = list(inspect.signature(obj.__init__).parameters.values())[1:]
    positional = [p.name for p in params
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if positional[:2] != ["input_size", "hidden_size"] or len(positional) != 2:
        raise PluginError(f"{label}: __init__ must take (input_size, hidden_size, *, "
                          f"options...), got ({', '.join(p.name for p in params)})")
    if any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params):
        raise PluginError(f"{label}: __init__ must list its options explicitly "
                          f"(no *args/**kwargs), so configs can be checked before training")
    return obj


def load(name: str) -> tuple[type[nn.Module], CellEntry]:
    """Import the cell class named `name` and check it against the contract."""
    entry = find(name)
    try:
        obj = metadata.EntryPoint(name=entry.name, value=entry.value, group=GROUP).load()
    except (Exception, SystemExit) as exc:  # a plugin calling sys.exit() at import, too
        raise PluginError(f"{entry.origin} failed to load: {type(exc).__name__}: {exc}. "
                          f"Fix or reinstall {entry.dist}, or choose another model.cell") from exc
    return check_class(obj, entry.origin), entry


def options_of(cls: type) -> dict[str, inspect.Parameter]:
    """The keyword options a cell's __init__ accepts."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return {p.name: p for p in params if p.kind == p.KEYWORD_ONLY}


def check_options(cls: type, entry: CellEntry, options: dict[str, Any]) -> None:
    known = options_of(cls)
    unknown = sorted(set(options) - set(known))
    if unknown:
        listing = ", ".join(known) or "none"
        raise PluginError(f"model.cell_options: {', '.join(unknown)} not accepted by "
                          f"{entry.origin}; its options: {listing}")


def build(name: str, input_size: int, hidden_size: int, options: dict[str, Any]) -> nn.Module:
    cls, entry = load(name)
    check_options(cls, entry, options)
    try:
        return cls(input_size, hidden_size, **options)
    except (Exception, SystemExit) as exc:
        raise PluginError(f"{entry.origin}: construction with options {options} failed: "
                          f"{type(exc).__name__}: {exc}") from exc


def status() -> list[tuple[CellEntry, str]]:
    """Every discovered cell with 'ok' or 'broken: why' (imports each one)."""
    rows = []
    by_name = discover()
    for name, entries in by_name.items():
        for entry in entries:
            if len(entries) > 1:
                rows.append((entry, f"broken: name '{name}' declared by {len(entries)} "
                                    f"distributions"))
                continue
            try:
                load(name)
                rows.append((entry, "ok"))
            except PluginError as exc:
                cause = exc.__cause__
                why = f"{type(cause).__name__}: {cause}" if cause else str(exc)
                rows.append((entry, f"broken: {why}"))
    return rows
