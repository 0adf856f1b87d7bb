"""Errors of training runs that users catch by type (importable without SpeechBrain)."""
from __future__ import annotations


class NonFiniteLossError(ValueError):
    """The training loss stayed non-finite past `nonfinite_patience`; names the last examples."""


class NonFiniteWeightsError(ValueError):
    """The weights (or the validation output) became NaN/Inf; nothing of that epoch is kept."""


class DiskFullError(OSError):
    """No space left where a checkpoint or model is written; names the place and the bytes."""
