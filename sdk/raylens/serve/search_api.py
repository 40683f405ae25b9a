"""The search service's HTTP API: one FastAPI app over a :class:`SearchBackend` (plain Python, no Ray).

``raylens_services.search`` builds it in every ingress replica over Ray Serve deployment handles;
:class:`raylens.serve.local.LocalSearchBackend` runs the same app in one process (tests, a laptop).
What the app does, whatever the backend:

* **Auth**: every route but ``GET /healthz`` and the page needs the API key when one is configured
  (:class:`~raylens.serve.auth.ServeAuth`, resolved when the app was built), ``/openapi.json`` too.
  FastAPI's ``/docs`` and ``/redoc`` are off: fetch ``/openapi.json`` with the key into any viewer.
* **Liveness vs details**: ``GET /healthz`` says ``{"status": "up"}`` (200) or ``"down"`` (503),
  nothing else; ``GET /status`` (with the key) gives the model, the indices and the classifier versions.
* **Bounded work off the event loop**: bodies are read with a byte limit; image decoding (one pixel
  budget per request, only the formats of :mod:`raylens.serve.media`) runs in a worker thread; every
  call into the backend has a deadline (``request_timeout_s``: 504 past it).
* **One error shape**: every refusal is ``{"error": {"status", "code", "message"}}``
  (:func:`raylens.serve.http.json_error`); a 405 carries ``Allow``, a 401 ``WWW-Authenticate``.
* **The contract**: ``/openapi.json`` is :func:`raylens.serve.openapi.build_openapi` filled with the
  live indices, model, limits and versions, so the schema says what the service accepts.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Protocol

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response

from raylens.search import SearchQuery
from raylens.serve.ab import AB_KEY_HEADER, VERSION_HEADER, TrafficSplit
from raylens.serve.auth import ServeAuth
from raylens.serve.forms import parse_multipart
from raylens.serve.http import enable_cors, install_error_handlers, json_error, json_response, read_body
from raylens.serve.limits import ServeError, ServeLimits, check_batch
from raylens.serve.media import PixelBudget
from raylens.serve.openapi import AB_KEY_MAX, build_openapi
from raylens.serve.query import check_index_name, decode_upload, parse_search, parse_search_form, parse_texts_or_images

__all__ = ["SearchBackend", "Observer", "create_search_api", "describe_indices", "HEALTH_TIMEOUT_S"]

HEALTH_TIMEOUT_S = 5.0
"""How long ``/healthz`` waits for the backend before it says ``down``."""


class SearchBackend(Protocol):
    """What the HTTP API needs from the model and index side (async; errors raised as they are)."""

    async def ready(self) -> bool:
        """Whether searches can be answered now (a model and at least one index)."""
        ...

    async def status(self) -> dict[str, Any]:
        """``{ready, model, indices, classifier_versions, problems}`` (no file paths)."""
        ...

    async def describe(self) -> dict[str, Any]:
        """``{default, indices: {name: {model, checkpoint_hash, count, dim, index_factory, columns,
        column_types}}, model}``; see :func:`describe_indices`."""
        ...

    async def search(self, query: SearchQuery) -> dict[str, Any]:
        """``{"index", "hits"}`` of one query (hits as dicts)."""
        ...

    async def embed(self, kind: str, items: list[Any]) -> dict[str, Any]:
        """``{model, checkpoint_hash, dim, embeddings}`` of texts or decoded images."""
        ...

    async def classify(self, version: str, images: list[np.ndarray]) -> dict[str, Any]:
        """One classifier version's ``{kind, checkpoint_hash, predictions}`` for decoded images."""
        ...

    async def image(self, index: str, item_id: int, max_bytes: int) -> tuple[bytes, str]:
        """``(bytes, media type)`` of an item's file, from the index's data roots only."""
        ...


class Observer:
    """Metric hooks of the API (this one records nothing; the Serve ingress records Ray metrics)."""

    def count(self, route: str, status: int, version: str = "") -> None:
        """One answered request."""

    def searched(self, index: str, kind: str, k: int, hits: int, ms: float) -> None:
        """One successful search: its index, kind, k, hit count and time."""

    def model_latency(self, ms: float, route: str, version: str) -> None:
        """Time in one model version (``/classify``)."""


def describe_indices(indices: Any) -> dict[str, Any]:
    """``describe()`` of an :class:`raylens.search.IndexSet`: per index what a client may know (no paths)."""
    import dataclasses

    info = {
        name: {
            "model": index.manifest.model,
            "checkpoint_hash": index.manifest.checkpoint_hash,
            "count": len(index),
            "dim": index.dim,
            "index_factory": index.manifest.index_factory,
            "columns": index.columns,
            "column_types": index.column_types,
        }
        for name, index in indices.items()
    }
    model = None if indices.model is None else dataclasses.asdict(indices.model)
    return {"default": indices.default, "indices": info, "model": model}


def _content_type(request: Request) -> str:
    ctype = (request.headers.get("content-type") or "application/json").split(";")[0].strip().lower()
    if ctype not in ("application/json", "multipart/form-data"):
        raise ServeError(415, "unsupported_media_type", f"send application/json or multipart/form-data, not {ctype!r}")
    return ctype


def _item_id(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or int(raw) > 2**62:
        raise ServeError(422, "bad_item_id", f"the item id must be an integer from 0 to 2**62, got {raw[:40]!r}")
    return int(raw)


def create_search_api(
    backend: SearchBackend,
    *,
    auth: ServeAuth,
    limits: ServeLimits = ServeLimits(),
    versions: dict[str, float] | None = None,
    observer: Observer | None = None,
    title: str = "raylens search",
) -> FastAPI:
    """The search service's FastAPI app over ``backend`` (see the module docstring).

    ``versions``: the classifier versions behind ``/classify`` and their traffic weights (A/B split);
    none: ``/classify`` answers 404.
    """
    if not isinstance(auth, ServeAuth):
        raise TypeError(f"`auth` must be a ServeAuth (see raylens.serve.auth.resolve_auth), got {type(auth).__name__}")
    split = TrafficSplit(dict(versions)) if versions else None
    obs = observer or Observer()
    api = install_error_handlers(FastAPI(title=title, version="1", openapi_url=None, docs_url=None, redoc_url=None))
    enable_cors(api)  # only when RAYLENS_CORS_ORIGINS is set

    def check_key(request: Request) -> None:
        auth.check(request.headers.get("x-api-key") or request.headers.get("authorization"))

    async def call(awaitable):
        return await asyncio.wait_for(awaitable, timeout=limits.request_timeout_s)

    async def read_json(request: Request) -> Any:
        raw = await read_body(request, limits)
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            raise ServeError(400, "bad_json", "the body is not valid JSON") from None

    async def read_form(request: Request) -> tuple[dict[str, str], list[bytes]]:
        """Form fields (text) and the bytes of every ``image`` part."""
        body = await read_body(request, limits)
        return parse_multipart(request.headers.get("content-type", ""), body, max_files=limits.max_batch)

    async def parse_search_request(request: Request) -> SearchQuery:
        if _content_type(request) == "application/json":
            body = await read_json(request)
            if isinstance(body, dict) and body.get("image_b64") is None:  # no image to decode: checks only
                return parse_search(body, limits)
            return await asyncio.to_thread(parse_search, body, limits)  # decodes the image
        fields, images = await read_form(request)
        if len(images) > 1:
            raise ServeError(422, "one_query", "send one `image` file per search")
        return await asyncio.to_thread(parse_search_form, fields, images[0] if images else None, limits)

    def decode_files(files: list[bytes]) -> list[np.ndarray]:
        budget = PixelBudget(limits.max_pixels)  # one budget for all the images of the request
        return [decode_upload(f, limits, budget) for f in files]

    async def parse_items(request: Request, *, allow_texts: bool) -> tuple[str, list[Any]]:
        if _content_type(request) == "application/json":
            body = await read_json(request)
            return await asyncio.to_thread(parse_texts_or_images, body, limits, allow_texts=allow_texts)
        fields, files = await read_form(request)
        if fields:
            raise ServeError(422, "unknown_fields", f"unexpected form field(s) {sorted(fields)}; send `image` files")
        if not files:
            raise ServeError(400, "empty_batch", "send at least one `image` file")
        check_batch(len(files), limits)
        return "image", await asyncio.to_thread(decode_files, files)

    def fail(route: str, exc: BaseException, version: str = "") -> Response:
        resp = json_error(exc)
        obs.count(route, resp.status_code, version)
        return resp

    # ---- routes ------------------------------------------------------------------------------------

    @api.get("/healthz", include_in_schema=False)
    async def healthz():
        try:
            up = bool(await asyncio.wait_for(backend.ready(), timeout=HEALTH_TIMEOUT_S))
        except Exception:  # noqa: BLE001 - any failure to answer is "down"
            up = False
        return json_response({"status": "up" if up else "down"}, 200 if up else 503)

    @api.get("/status", include_in_schema=False)
    async def status(request: Request):
        try:
            check_key(request)
            return json_response(await call(backend.status()))
        except Exception as exc:
            return fail("status", exc)

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request):
        try:
            check_key(request)
            info = await call(backend.describe())
            doc = build_openapi(
                limits=limits,
                auth_required=auth.required,
                indices=info["indices"],
                model=info.get("model"),
                versions=split.versions if split else [],
                title=title,
            )
            return json_response(doc)
        except Exception as exc:
            return fail("openapi", exc)

    @api.get("/indices", include_in_schema=False)
    async def indices(request: Request):
        try:
            check_key(request)
            result = await call(backend.describe())
        except Exception as exc:
            return fail("indices", exc)
        obs.count("indices", 200)
        return json_response(result)

    @api.post("/search", include_in_schema=False)
    async def search(request: Request):
        t0 = time.perf_counter()
        try:
            check_key(request)
            q = await parse_search_request(request)
            result = await call(backend.search(q))
        except Exception as exc:
            return fail("search", exc)
        ms = (time.perf_counter() - t0) * 1000
        obs.searched(result["index"], q.kind, q.k, len(result["hits"]), ms)
        obs.count("search", 200)
        return json_response(
            {"index": result["index"], "kind": q.kind, "k": q.k, "took_ms": round(ms, 2), "hits": result["hits"]}
        )

    @api.post("/embed", include_in_schema=False)
    async def embed(request: Request):
        try:
            check_key(request)
            kind, items = await parse_items(request, allow_texts=True)
            result = await call(backend.embed(kind, items))
        except Exception as exc:
            return fail("embed", exc)
        obs.count("embed", 200)
        return json_response(
            {**result, "kind": kind, "embeddings": [np.asarray(v).tolist() for v in result["embeddings"]]}
        )

    @api.post("/classify", include_in_schema=False)
    async def classify(request: Request):
        version = ""
        try:
            check_key(request)
            if split is None:
                raise ServeError(404, "no_classifier", "this service has no classifier configured")
            ab_key = request.headers.get(AB_KEY_HEADER)
            if ab_key is not None and len(ab_key) > AB_KEY_MAX:
                raise ServeError(400, "bad_ab_key", f"`{AB_KEY_HEADER}` is at most {AB_KEY_MAX} characters")
            try:
                version = split.route(request.headers.get(VERSION_HEADER), ab_key)
            except KeyError as e:
                raise ServeError(400, "unknown_version", str(e.args[0])) from None
            _, images = await parse_items(request, allow_texts=False)
            t0 = time.perf_counter()
            result = await call(backend.classify(version, images))
        except Exception as exc:
            return fail("classify", exc, version)
        obs.model_latency((time.perf_counter() - t0) * 1000, "classify", version)
        obs.count("classify", 200, version)
        return json_response({"model_version": version, **result})

    @api.get("/images/{index}/{item_id}", include_in_schema=False)
    async def image(request: Request):
        try:
            check_key(request)
            name = check_index_name(request.path_params["index"])
            item_id = _item_id(request.path_params["item_id"])
            data, media = await call(backend.image(name, item_id, limits.max_body_bytes))
        except Exception as exc:
            return fail("images", exc)
        obs.count("images", 200)
        return Response(data, media_type=media, headers={"cache-control": "private, max-age=300"})

    return api
