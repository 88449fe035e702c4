"""Typed errors: each message names the file or value at fault and what to do about it.

Only the command-line layer turns these into one line and an exit code; library code
raises them and never exits.
"""

from __future__ import annotations


class FasterViTTRTError(Exception):
    """Base class of every error this toolkit raises on purpose."""


class UnknownModelError(FasterViTTRTError):
    """A model name that is not in the registry."""


class ResolutionError(FasterViTTRTError):
    """An input resolution the variant's windows cannot take."""


class CheckpointError(FasterViTTRTError):
    """A checkpoint that is missing, unreadable, unsafe or for another network."""


class EngineError(FasterViTTRTError):
    """The engine or its device failed to run a batch; the inputs were not at fault."""
