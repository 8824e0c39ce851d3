"""One error hierarchy. Every user mistake raises an S2SError subclass whose message says
what is wrong, where (file, line, key) and how to fix it; the CLI prints it as one line."""
from __future__ import annotations


class S2SError(Exception):
    """Base class of all errors caused by user input (files, configs, checkpoints, plugins)."""


class ConfigError(S2SError):
    """A config file, key or `--set` override is invalid."""


class DataError(S2SError):
    """A data file is missing, unreadable, misaligned or badly encoded."""


class PluginError(S2SError):
    """A cell plugin is unknown, cannot be imported or breaks the cell contract."""


class CheckpointError(S2SError):
    """A checkpoint or run directory is missing, corrupt, unsafe or incompatible."""


class TrainingError(S2SError):
    """Training cannot go on (e.g. the loss stays non-finite)."""
