"""The index deployment: named FAISS indices (an :class:`raylens.index.IndexCatalog`) searched by vector.

Indices come from the ``indices`` argument or the ``user_config`` (``{"indices": {name: directory}}``),
else from ``RAYLENS_INDEX`` (``dir`` or ``name=dir,name2=dir2``). A new ``user_config`` (``serve
deploy`` / ``serve run`` with a changed config) loads the new indices first and then swaps them in
under the catalog's lock: requests in flight finish on the old index, none is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve

from raylens.serve.http import returns_bad_input
from raylens.serve.limits import ServeError
from raylens.serve.observe import INDEX_VECTORS

__all__ = ["IndexServer", "INDEX_ENV", "parse_index_spec", "app"]

INDEX_ENV = "RAYLENS_INDEX"
log = logging.getLogger("ray.serve")


def parse_index_spec(spec: str | dict[str, str] | None) -> dict[str, str]:
    """``"dir"`` -> ``{"default": dir}``; ``"a=dir1,b=dir2"`` -> ``{"a": dir1, "b": dir2}``; a dict passes."""
    if not spec:
        return {}
    if isinstance(spec, dict):
        return {str(k): str(v) for k, v in spec.items()}
    out = {}
    for part in str(spec).split(","):
        name, sep, path = part.strip().partition("=")
        out[name if sep else "default"] = path if sep else name
    return out


@serve.deployment(num_replicas=1, max_ongoing_requests=128, ray_actor_options={"num_cpus": 0.25})
class IndexServer:
    """Searches the named indices; the first one is the default."""

    def __init__(self, indices: dict[str, str] | str | None = None):
        from ray.serve.metrics import Gauge

        from raylens.index import IndexCatalog

        self.catalog = IndexCatalog()
        self.order: list[str] = []
        self._size = Gauge(INDEX_VECTORS, "vectors in each open index", tag_keys=("index",))
        self._open(parse_index_spec(indices or os.environ.get(INDEX_ENV)))

    def _open(self, spec: dict[str, str]) -> None:
        from raylens.index import VectorIndex

        loaded = {name: VectorIndex.load(Path(path)) for name, path in spec.items()}  # all or nothing
        for name, index in loaded.items():
            self.catalog.add(name, index)
            self._size.set(len(index), tags={"index": name})
        for name in set(self.catalog.names()) - set(loaded):
            self.catalog.close(name)
            self._size.set(0, tags={"index": name})
        self.order = list(loaded)
        log.info("indices open: %s", {n: len(self.catalog.get(n)) for n in self.order})

    def reconfigure(self, config: dict[str, Any]) -> None:
        """``user_config`` hook: ``{"indices": {name: directory}}`` replaces the open set, atomically per index."""
        if config and config.get("indices"):
            self._open(parse_index_spec(config["indices"]))

    def _resolve(self, name: str | None) -> str:
        if name is None:
            if not self.order:
                raise ServeError(503, "no_index", f"no index is open; set {INDEX_ENV} or the service's `indices`")
            return self.order[0]
        if name not in self.catalog:
            raise ServeError(404, "unknown_index", f"no index named {name!r}; open ones: {self.order}")
        return name

    async def describe(self) -> dict[str, Any]:
        """Per index: model, checkpoint hash, count, dim, factory, metadata columns; and the default name."""
        info = self.catalog.describe()
        for name, d in info.items():
            index = self.catalog.get(name)
            d.update(checkpoint_hash=index.manifest.checkpoint_hash, columns=index.columns, path=None)
        return {"default": self.order[0] if self.order else None, "indices": {n: info[n] for n in self.order}}

    @returns_bad_input
    async def search(self, name: str | None, vector: np.ndarray, k: int, filters: dict | None = None) -> dict[str, Any]:
        """Top-``k`` hits (as dicts) of one query vector in index ``name`` (None: the default)."""
        name = self._resolve(name)
        index = self.catalog.get(name)
        k = min(k, len(index))
        if k < 1:
            return {"index": name, "hits": []}
        hits = await asyncio.to_thread(index.search, np.asarray(vector, np.float32)[None], k, filters)
        return {"index": name, "hits": [h.to_dict() for h in hits[0]]}

    @returns_bad_input
    async def search_many(
        self, name: str | None, vectors: np.ndarray, k: int, filters: dict | None = None
    ) -> dict[str, Any]:
        """Top-``k`` hits of each row of ``vectors`` (one FAISS call for the whole batch)."""
        name = self._resolve(name)
        index = self.catalog.get(name)
        k = min(k, len(index))
        x = np.asarray(vectors, np.float32).reshape(len(vectors), -1)
        if k < 1:
            return {"index": name, "hits": [[] for _ in range(len(x))]}
        hits = await asyncio.to_thread(index.search, x, k, filters)
        return {"index": name, "hits": [[h.to_dict() for h in row] for row in hits]}

    @returns_bad_input
    async def image_path(self, name: str | None, item_id: int) -> str | None:
        """The ``path`` metadata of one indexed item (None for an unknown id or one without a path)."""
        index = self.catalog.get(self._resolve(name))
        if not index.ids.size or item_id not in index.ids:
            return None
        return index.metadata([item_id])[0].get("path")


app = IndexServer.bind()
