"""Several named indices open in one process (``natural``, ``medical``, ``multiview``...)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from raylens.index.vector_index import VectorIndex

__all__ = ["IndexCatalog"]


class IndexCatalog:
    """A thread-safe name → :class:`VectorIndex` registry.

    >>> import numpy as np
    >>> _ = VectorIndex.build(np.eye(4, dtype="float32"), model="clip-tiny").save("runs/natural/index")
    >>> cat = IndexCatalog()
    >>> len(cat.open("natural", "runs/natural/index", expect_model="clip-tiny"))
    4
    >>> cat.search("natural", np.eye(4, dtype="float32")[1], k=1)[0][0].id
    1
    """

    def __init__(self) -> None:
        self._indices: dict[str, VectorIndex] = {}
        self._paths: dict[str, Path | None] = {}
        self._lock = threading.Lock()

    def open(self, name: str, directory: str | Path, **load_kwargs: Any) -> VectorIndex:
        """Load ``directory`` under ``name`` (replacing what was there); kwargs go to :meth:`VectorIndex.load`."""
        self._check_name(name)
        index = VectorIndex.load(directory, **load_kwargs)
        with self._lock:
            self._indices[name] = index
            self._paths[name] = Path(directory)
        return index

    def add(self, name: str, index: VectorIndex) -> VectorIndex:
        """Register an index already in memory under ``name``."""
        self._check_name(name)
        if not isinstance(index, VectorIndex):
            raise TypeError(f"`index` must be a VectorIndex, got {type(index).__name__}")
        with self._lock:
            self._indices[name] = index
            self._paths.setdefault(name, None)
        return index

    def reload(self, name: str, **load_kwargs: Any) -> VectorIndex:
        """Re-open ``name`` from its directory (after another process saved a new version)."""
        path = self._paths.get(name)
        if path is None:
            raise ValueError(f"index {name!r} was not opened from a directory; use add() to replace it")
        return self.open(name, path, **load_kwargs)

    def get(self, name: str) -> VectorIndex:
        with self._lock:
            try:
                return self._indices[name]
            except KeyError:
                raise KeyError(
                    f"no index named {name!r} is open; open ones: {sorted(self._indices) or '(none)'}"
                ) from None

    def close(self, name: str) -> None:
        with self._lock:
            self._indices.pop(name, None)
            self._paths.pop(name, None)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._indices)

    def search(self, name: str, queries, k: int = 5, **kwargs: Any):
        """``get(name).search(queries, k, **kwargs)``."""
        return self.get(name).search(queries, k=k, **kwargs)

    def describe(self) -> dict[str, dict[str, Any]]:
        """Per index: model, count, dim, factory and path, for a listing endpoint."""
        with self._lock:
            items = list(self._indices.items())
        return {
            n: {
                "model": i.manifest.model,
                "count": len(i),
                "dim": i.dim,
                "index_factory": i.manifest.index_factory,
                "path": str(self._paths.get(n)) if self._paths.get(n) else None,
            }
            for n, i in items
        }

    def __contains__(self, name: object) -> bool:
        return name in self._indices

    def __len__(self) -> int:
        return len(self._indices)

    @staticmethod
    def _check_name(name: str) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"index `name` must be a non-empty string such as 'natural', got {name!r}")
