"""The search service: a FastAPI ingress on Ray Serve over the embedding, index and classifier deployments.

The HTTP API is :func:`raylens.serve.search_api.create_search_api` (read its docstring for the
routes, auth, limits and errors); every ingress replica builds it at start (Serve's late-bound ASGI
app, ``__serve_build_asgi_app__``) over :class:`HandleBackend`, which reaches the other deployments
through ``DeploymentHandle``s:

* ``POST /search``: text, an image (multipart ``image`` file or JSON ``image_b64``) or an
  ``embedding``; ``k``; metadata ``filters``; ``index`` name -> hits with scores and metadata. The
  ingress batches concurrent searches adaptively (:class:`raylens.serve.batching.AdaptiveBatcher`: a
  search that finds the ingress idle goes at once, with no batching wait; those that arrive while
  batches are in flight leave together) and sends each batch in one call to the index deployment,
  which runs the one search core (:func:`raylens.search.search_batch_async`) and, by default, encodes
  the batch's texts or images with its own copy of the model (``query_encoder``, see :func:`build_app`).
* ``POST /embed``, ``POST /classify`` (A/B split between classifier versions), ``GET /indices``,
  ``GET /images/{index}/{id}`` (a hit's file, from the index's data roots only), ``GET /status``
  (details), ``GET /openapi.json`` (the live contract): all behind the API key.
* ``GET /healthz`` (``up``/``down`` only) and ``GET /`` (the search page): open.

Auth is resolved when the app is built (:func:`raylens.serve.auth.resolve_auth`: the ``api_key_file``
or ``api_key`` argument, else ``RAYLENS_API_KEY``/``RAYLENS_API_KEY_FILE`` where the app is built) and
passed to every ingress replica, which enforces it whatever its own environment holds; with no key
the ingress refuses to start behind a non-loopback HTTP host unless ``open: true``.

Run: ``serve run services/raylens_services/search.yaml``, ``raylens serve``, or
``serve run raylens_services.search:build_app indices=runs/index`` (with ``RAYLENS_API_KEY`` set, or
``api_key_file=...``).
"""

# No ``from __future__ import annotations``: FastAPI reads the route functions' real annotations.
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.responses import HTMLResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from raylens.search import SearchQuery
from raylens.serve.auth import ServeAuth, app_flag, resolve_auth
from raylens.serve.batching import BATCH_KEYS, AdaptiveBatcher
from raylens.serve.limits import ServeLimits
from raylens.serve.observe import LATENCY_BOUNDARIES_MS, MODEL_LATENCY_MS, REQUESTS, SEARCH_LATENCY_MS
from raylens.serve.ray_apps import data_plane, serve_http_host
from raylens.serve.search_api import Observer, create_search_api
from raylens_services.classify import Classifier
from raylens_services.embedding import CHECKPOINT_ENV, ClipEmbedder
from raylens_services.indices import INDEX_ENV, IndexServer, parse_index_spec
from raylens_services.retry import call_async

__all__ = ["SearchIngress", "HandleBackend", "build_app", "app", "CLASSIFIER_ENV", "QUERY_ENCODERS"]

log = logging.getLogger("ray.serve")
CLASSIFIER_ENV = "RAYLENS_CLASSIFIER"
QUERY_ENCODERS = ("index", "embedder")
"""Where ``/search`` encodes its queries (``build_app``'s ``query_encoder``): in the index replicas or in the embedder."""
STATIC = Path(__file__).parent / "static"


class HandleBackend:
    """The search API's backend (:class:`raylens.serve.search_api.SearchBackend`) over deployment handles.

    Every call reads and never writes, so a call whose replica dies under it is sent again (a live
    replica, or the replacement, takes it): :mod:`raylens_services.retry`. Searches are batched here
    (``batch``: :meth:`raylens.serve.batching.AdaptiveBatcher.from_config`) into one ``search_many``
    call to the index deployment per batch.
    """

    def __init__(
        self,
        embedder: DeploymentHandle,
        indices: DeploymentHandle,
        classifiers: dict[str, DeploymentHandle],
        batch: dict[str, Any] | None = None,
    ):
        self.embedder = embedder
        self.indices = indices
        self._fast_indices = data_plane(indices)  # searches: Serve's gRPC data plane
        self.classifiers = classifiers
        self.searches = AdaptiveBatcher.from_config(self._search_many, batch)

    async def ready(self) -> bool:
        return bool((await self._describe())["indices"])

    async def status(self) -> dict[str, Any]:
        problems = []
        info = await call_async(lambda: self.embedder.info.remote(), "embedder.info")
        catalog = await self._describe()  # every open index matched the model when attached
        if not catalog["indices"]:
            problems.append(f"no index is open; set {INDEX_ENV} or the service's `indices`")
        if catalog.get("swap_error"):
            problems.append(f"the last index swap failed (the indices above still serve): {catalog['swap_error']}")
        versions = {}
        for v, handle in self.classifiers.items():
            c = await call_async(lambda h=handle: h.info.remote(), f"classifier {v}.info")
            versions[v] = {k: c.get(k) for k in ("version", "ready", "kind", "classes", "checkpoint_hash")}
            if not c.get("ready"):
                problems.append(f"classifier {v} is not ready")
        return {
            "ready": not problems,
            "model": {"name": info["model"], "checkpoint_hash": info["checkpoint_hash"], "dim": info["dim"]},
            "indices": list(catalog["indices"]),
            "classifier_versions": versions,
            "problems": problems,
        }

    async def _describe(self) -> dict[str, Any]:
        return await call_async(lambda: self.indices.describe.remote(), "indices.describe")

    async def describe(self) -> dict[str, Any]:
        return await self._describe()

    async def search(self, query: SearchQuery) -> dict[str, Any]:
        return await self.searches.submit(query)  # a query's own error is raised here, to its client only

    async def _search_many(self, queries: list[SearchQuery]) -> list[dict[str, Any] | Exception]:
        # one call per batch; the whole batch is sent again if the index replica dies under it
        return await call_async(lambda: self._fast_indices.search_many.remote(queries), "indices.search_many")

    async def embed(self, kind: str, items: list[Any]) -> dict[str, Any]:
        method = self.embedder.embed_text if kind == "text" else self.embedder.embed_image
        # one call each (the replica batches them); one that dies with its replica is sent again alone
        responses = [method.remote(x) for x in items]
        vectors = [
            await call_async(_first(r, lambda x=x: method.remote(x)), "embedder.embed")
            for x, r in zip(items, responses)
        ]
        info = await call_async(lambda: self.embedder.info.remote(), "embedder.info")
        return {
            "model": info["model"],
            "checkpoint_hash": info["checkpoint_hash"],
            "dim": info["dim"],
            "embeddings": vectors,
        }

    async def classify(self, version: str, images: list[np.ndarray]) -> dict[str, Any]:
        handle = self.classifiers[version]
        result = await call_async(lambda: handle.predict.remote(images), f"classifier {version}.predict")
        return {k: result.get(k) for k in ("kind", "checkpoint_hash", "predictions")}

    async def image(self, index: str, item_id: int, max_bytes: int) -> tuple[bytes, str]:
        return await call_async(lambda: self.indices.image.remote(index, item_id, max_bytes), "indices.image")


def _first(response: Any, again: Callable[[], Any]) -> Callable[[], Any]:
    """A call maker for :func:`call_async` whose first call is ``response``, already sent (so the
    calls of one request go out together), and any later one ``again()``."""
    sent = [response]

    def make():
        return sent.pop() if sent else again()

    return make


class _RayMetrics(Observer):
    """The API's metric hooks as Ray metrics (Prometheus), and one log line per search (with Serve's
    request id, from the replica's logging context)."""

    def __init__(self):
        from ray.serve.metrics import Counter, Histogram

        self._latency = Histogram(
            SEARCH_LATENCY_MS,
            "search time in the ingress (encode + search)",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=("index", "kind"),
        )
        self._model_latency = Histogram(
            MODEL_LATENCY_MS,
            "time in each model version",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=("route", "version"),
        )
        self._requests = Counter(
            REQUESTS, "requests by route, model version and status", tag_keys=("route", "version", "status")
        )

    def count(self, route: str, status: int, version: str = "") -> None:
        self._requests.inc(tags={"route": route, "version": version, "status": str(status)})

    def searched(self, index: str, kind: str, k: int, hits: int, ms: float) -> None:
        self._latency.observe(ms, tags={"index": index, "kind": kind})
        log.info("search index=%s kind=%s k=%d hits=%d ms=%.1f", index, kind, k, hits, ms)

    def model_latency(self, ms: float, route: str, version: str) -> None:
        self._model_latency.observe(ms, tags={"route": route, "version": version})


@serve.deployment(
    max_ongoing_requests=256,
    max_queued_requests=512,
    health_check_period_s=10,
    health_check_timeout_s=30,
    ray_actor_options={"num_cpus": 0.25},
)
@serve.ingress()
class SearchIngress:
    """HTTP in front of the model and index deployments: the API of :mod:`raylens.serve.search_api`,
    built in each replica (``__serve_build_asgi_app__``) with the auth and limits it was given."""

    async def __init__(
        self,
        embedder: DeploymentHandle,
        indices: DeploymentHandle,
        classifiers: dict[str, DeploymentHandle] | None = None,
        split: dict[str, float] | None = None,
        limits: dict[str, Any] | None = None,
        auth: ServeAuth | None = None,
        batch: dict[str, Any] | None = None,
    ):
        self.auth = auth if auth is not None else ServeAuth()
        if not isinstance(self.auth, ServeAuth):
            raise TypeError(
                f"`auth` must be a ServeAuth (raylens.serve.auth.resolve_auth), got {type(self.auth).__name__}"
            )
        self.auth.check_bind(await serve_http_host())  # no key on a public address: refuse to start
        self.classifiers = dict(classifiers or {})
        self.split = dict(split or {v: 1.0 for v in self.classifiers})
        if set(self.split) != set(self.classifiers):
            raise ValueError(
                f"the traffic split names {sorted(self.split)} but the classifier versions are "
                f"{sorted(self.classifiers)}; give a weight to each version"
            )
        self.limits = ServeLimits(**limits) if limits else ServeLimits.from_env()
        self.backend = HandleBackend(embedder, indices, self.classifiers, batch)

    def __serve_build_asgi_app__(self):
        api = create_search_api(
            self.backend, auth=self.auth, limits=self.limits, versions=self.split or None, observer=_RayMetrics()
        )

        async def page():
            return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

        async def page_js():
            return Response((STATIC / "app.js").read_text(encoding="utf-8"), media_type="text/javascript")

        api.add_api_route("/", page, methods=["GET"], include_in_schema=False)
        api.add_api_route("/app.js", page_js, methods=["GET"], include_in_schema=False)
        return api

    async def check_health(self) -> None:
        """Serve's health check: the replica has its HTTP app (the parts it calls have their own checks)."""
        if self.backend is None:
            raise RuntimeError("SearchIngress: no backend")


def _abs(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else None


def _checkpoint_from_index(indices: dict[str, str]) -> tuple[str | None, str | None]:
    """(checkpoint, model) recorded in the first index's manifest."""
    if not indices:
        return None, None
    from raylens.index.store import open_version

    with open_version(next(iter(indices.values()))) as version:
        return version.manifest.checkpoint, version.manifest.model


def build_app(args: dict[str, Any] | None = None):
    """App builder (``serve run raylens_services.search:build_app indices=runs/index ...`` or a config's ``args``).

    ``args``: ``api_key_file`` (a file whose first line is the key; read here, where the app is
    built) or ``api_key``, else ``RAYLENS_API_KEY``/``RAYLENS_API_KEY_FILE``; ``open`` (true: serve
    without a key on any address, on purpose); ``indices`` (``dir``, ``name=dir,...`` or a mapping;
    default ``RAYLENS_INDEX``), ``data_roots`` (``{index name: [dirs]}`` that ``/images`` serves from,
    instead of each manifest's ``data_roots``),
    ``checkpoint``/``model`` (default: the first index's manifest), ``classifiers`` (``{version:
    {checkpoint, weight, classes, templates}}``; a missing checkpoint means the embedding model's;
    default ``RAYLENS_CLASSIFIER`` as one timm/CLIP checkpoint dir), ``limits`` (ServeLimits fields),
    ``query_encoder``: where the text and image queries of ``/search`` are encoded: ``index`` (the
    default: each index replica loads its own copy of the model and encodes its batches itself, one
    call less per search; scale the search path by scaling ``IndexServer``) or ``embedder`` (the
    index calls the embedding deployment, which then scales on its own; less memory per index
    replica). ``/embed`` always goes to the embedding deployment.
    ``batch`` (``{max_batch_size, max_concurrent_batches, batch_wait_timeout_s}`` of the adaptive batches of
    the ingress's searches, the index's single searches and the embedder; see :mod:`raylens.serve.batching`), ``options``
    (``{deployment name: Serve options}``, e.g. ``autoscaling_config``; a config file's
    ``deployments:`` section does the same for ``serve run``).
    """
    args = dict(args or {})
    options = dict(args.get("options") or {})
    auth = resolve_auth(
        api_key=args.get("api_key"),
        api_key_file=_abs(args.get("api_key_file")),
        open=app_flag(args.get("open"), "open"),
    )
    data_roots = {
        str(n): [_abs(d) for d in ([r] if isinstance(r, str) else r)] for n, r in (args.get("data_roots") or {}).items()
    }

    def deployment(d, name: str | None = None):
        name = name or d.name
        return d.options(name=name, **options.get(name, {})) if (name != d.name or name in options) else d

    indices = {n: _abs(p) for n, p in parse_index_spec(args.get("indices") or os.environ.get(INDEX_ENV)).items()}
    checkpoint, model = _abs(args.get("checkpoint")), args.get("model")
    if not checkpoint:
        from_index, index_model = _checkpoint_from_index(indices)
        checkpoint = from_index or _abs(os.environ.get(CHECKPOINT_ENV))
        model = model or index_model
    batch = dict(args.get("batch") or {})
    if set(batch) - set(BATCH_KEYS):
        raise ValueError(f"unknown `batch` setting(s) {sorted(set(batch) - set(BATCH_KEYS))}; use {list(BATCH_KEYS)}")
    query_encoder = str(args.get("query_encoder") or "index")
    if query_encoder not in QUERY_ENCODERS:
        raise ValueError(f"`query_encoder` must be one of {list(QUERY_ENCODERS)}, got {query_encoder!r}")
    embedder = deployment(ClipEmbedder).bind(checkpoint, model, **batch)
    own_model = {"checkpoint": checkpoint, "model": model} if query_encoder == "index" else None
    # an index replica that encodes its own queries gets no embedder handle (it would never call it)
    index_embedder = None if own_model else embedder
    index_server = deployment(IndexServer).bind(indices or None, index_embedder, batch, data_roots or None, own_model)
    versions = dict(args.get("classifiers") or {})
    if not versions and os.environ.get(CLASSIFIER_ENV):
        versions = {"v1": {"checkpoint": os.environ[CLASSIFIER_ENV], "weight": 1.0}}
    classifiers, split = {}, {}
    for v, cfg in versions.items():
        cfg = dict(cfg or {})
        classifiers[v] = deployment(Classifier, f"Classifier_{v}").bind(
            _abs(cfg.get("checkpoint")) or checkpoint, cfg.get("classes"), cfg.get("templates"), version=v
        )
        split[v] = float(cfg.get("weight", 1.0))
    return deployment(SearchIngress).bind(
        embedder, index_server, classifiers or None, split or None, args.get("limits"), auth, batch=batch or None
    )


app = build_app()
