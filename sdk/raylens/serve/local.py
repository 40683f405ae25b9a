"""The search API in one process: a :class:`~raylens.serve.search_api.SearchBackend` over a model,
indices and classifiers loaded here (no Ray). The same HTTP app the Serve ingress runs, for tests and
for a quick look on a laptop:

>>> from raylens.serve.auth import resolve_auth                                    # doctest: +SKIP
>>> backend = LocalSearchBackend.open({"natural": "raylens-demo/index"})           # doctest: +SKIP
>>> api = create_search_api(backend, auth=resolve_auth())                          # doctest: +SKIP
>>> # uvicorn.run(api, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from raylens.search import IndexSet, ModelEncoder, SearchQuery, search_batch
from raylens.serve.files import item_file
from raylens.serve.limits import ServeError
from raylens.serve.search_api import create_search_api, describe_indices

__all__ = ["LocalSearchBackend", "create_search_api"]


class LocalSearchBackend:
    """Searches, embeds and classifies in this process; blocking work runs in worker threads.

    ``model``: a CLIP model (``raylens.models``); ``indices``: name -> ``VectorIndex``, checked
    against the model here; ``classifiers``: version -> a classifier of :mod:`raylens.serve.classify`;
    ``data_roots``: name -> directories that override an index's ``manifest.data_roots``.
    """

    def __init__(
        self,
        model: Any,
        indices: Mapping[str, Any],
        classifiers: Mapping[str, Any] | None = None,
        *,
        data_roots: Mapping[str, list[str]] | None = None,
    ):
        self.model = model
        self.encoder = ModelEncoder(model)
        self.indices = IndexSet(dict(indices), model=self.encoder.identity)
        self.classifiers = dict(classifiers or {})
        self.data_roots = {k: list(v) for k, v in (data_roots or {}).items()}

    @classmethod
    def open(cls, indices: Mapping[str, str | Path], *, checkpoint: str | Path | None = None) -> LocalSearchBackend:
        """Load ``indices`` (name -> directory) and the model the first one's manifest names."""
        from raylens.index import VectorIndex
        from raylens.models import create_model

        loaded = {name: VectorIndex.load(path) for name, path in indices.items()}
        first = next(iter(loaded.values()))
        ckpt = checkpoint or first.manifest.checkpoint
        return cls(create_model(first.manifest.model, pretrained=str(ckpt) if ckpt else None), loaded)

    async def ready(self) -> bool:
        return len(self.indices) > 0

    async def status(self) -> dict[str, Any]:
        identity = self.encoder.identity
        return {
            "ready": len(self.indices) > 0,
            "model": {"name": identity.name, "checkpoint_hash": identity.checkpoint_hash, "dim": identity.dim},
            "indices": list(self.indices),
            "classifier_versions": {
                v: {"kind": getattr(c, "kind", None), "checkpoint_hash": getattr(c, "checkpoint_hash", None)}
                for v, c in self.classifiers.items()
            },
            "problems": [] if len(self.indices) else ["no index is open"],
        }

    async def describe(self) -> dict[str, Any]:
        return {**describe_indices(self.indices), "loading": [], "swap_error": None}

    async def search(self, query: SearchQuery) -> dict[str, Any]:
        (result,) = await asyncio.to_thread(search_batch, [query], self.indices, self.encoder)
        return result.to_dict()

    async def embed(self, kind: str, items: list[Any]) -> dict[str, Any]:
        encode = self.encoder.encode_texts if kind == "text" else self.encoder.encode_images
        vectors = await asyncio.to_thread(encode, list(items))
        identity = self.encoder.identity
        return {
            "model": identity.name,
            "checkpoint_hash": identity.checkpoint_hash,
            "dim": identity.dim,
            "embeddings": list(np.asarray(vectors)),
        }

    async def classify(self, version: str, images: list[np.ndarray]) -> dict[str, Any]:
        clf = self.classifiers.get(version)
        if clf is None:
            raise ServeError(404, "no_classifier", f"no classifier version {version!r} is loaded")
        predictions = await asyncio.to_thread(clf.predict, images)
        return {"kind": clf.kind, "checkpoint_hash": clf.checkpoint_hash, "predictions": predictions}

    async def image(self, index: str, item_id: int, max_bytes: int) -> tuple[bytes, str]:
        name, idx = self.indices.resolve(index)
        return await asyncio.to_thread(item_file, idx, item_id, max_bytes=max_bytes, roots=self.data_roots.get(name))
