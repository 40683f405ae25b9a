"""The raylens error hierarchy.

Input mistakes at an API boundary raise ``ValueError``/``TypeError`` with a message that names the
input and the fix. Runtime failures raise a :class:`RaylensError` subclass. Every class pickles
cleanly, so an error raised inside a Ray worker reaches the driver intact.
"""

from __future__ import annotations

__all__ = ["RaylensError", "IndexMismatchError", "IndexNotFoundError", "IngestError", "CheckpointError"]


class RaylensError(RuntimeError):
    """Base class of the runtime errors raylens raises."""

    def __reduce__(self):
        return (type(self), self.args)


class IndexNotFoundError(RaylensError, FileNotFoundError):
    """No index directory (or no manifest in it) where one was expected."""


class IndexMismatchError(RaylensError):
    """An index was built with another model (or dim) than the one asked to query it."""


class IngestError(RaylensError):
    """An ingest could not produce a single usable row."""


class CheckpointError(RaylensError):
    """A checkpoint directory is missing, incomplete or for another model."""
