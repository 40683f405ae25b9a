"""The medical fusion service: a zipped DICOM upload in, a de-identified prediction out (Ray Serve).

``POST /predict`` takes a zip archive as the raw request body (``Content-Type: application/zip``)
holding the DICOM files of one or more studies (CT, MR or both). The archive is opened in memory with
the safe-zip checks of :mod:`raylens.serve.limits` (entry count before the central directory is
parsed, no paths outside the archive, no links, no zip bombs, a corrupt member is a 400), headers are
read and pseudonymised in memory with the de-identification key, series are decoded and paired, and
the fusion model predicts from whichever modalities are present. The response lists, per study, the
probability, the label, the modalities used and the model kind, under pseudonymised ids only. Nothing
is written to disk and nothing identifying is logged. Decoding and prediction run off the event loop.

Doors (as the search service): ``GET /healthz`` is open and says only ``{"status": "up"}`` (200) or
``"down"`` (503); ``GET /status`` (the model kind, or why it is not ready) and ``GET /openapi.json``
(this API's contract: every error status documented) need the API key; ``/docs`` and ``/redoc`` are off.
The key is resolved when the app is built (:func:`raylens.serve.auth.resolve_auth`: ``api_key_file`` /
``api_key`` arguments, else ``RAYLENS_API_KEY``/``RAYLENS_API_KEY_FILE`` there) and passed to every
replica; without a key the service refuses to start on a non-loopback host unless ``open=true``.

Limits (413), bad archives or bad DICOM (400/422), a missing or wrong API key (401), not ready or a
full queue (503), a prediction over ``request_timeout_s`` (504): always a JSON body
``{"error": {"status", "code", "message"}}``, never a 500 for bad input. ``check_health`` fails after
repeated internal failures, so Serve replaces the replica.

Configuration (``build_app`` arguments, else the environment where the app is built):

* ``checkpoint`` / ``RAYLENS_MEDICAL_CHECKPOINT``: a checkpoint directory from
  ``raylens_domains.medical.save_checkpoint``;
* ``deid_key`` / ``RAYLENS_DEID_KEY``: the pseudonymisation key (the one used at ingest, so ids match);
* ``api_key_file``, ``api_key``, ``open``: auth, as above;
* ``limits`` / ``RAYLENS_MAX_BODY_BYTES``, ``RAYLENS_MAX_PIXELS``, ...: the limits.

Run: ``serve run raylens_services.medical:build_app checkpoint=/path/to/ckpt api_key_file=~/.raylens/key``.
"""

# No ``from __future__ import annotations`` here: FastAPI must see the real ``Request`` annotation
# on the methods that ``serve.ingress`` wraps, or it treats ``request`` as a query parameter.
import asyncio
import logging
import os
from typing import Any

from fastapi import FastAPI, Request
from ray import serve

from raylens.serve.auth import ServeAuth, app_flag, resolve_auth
from raylens.serve.http import install_error_handlers, json_error, json_response, read_body
from raylens.serve.limits import ServeError, ServeLimits, check_batch, check_pixels, safe_zip_members
from raylens.serve.observe import FailureStreak, quiet_client_errors
from raylens.serve.openapi import ERROR_SCHEMA, HEALTH_SCHEMA
from raylens.serve.ray_apps import serve_http_host

__all__ = [
    "MedicalCore",
    "create_medical_api",
    "medical_openapi",
    "MedicalFusionService",
    "build_app",
    "CHECKPOINT_ENV",
]

log = logging.getLogger("raylens.services.medical")
CHECKPOINT_ENV = "RAYLENS_MEDICAL_CHECKPOINT"
_ZIP_TYPES = ("application/zip", "application/x-zip-compressed", "application/octet-stream", "")


class MedicalCore:
    """The service's work, plain Python (no Ray, no HTTP): a :class:`raylens_domains.medical.FusionPredictor`
    and the upload checks. A missing checkpoint or key leaves it not ready, with the reason in ``problem``."""

    def __init__(
        self,
        checkpoint: str | None = None,
        deid_key: str | None = None,
        limits: dict[str, Any] | ServeLimits | None = None,
        threshold: float = 0.5,
    ):
        from raylens_domains.medical import DeidConfig, FusionPredictor

        if isinstance(limits, ServeLimits):
            self.limits = limits
        else:
            self.limits = ServeLimits(**limits) if limits else ServeLimits.from_env()
        self.predictor = None
        self.problem: str | None = None
        checkpoint = checkpoint or os.environ.get(CHECKPOINT_ENV)
        try:
            deid = DeidConfig(key=deid_key)  # falls back to RAYLENS_DEID_KEY
        except ValueError as e:
            deid, self.problem = None, str(e)
        if not checkpoint:
            self.problem = f"no model configured: set {CHECKPOINT_ENV} or the app's `checkpoint` to a fusion checkpoint"
        elif deid is not None:
            self.predictor = FusionPredictor.from_checkpoint(checkpoint, deid=deid, threshold=threshold)

    @property
    def ready(self) -> bool:
        return self.predictor is not None

    def status(self) -> dict[str, Any]:
        """Details for ``GET /status`` (behind the key): no paths, no hashes of files."""
        return {"ready": self.ready, "model": getattr(self.predictor, "kind", None), "problem": self.problem}

    def predict_zip(self, body: bytes) -> dict[str, Any]:
        """Predict from a zip archive's bytes (blocking: call it off the event loop)."""
        from raylens_domains.medical.errors import DicomError

        if self.predictor is None:
            raise ServeError(503, "not_ready", self.problem or "the model is not loaded")
        members = safe_zip_members(body, self.limits)
        if not members:
            raise ServeError(400, "empty_archive", "the archive holds no files")
        try:
            upload = self.predictor.read_upload(members)
        except DicomError as e:
            raise ServeError(422, "bad_dicom", str(e)) from None
        check_pixels(upload.n_voxels, self.limits)
        studies = {hs[0].study_uid for hs in upload.groups.values()}
        if not studies:
            raise ServeError(
                422, "no_dicom_images", f"the archive holds no DICOM images ({len(upload.skipped)} files skipped)"
            )
        check_batch(len(studies), self.limits)
        try:
            preds, skipped = self.predictor.predict_upload(upload)
        except DicomError as e:
            raise ServeError(422, "bad_dicom", str(e)) from None
        if not preds:
            reasons = sorted({s["reason"] for s in skipped})[:5]
            raise ServeError(422, "no_usable_series", "no usable CT or MR series: " + "; ".join(reasons))
        return {"model": self.predictor.kind, "predictions": [p.to_dict() for p in preds], "skipped": skipped}


def medical_openapi(limits: ServeLimits, *, auth_required: bool) -> dict[str, Any]:
    """The service's OpenAPI 3.1 document: what ``/predict`` accepts, the liveness and status doors, and
    every status they answer (checked with schemathesis, every check enabled: the zip-of-DICOM bodies
    come from ``tests/schemathesis_hooks.py``)."""

    def err(description: str, headers: tuple[str, ...] = ()) -> dict[str, Any]:
        out: dict[str, Any] = {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        if headers:
            out["headers"] = {h: {"schema": {"type": "string"}} for h in headers}
        return out

    errors = {
        "400": err("Not a readable zip archive, an unsafe or corrupt member, an empty archive"),
        "413": err("Over a limit: body bytes, archive entries or expanded bytes, voxels, studies per request"),
        "415": err("Not a zip archive (Content-Type)"),
        "422": err("No usable DICOM CT or MR series in the archive"),
        "503": err("Not ready, or at capacity (retry)", ("Retry-After",)),
        "504": err("The prediction did not finish in time (retry)"),
    }
    unauthorized = {"401": err("No or a wrong API key", ("WWW-Authenticate",))} if auth_required else {}
    errors.update(unauthorized)
    health = {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}}
    status = {
        "type": "object",
        "required": ["ready", "model", "problem"],
        "properties": {
            "ready": {"type": "boolean"},
            "model": {"type": ["string", "null"], "description": "The fusion model's kind; null when not ready"},
            "problem": {"type": ["string", "null"], "description": "Why the service is not ready"},
        },
    }
    prediction = {
        "type": "object",
        "required": ["probability", "label", "modalities_used", "model", "study_uid", "patient_id", "warnings"],
        "properties": {
            "probability": {"type": "number", "minimum": 0, "maximum": 1},
            "label": {"type": "integer", "enum": [0, 1]},
            "modalities_used": {"type": "array", "items": {"type": "string", "enum": ["CT", "MR"]}},
            "model": {"type": "string"},
            "study_uid": {"type": "string"},
            "patient_id": {"type": "string", "pattern": "^PAT-"},
            "warnings": {"type": "array", "items": {"type": "string"}},
        },
    }
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "raylens medical fusion", "version": "1"},
        "paths": {
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "Liveness: up or down, nothing else (no key needed)",
                    "security": [],
                    "responses": {
                        "200": {"description": "Up", "content": health},
                        "503": {"description": "Down: no model loaded", "content": health},
                    },
                }
            },
            "/status": {
                "get": {
                    "operationId": "status",
                    "summary": "Readiness details: the model kind, or why it is not ready",
                    "responses": {
                        "200": {
                            "description": "The service's state",
                            "content": {"application/json": {"schema": status}},
                        },
                        **unauthorized,
                    },
                }
            },
            "/predict": {
                "post": {
                    "operationId": "predict",
                    "summary": "Predict from a zip archive of DICOM CT and/or MR series (de-identified in memory)",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/zip": {
                                "schema": {"type": "string", "format": "binary", "maxLength": limits.max_body_bytes}
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "One prediction per study, and the files or series skipped",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["model", "predictions", "skipped"],
                                        "properties": {
                                            "model": {"type": "string"},
                                            "predictions": {"type": "array", "items": prediction},
                                            "skipped": {"type": "array", "items": {"type": "object"}},
                                        },
                                    }
                                }
                            },
                        },
                        **errors,
                    },
                }
            },
        },
        "components": {"schemas": {"Error": ERROR_SCHEMA, "Health": HEALTH_SCHEMA}},
    }
    if auth_required:
        doc["components"]["securitySchemes"] = {"apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}}
        doc["security"] = [{"apiKey": []}]
    return doc


def create_medical_api(
    core: MedicalCore, *, auth: ServeAuth, failures: FailureStreak | None = None, title: str = "raylens medical fusion"
) -> FastAPI:
    """The service's FastAPI app over ``core`` (plain: the Serve deployment builds it in each replica)."""
    if not isinstance(auth, ServeAuth):
        raise TypeError(f"`auth` must be a ServeAuth (see raylens.serve.auth.resolve_auth), got {type(auth).__name__}")
    failures = failures or FailureStreak()
    api = install_error_handlers(FastAPI(title=title, version="1", openapi_url=None, docs_url=None, redoc_url=None))

    def check_key(request: Request) -> None:
        auth.check(request.headers.get("x-api-key") or request.headers.get("authorization"))

    @api.get("/healthz", include_in_schema=False)
    async def healthz():
        up = core.ready
        return json_response({"status": "up" if up else "down"}, 200 if up else 503)

    @api.get("/status", include_in_schema=False)
    async def status(request: Request):
        try:
            check_key(request)
            return json_response(core.status())
        except Exception as exc:
            return json_error(exc, logger=log, details=False)

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request):
        try:
            check_key(request)
            return json_response(medical_openapi(core.limits, auth_required=auth.required))
        except Exception as exc:
            return json_error(exc, logger=log, details=False)

    @api.post("/predict", include_in_schema=False)
    async def predict(request: Request):
        try:
            check_key(request)
            if not core.ready:
                raise ServeError(503, "not_ready", core.problem or "the model is not loaded")
            ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
            if ctype not in _ZIP_TYPES:
                raise ServeError(
                    415,
                    "unsupported_media_type",
                    "send the DICOM files as a zip archive (Content-Type: application/zip)",
                )
            body = await read_body(request, core.limits)
            result = await asyncio.wait_for(
                asyncio.to_thread(core.predict_zip, body), timeout=core.limits.request_timeout_s
            )
        except Exception as exc:  # every failure becomes a JSON error; bad input is never a 500
            failures.record(exc)
            return json_error(exc, logger=log, details=False)  # a 5xx is logged without its message: it may hold data
        failures.ok()
        return json_response(result)

    return api


@serve.deployment(
    num_replicas=1,
    max_ongoing_requests=4,
    max_queued_requests=16,
    health_check_period_s=10,
    health_check_timeout_s=30,
    graceful_shutdown_timeout_s=20,
    ray_actor_options={"num_cpus": 1},
)
@serve.ingress()
class MedicalFusionService:
    """Serve wrapper: :class:`MedicalCore` behind :func:`create_medical_api`, built in each replica."""

    async def __init__(
        self,
        checkpoint: str | None = None,
        deid_key: str | None = None,
        limits: dict[str, Any] | None = None,
        threshold: float = 0.5,
        auth: ServeAuth | None = None,
    ):
        import torch

        quiet_client_errors()
        self.auth = auth if auth is not None else resolve_auth()
        if not isinstance(self.auth, ServeAuth):
            raise TypeError(
                f"`auth` must be a ServeAuth (raylens.serve.auth.resolve_auth), got {type(self.auth).__name__}"
            )
        self.auth.check_bind(await serve_http_host())  # no key on a public address: refuse to start
        torch.set_num_threads(1)
        self.failures = FailureStreak()
        self.core = MedicalCore(checkpoint, deid_key, limits, threshold)

    def __serve_build_asgi_app__(self):
        return create_medical_api(self.core, auth=self.auth, failures=self.failures)

    def check_health(self) -> None:
        """Serve's health check: predictions are not failing inside the replica again and again."""
        self.failures.check("MedicalFusionService")


def build_app(args: dict[str, Any] | None = None):
    """App builder: ``serve run raylens_services.medical:build_app checkpoint=... [deid_key=...]
    [api_key_file=...|open=true]``. The API key is resolved here, where the app is built."""
    args = dict(args or {})
    auth = resolve_auth(
        api_key=args.get("api_key"),
        api_key_file=os.path.expanduser(args["api_key_file"]) if args.get("api_key_file") else None,
        open=app_flag(args.get("open"), "open"),
    )
    return MedicalFusionService.bind(
        checkpoint=args.get("checkpoint"),
        deid_key=args.get("deid_key"),
        limits=args.get("limits"),
        threshold=float(args.get("threshold", 0.5)),
        auth=auth,
    )


app = build_app()
"""``serve run raylens_services.medical:app``: the checkpoint, de-identification key and API key from the
environment where the app is built (see the module docstring)."""
