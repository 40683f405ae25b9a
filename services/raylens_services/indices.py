"""The index deployment: named FAISS indices, searched by the one search core (:func:`raylens.search.search_batch`).

``search_many`` takes a batch the caller formed (the search ingress batches its queries) and runs it
with :func:`raylens.search.search_batch_async` on the replica's event loop: the core groups the
queries by (kind, index, filters), encodes each group's texts or images (with the replica's own
copy of the model in a worker thread, or by awaiting one call to the embedding deployment per
group; no thread blocks on it), and runs one FAISS search per group in a worker thread. It returns one outcome per query: the hits, or the query's own error as the
exception it is, for the caller to raise to that query's client only. ``search`` takes one query;
concurrent ones are batched adaptively (:class:`raylens.serve.batching.AdaptiveBatcher`: no wait
when the replica is idle), and a query's error is raised to its caller (a client's mistake is
logged as one INFO line, not as an ERROR; see :func:`raylens.serve.observe.quiet_client_errors`).

Indices come from the ``indices`` argument or the ``user_config`` (``{"indices": {name: directory}}``),
else from ``RAYLENS_INDEX`` (``dir`` or ``name=dir,name2=dir2``). Every index is checked against the
embedding model when it is attached: at start and at each swap, never per query. A mismatched (or
unreadable) index is refused with a clear error, which Serve reports for the deployment; the set
is all or nothing.

An index swap never stalls the replica. Serve routes no request to a replica while its
``reconfigure`` runs, so a live replica's ``reconfigure`` only starts the swap and returns: a
background task loads the new indices on a loader thread of their own (off the event loop and off
the search threads), checks them against the model, runs one search on each (so the first query
does not pay for a cold index), and only then swaps the whole set in with one assignment. Searches
keep running on the old set the whole time; batches in flight finish on it; no request is dropped
or held. A swap that fails (an unreadable or mismatched index) leaves the old set serving and is
reported by ``describe`` (``swap_error``) and the service's ``/status``; a newer ``user_config``
supersedes a swap still loading. A replica that has served nothing yet (one starting with a
``user_config``) loads it before it takes traffic, so a bad config fails its start.

``image`` serves an item's file from the index's data roots only (``manifest.data_roots``, or the
``data_roots`` argument per index name; see :mod:`raylens.serve.files`), off the event loop.
``check_health`` fails when search batches keep failing inside the replica.
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from raylens.index.manifest import normalize_data_roots
from raylens.search import IndexSet, ModelEncoder, SearchQuery, search_batch_async
from raylens.serve.batching import AdaptiveBatcher
from raylens.serve.files import item_file
from raylens.serve.observe import INDEX_VECTORS, FailureStreak, quiet_client_errors
from raylens.serve.search_api import describe_indices
from raylens_services.embedding import EmbedderClient, check_model, load_model

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


@serve.deployment(
    num_replicas=1,
    max_ongoing_requests=128,
    max_queued_requests=512,
    health_check_period_s=10,
    health_check_timeout_s=30,
    ray_actor_options={"num_cpus": 0.25},
)
class IndexServer:
    """Searches the named indices (the first is the default), encoding text and image queries with
    the embedding deployment's model or with its own copy of it.

    ``embedder``: a handle to :class:`raylens_services.embedding.ClipEmbedder` (None: embedding
    queries only). ``model``: ``{checkpoint, model, torch_threads}`` (see
    :func:`raylens_services.embedding.load_model`): load that model in this replica and encode the
    queries here (:class:`raylens.search.ModelEncoder`, in worker threads) instead of calling the
    embedder, one call less per search batch; ``embedder`` is then not used. ``batch``: ``{max_batch_size, max_concurrent_batches, batch_wait_timeout_s}`` of the
    batches of single ``search`` calls (:meth:`raylens.serve.batching.AdaptiveBatcher.from_config`).
    ``data_roots``: ``{index name: [directories]}`` to serve item files from, instead of the roots
    each index's manifest declares.
    """

    async def __init__(
        self,
        indices: dict[str, str] | str | None = None,
        embedder: DeploymentHandle | None = None,
        batch: dict[str, Any] | None = None,
        data_roots: dict[str, list[str]] | None = None,
        model: dict[str, Any] | None = None,
    ):
        from ray.serve.metrics import Gauge

        quiet_client_errors()
        self._batcher = AdaptiveBatcher.from_config(self.search_many, batch)
        self._size = Gauge(INDEX_VECTORS, "vectors in each open index", tag_keys=("index",))
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="index-load")
        self._failures = FailureStreak()
        self.loading: list[str] = []
        self.swap_error: str | None = None
        self._generation = 0
        self._swap_task: asyncio.Task | None = None
        self._served = False
        self.data_roots = {str(k): normalize_data_roots(v) for k, v in (data_roots or {}).items()}
        if model is not None:
            self.encoder = ModelEncoder(load_model(**model))
        else:
            self.encoder = await EmbedderClient.connect(embedder) if embedder is not None else None
        self.model = self.encoder.identity if self.encoder else None
        self.indices = IndexSet(model=self.model)
        await self._open(parse_index_spec(indices or os.environ.get(INDEX_ENV)))

    @staticmethod
    def _load(spec: dict[str, str]) -> dict[str, Any]:
        """Load every index of ``spec`` and run one search on each (on the loader thread)."""
        import numpy as np

        from raylens.index import VectorIndex

        loaded = {name: VectorIndex.load(Path(path)) for name, path in spec.items()}
        for index in loaded.values():
            if len(index):  # warm it: the first query after the swap pays nothing extra
                index.search(np.ones(index.dim, np.float32), k=1)
        return loaded

    async def _open(self, spec: dict[str, str], generation: int | None = None) -> None:
        """Load every index of ``spec`` off the request path, check each against the model, then swap
        the whole set in with one assignment (searches run on the old set meanwhile). A load that a
        newer one superseded (``generation``) is dropped."""
        self.loading = list(spec)
        try:
            loaded = await asyncio.get_running_loop().run_in_executor(self._loader, self._load, spec)
            new = IndexSet(loaded, model=self.model)  # the model/index check: a mismatch raises, nothing swapped
        finally:
            if generation is None or generation == self._generation:
                self.loading = []
        if generation is not None and generation != self._generation:
            log.info("index swap to %s superseded by a newer config; dropped", list(spec))
            return
        old, self.indices = self.indices, new
        for name, index in new.items():
            self._size.set(len(index), tags={"index": name})
        for name in set(old) - set(new):
            self._size.set(0, tags={"index": name})
        log.info("indices open: %s", {n: len(i) for n, i in new.items()})

    async def _swap(self, spec: dict[str, str], generation: int) -> None:
        """The background half of a live swap: load, check, swap; a failure keeps the old set serving."""
        try:
            await self._open(spec, generation)
        except Exception as exc:  # reported, not raised: the old set goes on serving
            if generation == self._generation:
                self.swap_error = f"{type(exc).__name__}: {exc}"[:1000]
            log.error("index swap to %s failed, still serving %s: %s", list(spec), list(self.indices), exc)
        else:
            if generation == self._generation:
                self.swap_error = None

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """``user_config`` hook: ``{"indices": {name: directory}, "data_roots": {name: [dirs]}}``
        replaces the open set: on a live replica in the background (see the module docstring)."""
        if not config:
            return
        if config.get("data_roots") is not None:
            self.data_roots = {str(k): normalize_data_roots(v) for k, v in config["data_roots"].items()}
        if not config.get("indices"):
            return
        spec = parse_index_spec(config["indices"])
        self._generation += 1
        if not self._served:  # starting (or idle): nobody waits, and a bad config fails the start
            await self._open(spec)
            return
        self._swap_task = asyncio.get_running_loop().create_task(self._swap(spec, self._generation))

    async def check_health(self) -> None:
        """Serve's health check: the index set is in place, search batches are not failing in a row,
        and the replica's own model (when it encodes the queries) still encodes."""
        if not isinstance(self.indices, IndexSet):
            raise RuntimeError("IndexServer: no index set is in place")
        self._failures.check("IndexServer")
        if isinstance(self.encoder, ModelEncoder):
            await check_model(self.encoder.model, "IndexServer")

    async def describe(self) -> dict[str, Any]:
        """Per index: model, checkpoint hash, count, dim, factory, metadata columns and their types; the
        default name, the model the indices were checked against, and the names of a set being loaded
        to swap in (``loading``; empty when none) and why the last swap failed (``swap_error``; None when
        it did not). No file paths."""
        self._served = True
        return {**describe_indices(self.indices), "loading": list(self.loading), "swap_error": self.swap_error}

    async def search(self, query: SearchQuery) -> dict[str, Any]:
        """One query's ``{"index", "hits"}`` (hits as dicts); concurrent calls run as one batch.
        A query's error is raised to its caller only."""
        return await self._batcher.submit(query)

    async def search_many(self, queries: list[SearchQuery]) -> list[dict[str, Any] | Exception]:
        """A batch of queries, one outcome each, in order: ``{"index", "hits"}`` (hits as dicts), or the
        query's own error (returned, not raised: the other queries' results still come back)."""
        self._served = True
        indices = self.indices  # this batch keeps the set it started with, whatever a swap does meanwhile
        out = await search_batch_async(list(queries), indices, self.encoder, return_exceptions=True)
        errors = [o for o in out if isinstance(o, Exception)]
        if len(errors) < len(out):
            self._failures.ok()
        for exc in errors:
            self._failures.record(exc)
            # logged as a raised one would be: a client's mistake as one INFO line (quiet_client_errors)
            log.error("Request failed.", exc_info=(type(exc), exc, exc.__traceback__))
        return [o if isinstance(o, Exception) else o.to_dict() for o in out]

    async def image(self, name: str | None, item_id: int, max_bytes: int) -> tuple[bytes, str]:
        """``(bytes, media type)`` of an item's file, from the index's data roots only (404 otherwise)."""
        self._served = True
        name, index = self.indices.resolve(name)
        roots = self.data_roots.get(name)
        return await asyncio.to_thread(item_file, index, item_id, max_bytes=max_bytes, roots=roots)


app = IndexServer.bind()
