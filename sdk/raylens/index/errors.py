"""Index-specific runtime errors (all :class:`raylens.errors.RaylensError` subclasses).

``IndexNotFoundError`` and ``IndexMismatchError`` live in :mod:`raylens.errors` and are re-exported
here so that ``from raylens.index import ...`` is enough for callers.
"""

from __future__ import annotations

from raylens.errors import IndexMismatchError, IndexNotFoundError, RaylensError

__all__ = ["IndexCorruptError", "IndexMismatchError", "IndexNotFoundError", "IndexReadOnlyError"]


class IndexCorruptError(RaylensError):
    """An index directory exists but a file in it fails its checksum or cannot be parsed."""


class IndexReadOnlyError(RaylensError):
    """A change was asked of an index opened read-only (memory-mapped)."""
