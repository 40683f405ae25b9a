"""The search service: a FastAPI ingress on Ray Serve over the embedding, index and classifier deployments.

Endpoints (JSON errors ``{"error": {"status", "code", "message"}}`` for every refusal, never a 500 for
bad input; an API key in ``x-api-key`` or ``Authorization: Bearer`` when ``RAYLENS_API_KEY`` or
``RAYLENS_API_KEY_FILE`` is set):

* ``POST /search``: text, an image (multipart ``image`` file or JSON ``image_b64``) or an
  ``embedding``; ``k``; metadata ``filters``; ``index`` name -> hits with scores and metadata.
* ``POST /embed``: ``{"texts": [...]}`` or ``{"images_b64": [...]}`` -> embeddings.
* ``POST /classify``: images -> class probabilities from one of the classifier versions (A/B split;
  ``x-model-version`` pins one, ``x-ab-key`` keeps a caller on one).
* ``GET /indices``, ``GET /healthz``, ``GET /images/{index}/{id}`` (a result's image file), ``GET /``
  (the search page).

Run: ``serve run services/raylens_services/search.yaml``, ``raylens serve``, or ``serve run raylens_services.search:app``
with ``RAYLENS_INDEX`` (and optionally ``RAYLENS_CHECKPOINT``) set.
"""

# No ``from __future__ import annotations``: FastAPI must see the real ``Request`` annotations on the
# methods that ``serve.ingress`` wraps.
import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from raylens.serve.ab import AB_KEY_HEADER, VERSION_HEADER, TrafficSplit
from raylens.serve.http import (
    enable_cors,
    install_error_handlers,
    json_error,
    raise_returned,
    read_body,
    require_api_key,
)
from raylens.serve.limits import ServeError, ServeLimits, check_batch
from raylens.serve.observe import LATENCY_BOUNDARIES_MS, MODEL_LATENCY_MS, REQUESTS, SEARCH_LATENCY_MS
from raylens.serve.query import (
    ITEMS_JSON_SCHEMA,
    SEARCH_FORM_SCHEMA,
    SEARCH_JSON_SCHEMA,
    SearchQuery,
    check_index_name,
    decode_upload,
    parse_search,
    parse_search_form,
    parse_texts_or_images,
)
from raylens_services.classify import Classifier
from raylens_services.embedding import CHECKPOINT_ENV, ClipEmbedder
from raylens_services.indices import INDEX_ENV, IndexServer, parse_index_spec

__all__ = ["api", "SearchIngress", "build_app", "app", "CLASSIFIER_ENV"]

log = logging.getLogger("ray.serve")
CLASSIFIER_ENV = "RAYLENS_CLASSIFIER"
STATIC = Path(__file__).parent / "static"
IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
}

api = install_error_handlers(
    FastAPI(
        title="raylens search",
        version="1",
        description="Text-to-image search, embeddings and classification over HTTP (Ray Serve).",
    )
)
enable_cors(api)  # only when RAYLENS_CORS_ORIGINS is set


def _body_doc(json_schema: dict[str, Any], form_schema: dict[str, Any] | None = None) -> dict[str, Any]:
    content = {"application/json": {"schema": json_schema}}
    if form_schema:
        content["multipart/form-data"] = {"schema": form_schema}
    return {"requestBody": {"required": True, "content": content}}


_IMAGES_FORM = {
    "type": "object",
    "properties": {"image": {"type": "array", "items": {"type": "string", "format": "binary"}}},
}


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.25})
@serve.ingress(api)
class SearchIngress:
    """HTTP in front of the model and index deployments (composed through ``DeploymentHandle``)."""

    def __init__(
        self,
        embedder: DeploymentHandle,
        indices: DeploymentHandle,
        classifiers: dict[str, DeploymentHandle] | None = None,
        split: dict[str, float] | None = None,
        limits: dict[str, Any] | None = None,
        batch: dict[str, Any] | None = None,
    ):
        from ray.serve.metrics import Counter, Histogram

        batch = dict(batch or {})
        self._search_batch.set_max_batch_size(int(batch.get("max_batch_size", 32)))
        self._search_batch.set_batch_wait_timeout_s(float(batch.get("batch_wait_timeout_s", 0.005)))

        self.embedder = embedder
        self.indices = indices
        self.classifiers = dict(classifiers or {})
        self.split = TrafficSplit(split or {v: 1.0 for v in self.classifiers}) if self.classifiers else None
        if self.split and set(self.split.versions) != set(self.classifiers):
            raise ValueError(
                f"the traffic split names {self.split.versions} but the classifier versions are "
                f"{sorted(self.classifiers)}; give a weight to each version"
            )
        self.limits = ServeLimits(**limits) if limits else ServeLimits.from_env()
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

    # ---- helpers ----------------------------------------------------------------------------------

    def _count(self, route: str, status: int, version: str = "") -> None:
        self._requests.inc(tags={"route": route, "version": version, "status": str(status)})

    def _fail(self, route: str, exc: BaseException, version: str = "") -> JSONResponse:
        resp = json_error(exc)
        self._count(route, resp.status_code, version)
        return resp

    async def _json(self, request: Request) -> Any:
        body = await read_body(request, self.limits)
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise ServeError(400, "bad_json", "the body is not valid JSON") from None

    async def _form(self, request: Request) -> tuple[dict[str, Any], list[bytes]]:
        """Form fields (strings) and the bytes of every ``image`` file."""
        await read_body(request, self.limits)
        try:
            form = await request.form(max_files=self.limits.max_batch, max_fields=16)
        except Exception as e:  # Starlette/python-multipart raise several types for malformed forms
            detail = str(getattr(e, "detail", "") or e)
            if detail.startswith("Too many"):  # Starlette: "Too many files. Maximum number of files is N."
                raise ServeError(413, "batch_too_large", f"{detail} (the batch limit)") from None
            raise ServeError(400, "bad_form", f"not a readable multipart form ({detail[:200]})") from None
        fields: dict[str, Any] = {}
        images: list[bytes] = []
        for key, value in form.multi_items():
            if hasattr(value, "read"):
                if key != "image":
                    raise ServeError(422, "unknown_file", f"unexpected file field {key!r}; send images as `image`")
                images.append(await value.read())
            elif key == "image":
                raise ServeError(422, "bad_image", "`image` must be a file upload, not a text field")
            else:
                fields[key] = value
        return fields, images

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005, max_concurrent_batches=4)
    async def _search_batch(self, queries: list[SearchQuery]) -> list[Any]:
        """Concurrent searches run together: per (kind, index, filters) group, one embedder call for
        all its texts (or images) and one FAISS search for all its vectors. A group's error is
        returned to each of its queries (and raised there), never to the others."""
        out: list[Any] = [None] * len(queries)
        groups: dict[tuple, list[int]] = {}
        for i, q in enumerate(queries):
            dim = len(q.embedding) if q.kind == "embedding" else 0
            key = (q.kind, q.index, json.dumps(q.filters, sort_keys=True, default=str), dim)
            groups.setdefault(key, []).append(i)

        async def run(idx: list[int]) -> None:
            first = queries[idx[0]]
            try:
                if first.kind == "text":
                    vectors = self.embedder.embed_texts.remote([queries[i].text for i in idx])
                elif first.kind == "image":
                    vectors = self.embedder.embed_images.remote([queries[i].image for i in idx])
                else:
                    vectors = np.stack([np.asarray(queries[i].embedding, np.float32) for i in idx])
                # a DeploymentResponse passed on: Serve hands the vectors to the index replica directly
                res = raise_returned(
                    await self.indices.search_many.remote(
                        first.index, vectors, max(queries[i].k for i in idx), first.filters
                    )
                )
                for row, i in zip(res["hits"], idx):
                    out[i] = {"index": res["index"], "hits": row[: queries[i].k]}
            except Exception as exc:  # noqa: BLE001 - handed back to each caller, who maps it to a 4xx/5xx
                for i in idx:
                    out[i] = exc

        await asyncio.gather(*(run(idx) for idx in groups.values()))
        return out

    @staticmethod
    def _content_type(request: Request) -> str:
        ctype = (request.headers.get("content-type") or "application/json").split(";")[0].strip().lower()
        if ctype not in ("application/json", "multipart/form-data"):
            raise ServeError(
                415, "unsupported_media_type", f"send application/json or multipart/form-data, not {ctype!r}"
            )
        return ctype

    async def _parse_search(self, request: Request) -> SearchQuery:
        if self._content_type(request) == "application/json":
            return parse_search(await self._json(request), self.limits)
        fields, images = await self._form(request)
        if len(images) > 1:
            raise ServeError(422, "one_query", "send one `image` file per search")
        return parse_search_form(fields, images[0] if images else None, self.limits)

    async def _images(self, request: Request) -> tuple[str, list[Any]]:
        if self._content_type(request) == "application/json":
            return parse_texts_or_images(await self._json(request), self.limits, allow_texts=False)
        fields, files = await self._form(request)
        if fields:
            raise ServeError(422, "unknown_fields", f"unexpected form field(s) {sorted(fields)}; send `image` files")
        if not files:
            raise ServeError(400, "empty_batch", "send at least one `image` file")
        check_batch(len(files), self.limits)
        return "image", [decode_upload(f, self.limits) for f in files]

    # ---- endpoints --------------------------------------------------------------------------------

    @api.get("/healthz", summary="Readiness: model, indices and whether they match")
    async def healthz(self):
        problems = []
        model = await self.embedder.info.remote()
        catalog = await self.indices.describe.remote()
        for name, d in catalog["indices"].items():
            if d["model"] != model["model"] or (
                d["checkpoint_hash"] and d["checkpoint_hash"] != model["checkpoint_hash"]
            ):
                problems.append(
                    f"index {name!r} was built with {d['model']} ({d['checkpoint_hash']}), the embedder "
                    f"serves {model['model']} ({model['checkpoint_hash']})"
                )
        if not catalog["indices"]:
            problems.append(f"no index is open; set {INDEX_ENV}")
        versions = {v: await h.info.remote() for v, h in self.classifiers.items()}
        return {
            "ready": not problems,
            "model": model,
            "indices": sorted(catalog["indices"]),
            "classifier_versions": versions,
            "problems": problems,
        }

    @api.get("/indices", summary="The open indices: model, count, dim, metadata columns")
    async def list_indices(self, request: Request):
        try:
            require_api_key(request)
            return JSONResponse(await self.indices.describe.remote())
        except Exception as exc:
            return json_error(exc)

    @api.post(
        "/search",
        summary="Search an index by text, image or embedding",
        openapi_extra=_body_doc(SEARCH_JSON_SCHEMA, SEARCH_FORM_SCHEMA),
    )
    async def search(self, request: Request):
        t0 = time.perf_counter()
        try:
            require_api_key(request)
            q = await self._parse_search(request)
            result = await self._search_batch(q)
            if isinstance(result, Exception):
                raise result
        except Exception as exc:
            return self._fail("search", exc)
        ms = (time.perf_counter() - t0) * 1000
        self._latency.observe(ms, tags={"index": result["index"], "kind": q.kind})
        self._count("search", 200)
        log.info("search index=%s kind=%s k=%d hits=%d ms=%.1f", result["index"], q.kind, q.k, len(result["hits"]), ms)
        return JSONResponse(
            {"index": result["index"], "kind": q.kind, "k": q.k, "took_ms": round(ms, 2), "hits": result["hits"]}
        )

    @api.post("/embed", summary="Embed texts or images", openapi_extra=_body_doc(ITEMS_JSON_SCHEMA))
    async def embed(self, request: Request):
        try:
            require_api_key(request)
            kind, items = (
                parse_texts_or_images(await self._json(request), self.limits)
                if self._content_type(request) == "application/json"
                else await self._images(request)
            )
            method = self.embedder.embed_text if kind == "text" else self.embedder.embed_image
            responses = [method.remote(x) for x in items]  # one call each: the replica batches them
            vectors = [await r for r in responses]
            info = await self.embedder.info.remote()
        except Exception as exc:
            return self._fail("embed", exc)
        self._count("embed", 200)
        return JSONResponse(
            {
                "model": info["model"],
                "checkpoint_hash": info["checkpoint_hash"],
                "kind": kind,
                "dim": info["dim"],
                "embeddings": [v.tolist() for v in vectors],
            }
        )

    @api.post(
        "/classify",
        summary="Classify images with one of the model versions (A/B split)",
        openapi_extra=_body_doc(
            {**ITEMS_JSON_SCHEMA, "properties": {"images_b64": ITEMS_JSON_SCHEMA["properties"]["images_b64"]}},
            _IMAGES_FORM,
        ),
    )
    async def classify(self, request: Request):
        version = ""
        try:
            require_api_key(request)
            if self.split is None:
                raise ServeError(404, "no_classifier", "this service has no classifier configured")
            try:
                version = self.split.route(request.headers.get(VERSION_HEADER), request.headers.get(AB_KEY_HEADER))
            except KeyError as e:
                raise ServeError(400, "unknown_version", str(e.args[0])) from None
            _, images = await self._images(request)
            t0 = time.perf_counter()
            result = raise_returned(await self.classifiers[version].predict.remote(images))
        except Exception as exc:
            return self._fail("classify", exc, version)
        self._model_latency.observe((time.perf_counter() - t0) * 1000, tags={"route": "classify", "version": version})
        self._count("classify", 200, version)
        return JSONResponse({"model_version": version, **result})

    @api.get("/images/{index}/{item_id}", summary="The image file of one indexed item")
    async def image(
        self,
        request: Request,
        index: str = PathParam(..., max_length=64),
        item_id: int = PathParam(..., ge=0, le=2**62),
    ):
        try:
            require_api_key(request)
            path = raise_returned(await self.indices.image_path.remote(check_index_name(index), item_id))
            p = Path(path) if path else None
            if p is None or p.suffix.lower() not in IMAGE_TYPES or not p.is_file():
                raise ServeError(404, "no_image", f"item {item_id} has no image file on this server")
            if p.stat().st_size > self.limits.max_body_bytes:
                raise ServeError(413, "image_too_large", "the image file is over the size limit")
            return Response(
                p.read_bytes(), media_type=IMAGE_TYPES[p.suffix.lower()], headers={"cache-control": "max-age=300"}
            )
        except Exception as exc:
            return json_error(exc)

    @api.get("/", include_in_schema=False)
    async def page(self):
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @api.get("/app.js", include_in_schema=False)
    async def page_js(self):
        return Response((STATIC / "app.js").read_text(encoding="utf-8"), media_type="text/javascript")


def _abs(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else None


def _checkpoint_from_index(indices: dict[str, str]) -> tuple[str | None, str | None]:
    """(checkpoint, model) recorded in the first index's manifest."""
    if not indices:
        return None, None
    from raylens.index.store import find_index_dir, read_manifest

    m = read_manifest(find_index_dir(next(iter(indices.values()))))
    return m.checkpoint, m.model


def build_app(args: dict[str, Any] | None = None):
    """App builder (``serve run raylens_services.search:build_app indices=runs/index ...`` or a config's ``args``).

    ``args``: ``indices`` (``dir``, ``name=dir,...`` or a mapping; default ``RAYLENS_INDEX``),
    ``checkpoint``/``model`` (default: the first index's manifest), ``classifiers`` (``{version:
    {checkpoint, weight, classes, templates}}``; a missing checkpoint means the embedding model's;
    default ``RAYLENS_CLASSIFIER`` as one timm/CLIP checkpoint dir), ``limits`` (ServeLimits fields),
    ``batch`` (``{max_batch_size, batch_wait_timeout_s}`` of the embedder), ``options``
    (``{deployment name: Serve options}``, e.g. ``autoscaling_config``; a config file's
    ``deployments:`` section does the same for ``serve run``).
    """
    args = dict(args or {})
    options = dict(args.get("options") or {})

    def deployment(d, name: str | None = None):
        name = name or d.name
        return d.options(name=name, **options.get(name, {})) if (name != d.name or name in options) else d

    indices = {n: _abs(p) for n, p in parse_index_spec(args.get("indices") or os.environ.get(INDEX_ENV)).items()}
    checkpoint, model = _abs(args.get("checkpoint")), args.get("model")
    if not checkpoint:
        from_index, index_model = _checkpoint_from_index(indices)
        checkpoint = from_index or _abs(os.environ.get(CHECKPOINT_ENV))
        model = model or index_model
    embedder = deployment(ClipEmbedder).bind(checkpoint, model, **dict(args.get("batch") or {}))
    index_server = deployment(IndexServer).bind(indices or None)
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
        embedder, index_server, classifiers or None, split or None, args.get("limits"), args.get("batch")
    )


app = build_app()
