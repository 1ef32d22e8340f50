"""Errors that the CLI reports as one line (no traceback) with a non-zero exit."""

from __future__ import annotations


class MemeguardError(Exception):
    """Base class: a problem with the user's input or configuration, not a bug."""


class DataError(MemeguardError):
    """Bad dataset input; the message names the file and line (or the meme id)."""


class FeatureStoreError(MemeguardError):
    """A feature store or feature file that is missing, truncated or inconsistent."""


class CheckpointError(MemeguardError):
    """A checkpoint that cannot be loaded (unknown layout, missing or unexpected keys)."""


class ConfigError(MemeguardError):
    """A bad model, training, recipe or ensemble configuration."""


class UnsafePickleError(MemeguardError):
    """A pickle that tried to import something other than numpy arrays and builtins."""
