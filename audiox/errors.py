"""The project's named errors, and the argument checks that raise them.

Every bad input raises one of these; each is a ``ValueError`` whose first line names what
is wrong and what to do (the ``audiox`` command prints that line alone)::

    AudioXError                   any bad input
    |-- ArgumentError             a bad argument to a call (the pipeline, the command)
    |-- ConfigError               a model config that cannot describe a valid model
    |-- CheckpointError           a checkpoint that cannot be read or does not fit the model
    |   `-- UnsafeCheckpointError a pickle that would need code execution to load
    `-- MediaError                a media file that cannot be read, or written as asked
"""

from __future__ import annotations

import math
import operator

__all__ = [
    "AudioXError",
    "ArgumentError",
    "ConfigError",
    "CheckpointError",
    "UnsafeCheckpointError",
    "MediaError",
    "as_int",
    "as_real",
]


class AudioXError(ValueError):
    """A bad input to audiox-engine (the base of the errors below)."""


class ArgumentError(AudioXError):
    """An argument of the wrong type or outside its range."""


class ConfigError(AudioXError):
    """A model config that cannot describe a valid AudioX model."""


class CheckpointError(AudioXError):
    """A checkpoint that does not fit the model (or cannot be read)."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that would need arbitrary code execution to load."""


class MediaError(AudioXError):
    """A media file that cannot be read as the expected kind of media, or written as asked."""


def as_int(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int (an int or a NumPy integer; never a bool, never a truncated float)."""
    if isinstance(value, bool):
        raise ArgumentError(f"{name} must be an integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise ArgumentError(f"{name} must be an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ArgumentError(f"{name} must be >= {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise ArgumentError(f"{name} must be <= {maximum}, got {number}")
    return number


def as_real(name: str, value) -> float:
    """``value`` as a finite float (an int or a float; never a bool or a string)."""
    if isinstance(value, bool) or not hasattr(value, "__float__"):
        raise ArgumentError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError, RuntimeError):  # RuntimeError: a tensor of several values
        raise ArgumentError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ArgumentError(f"{name} must be a finite number, got {value!r}")
    return number
