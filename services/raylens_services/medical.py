"""The medical fusion service: a zipped DICOM upload in, a de-identified prediction out (Ray Serve).

``POST /predict`` takes a zip archive as the raw request body (``Content-Type: application/zip``)
holding the DICOM files of one or more studies (CT, MR or both). The archive is opened in memory with
the safe-zip checks of :mod:`raylens.serve.limits` (no paths outside the archive, no links, no zip
bombs), headers are read and pseudonymised in memory with the de-identification key, series are
decoded and paired, and the fusion model predicts from whichever modalities are present. The
response lists, per study, the probability, the label, the modalities used and the model kind,
under pseudonymised ids only. Nothing is written to disk and nothing identifying is logged.

Limits (413), bad archives or bad DICOM (400/422), a missing or wrong API key (401): always a JSON
body ``{"error": {"status", "code", "message"}}``, never a 500 for bad input.

Configuration (environment of the replica, or ``build_app`` arguments):

* ``RAYLENS_MEDICAL_CHECKPOINT``: a checkpoint directory from ``raylens_domains.medical.save_checkpoint``;
* ``RAYLENS_DEID_KEY``: the pseudonymisation key (the one used at ingest, so ids match);
* ``RAYLENS_API_KEY``: when set, requests need it in ``x-api-key`` (or ``Authorization: Bearer``);
* ``RAYLENS_MAX_BODY_BYTES``, ``RAYLENS_MAX_PIXELS``, ``RAYLENS_MAX_BATCH``, ...: the limits.

Run: ``serve run raylens_services.medical:app`` or ``serve run raylens_services.medical:build_app
checkpoint=/path/to/ckpt``.
"""

# No ``from __future__ import annotations`` here: FastAPI must see the real ``Request`` annotation
# on the methods that ``serve.ingress`` wraps, or it treats ``request`` as a query parameter.
import asyncio
import logging
import os
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from raylens.serve.http import install_error_handlers, json_error, read_body, require_api_key
from raylens.serve.limits import ServeError, ServeLimits, check_batch, check_pixels, safe_zip_members

__all__ = ["api", "MedicalFusionService", "app", "build_app", "CHECKPOINT_ENV"]

log = logging.getLogger("raylens.services.medical")
CHECKPOINT_ENV = "RAYLENS_MEDICAL_CHECKPOINT"

api = install_error_handlers(FastAPI(title="raylens medical fusion", version="1"))


@serve.deployment(num_replicas=1, max_ongoing_requests=4, ray_actor_options={"num_cpus": 1})
@serve.ingress(api)
class MedicalFusionService:
    """Serve wrapper around :class:`raylens_domains.medical.FusionPredictor`."""

    def __init__(
        self,
        checkpoint: str | None = None,
        deid_key: str | None = None,
        limits: dict[str, Any] | None = None,
        threshold: float = 0.5,
    ):
        import torch

        from raylens_domains.medical import DeidConfig, FusionPredictor

        torch.set_num_threads(1)
        self.limits = ServeLimits(**limits) if limits else ServeLimits.from_env()
        self.predictor = None
        self.problem = None
        checkpoint = checkpoint or os.environ.get(CHECKPOINT_ENV)
        try:
            deid = DeidConfig(key=deid_key)  # falls back to RAYLENS_DEID_KEY
        except ValueError as e:
            deid, self.problem = None, str(e)
        if not checkpoint:
            self.problem = f"no model configured: set {CHECKPOINT_ENV} to a fusion checkpoint directory"
        elif deid is not None:
            self.predictor = FusionPredictor.from_checkpoint(checkpoint, deid=deid, threshold=threshold)

    def _auth(self, request: Request) -> None:
        require_api_key(request)

    @api.get("/healthz")
    async def healthz(self, request: Request) -> dict[str, Any]:
        self._auth(request)
        return {
            "ready": self.predictor is not None,
            "model": getattr(self.predictor, "kind", None),
            "problem": self.problem,
        }

    @api.post("/predict")
    async def predict(self, request: Request):
        try:
            self._auth(request)
            if self.predictor is None:
                raise ServeError(503, "not_ready", self.problem or "the model is not loaded")
            ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
            if ctype not in ("application/zip", "application/x-zip-compressed", "application/octet-stream", ""):
                raise ServeError(
                    415,
                    "unsupported_media_type",
                    "send the DICOM files as a zip archive (Content-Type: application/zip)",
                )
            body = await read_body(request, self.limits)
            result = await asyncio.to_thread(self._predict_zip, body)
            return JSONResponse(result)
        except Exception as exc:  # every failure becomes a JSON error; bad input is never a 500
            return json_error(exc, logger=log, details=False)  # a 5xx is logged without its message: it may hold data

    def _predict_zip(self, body: bytes) -> dict[str, Any]:
        from raylens_domains.medical.errors import DicomError

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


def build_app(args: dict[str, Any] | None = None):
    """App builder for ``serve run raylens_services.medical:build_app checkpoint=... [deid_key=...]``."""
    args = dict(args or {})
    limits = args.pop("limits", None)
    return MedicalFusionService.bind(
        checkpoint=args.get("checkpoint"),
        deid_key=args.get("deid_key"),
        limits=limits,
        threshold=float(args.get("threshold", 0.5)),
    )


app = MedicalFusionService.bind()
