"""The NeRF render service: a camera in, a PNG of the trained scene out (Ray Serve).

``POST /render`` takes JSON ``{"checkpoint": NAME, "pose": [[4x4]] | "look_at": {"eye", "target",
"up"}, "width": W, "height": H, "fov_deg": F}`` and answers ``image/png``. Poses are camera-to-world
(OpenGL convention, camera looking down -z) in the capture's original frame, as in its
``transforms.json``; the checkpoint's scene record maps them into the model's frame.
``POST /render/batch`` takes ``{"checkpoint", "cameras": [camera, ...]}`` (each camera as above) and
answers JSON ``{"images": [base64 PNG, ...]}``. ``GET /checkpoints`` lists the names served.

Doors (as the search service): ``GET /healthz`` is open and says only ``{"status": "up"}`` (200: a
checkpoint is loaded) or ``"down"`` (503); ``GET /status`` (the checkpoints and why any did not load)
and every other route need the API key, resolved when the app is built
(:func:`raylens.serve.auth.resolve_auth`) and passed to every replica; without a key the service
refuses to start on a non-loopback host unless ``open=true``. FastAPI's ``/docs``, ``/redoc`` and
``/openapi.json`` are off. Both deployments have a ``check_health`` (repeated internal render
failures fail it) and a bounded queue (``max_queued_requests``: 503 past it).

Limits (:mod:`raylens.serve.limits`): the body size, the pixels rendered per request
(``max_pixels``, over all cameras) and the cameras per request (``max_batch``) are refused with 413;
a malformed request, an unknown checkpoint or a degenerate camera with 4xx; every error is JSON
``{"error": {"status", "code", "message"}}``. The renderer deployment autoscales on requests in
flight (see ``render.yaml``).

Configuration: ``build_app`` arguments (``checkpoints: {name: dir}``, ``limits``, ``api_key_file`` /
``api_key`` / ``open``) or the environment where the app is built:
``RAYLENS_RENDER_CHECKPOINTS="name=dir,name2=dir2"``, ``RAYLENS_API_KEY``/``RAYLENS_API_KEY_FILE``, the
``RAYLENS_MAX_*`` limits.

Run: ``serve run services/raylens_services/render.yaml`` or
``serve run raylens_services.render:build_app checkpoints='{"scene": "/path/to/ckpt"}'``.
"""

# No ``from __future__ import annotations``: FastAPI must see the real annotations of the routes.
import asyncio
import base64
import io
import json
import logging
import math
import os
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from raylens.serve.auth import ServeAuth, resolve_auth
from raylens.serve.http import install_error_handlers, json_error, json_response, read_body
from raylens.serve.limits import ServeError, ServeLimits, check_batch, check_pixels
from raylens.serve.observe import FailureStreak, quiet_client_errors
from raylens.serve.ray_apps import serve_http_host

__all__ = [
    "api",
    "LookAt",
    "Camera",
    "RenderRequest",
    "BatchRequest",
    "NerfRenderer",
    "RenderIngress",
    "build_app",
    "CHECKPOINTS_ENV",
]

log = logging.getLogger("raylens.services.render")
CHECKPOINTS_ENV = "RAYLENS_RENDER_CHECKPOINTS"
"""``name=dir,name2=dir2``: the checkpoints served when ``build_app`` is given none."""

api = install_error_handlers(
    FastAPI(title="raylens NeRF render", version="1", openapi_url=None, docs_url=None, redoc_url=None)
)


class LookAt(BaseModel):
    """A camera at ``eye`` looking at ``target`` (capture frame)."""

    eye: list[float] = Field(min_length=3, max_length=3)
    target: list[float] = Field(default=[0.0, 0.0, 0.0], min_length=3, max_length=3)
    up: list[float] = Field(default=[0.0, 0.0, 1.0], min_length=3, max_length=3)


class Camera(BaseModel):
    """One camera: a 4x4 (or 3x4) camera-to-world ``pose`` or a ``look_at``; size and field of view."""

    pose: list[list[float]] | None = None
    look_at: LookAt | None = None
    width: int | None = Field(default=None, ge=1)
    height: int | None = Field(default=None, ge=1)
    fov_deg: float | None = Field(default=None, gt=0, lt=180)


class RenderRequest(Camera):
    """``POST /render``: one camera of one checkpoint."""

    checkpoint: str | None = None


class BatchRequest(BaseModel):
    """``POST /render/batch``: several cameras of one checkpoint."""

    checkpoint: str | None = None
    cameras: list[Camera] = Field(min_length=1)


def _parse_checkpoints(value: str | dict[str, str] | None) -> dict[str, str]:
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    out = {}
    for item in (value or "").split(","):
        if item.strip():
            name, sep, path = item.partition("=")
            if not sep:
                raise ValueError(f"{CHECKPOINTS_ENV} items are name=dir, got {item!r}")
            out[name.strip()] = path.strip()
    return out


def _c2w(camera: Camera):
    """The camera's 4x4 pose (capture frame) from ``pose`` or ``look_at``; 422 when degenerate."""
    import numpy as np

    from raylens_domains.multiview.cameras import look_at, pose_problem

    if (camera.pose is None) == (camera.look_at is None):
        raise ServeError(422, "bad_camera", "give exactly one of `pose` (4x4 camera-to-world) or `look_at`")
    if camera.look_at is not None:
        try:
            return look_at(camera.look_at.eye, camera.look_at.target, camera.look_at.up)
        except ValueError as e:
            raise ServeError(422, "bad_camera", str(e)) from None
    m = np.asarray(camera.pose, dtype=np.float64)
    if m.shape not in ((4, 4), (3, 4)):
        raise ServeError(422, "bad_camera", f"`pose` must be 4x4 (or 3x4) camera-to-world, got shape {list(m.shape)}")
    problem = pose_problem(m)
    if problem:
        raise ServeError(422, "bad_camera", f"`pose`: {problem}")
    return m


@serve.deployment(
    max_ongoing_requests=4,
    max_queued_requests=32,
    health_check_period_s=10,
    health_check_timeout_s=30,
    ray_actor_options={"num_cpus": 1},
    autoscaling_config={"min_replicas": 1, "initial_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 1},
)
class NerfRenderer:
    """Holds the NeRF checkpoints and renders cameras (numpy PNG bytes out)."""

    def __init__(self, checkpoints: dict[str, str], threads: int = 1):
        import torch

        from raylens_domains.multiview.render_views import load_nerf

        quiet_client_errors()
        torch.set_num_threads(max(1, int(threads)))
        self.failures = FailureStreak()
        self.nerfs, self.problems = {}, {}
        for name, path in checkpoints.items():
            try:
                self.nerfs[name] = load_nerf(path)
            except Exception as e:  # noqa: BLE001 - one bad checkpoint leaves the others served
                self.problems[name] = f"{type(e).__name__}: {e}"
                log.warning("checkpoint %r (%s) did not load: %s", name, path, self.problems[name])

    def info(self) -> dict[str, Any]:
        from raylens.models import model_record

        return {
            "checkpoints": {n: {"arch": model_record(x.model).arch, "views": x.views} for n, x in self.nerfs.items()},
            "problems": dict(self.problems),
        }

    def check_health(self) -> None:
        """Serve's health check: renders are not failing inside the replica again and again."""
        self.failures.check("NerfRenderer")

    def render(self, name: str, cameras: list[dict[str, Any]]) -> list[bytes]:
        """PNG bytes of each camera (already validated by the ingress: pose in the capture frame)."""
        try:
            out = self._render(name, cameras)
        except Exception as exc:
            self.failures.record(exc)  # a client's mistake (4xx) is not the replica's failure
            raise
        self.failures.ok()
        return out

    def _render(self, name: str, cameras: list[dict[str, Any]]) -> list[bytes]:
        from PIL import Image

        from raylens_domains.multiview.render_views import render_view

        nerf = self.nerfs.get(name)
        if nerf is None:
            known = ", ".join(sorted(self.nerfs)) or "(none loaded)"
            raise ServeError(404, "unknown_checkpoint", f"no checkpoint {name!r} is served; known: {known}")
        out = []
        for cam in cameras:
            k = nerf.intrinsics(cam["width"], cam["height"], cam["fov"])
            view = render_view(nerf.model, nerf.to_model_frame(cam["c2w"]), k)
            buf = io.BytesIO()
            Image.fromarray(view.rgb).save(buf, "PNG")
            out.append(buf.getvalue())
        return out


@serve.deployment(
    max_ongoing_requests=64,
    max_queued_requests=256,
    health_check_period_s=10,
    health_check_timeout_s=30,
    ray_actor_options={"num_cpus": 0.25},
)
@serve.ingress(api)
class RenderIngress:
    """HTTP in front of :class:`NerfRenderer`: validation, limits, API key, PNG/JSON answers."""

    async def __init__(
        self,
        renderer: DeploymentHandle,
        limits: dict[str, Any] | None = None,
        default: str | None = None,
        auth: ServeAuth | None = None,
    ):
        self.auth = auth if auth is not None else resolve_auth()
        if not isinstance(self.auth, ServeAuth):
            raise TypeError(
                f"`auth` must be a ServeAuth (raylens.serve.auth.resolve_auth), got {type(self.auth).__name__}"
            )
        self.auth.check_bind(await serve_http_host())  # no key on a public address: refuse to start
        self.renderer = renderer
        self.limits = ServeLimits(**limits) if limits else ServeLimits.from_env()
        self.default = default

    def _key(self, request: Request) -> None:
        self.auth.check(request.headers.get("x-api-key") or request.headers.get("authorization"))

    def check_health(self) -> None:
        """Serve's health check: the replica holds its renderer handle (the renderer has its own check)."""
        if self.renderer is None:
            raise RuntimeError("RenderIngress: no renderer")

    async def _parse(self, request: Request, model: type[BaseModel]) -> BaseModel:
        body = await read_body(request, self.limits)
        try:
            return model.model_validate(json.loads(body or b"null"))
        except json.JSONDecodeError as e:
            raise ServeError(400, "bad_json", f"the body is not JSON ({e.msg}); send a JSON object") from None
        except ValueError as e:  # pydantic's ValidationError
            raise ServeError(
                422, "invalid_request", f"the request does not match the API: {e}".splitlines()[0]
            ) from None

    async def _cameras(self, name: str | None, cameras: list[Camera]) -> tuple[str, list[dict[str, Any]]]:
        check_batch(len(cameras), self.limits)
        info = await self.renderer.info.remote()
        served = info["checkpoints"]
        name = name or self.default or (next(iter(served)) if len(served) == 1 else None)
        if name is None:
            raise ServeError(422, "no_checkpoint", f"say which `checkpoint` to render: one of {sorted(served)}")
        if name not in served:
            raise ServeError(404, "unknown_checkpoint", f"no checkpoint {name!r} is served; known: {sorted(served)}")
        views = served[name]["views"]
        out, pixels = [], 0
        for cam in cameras:
            w = cam.width or int(views.get("width", 200))
            h = cam.height or (cam.width or int(views.get("height", w)))
            pixels += w * h
            fov = math.radians(cam.fov_deg) if cam.fov_deg else None
            out.append({"c2w": _c2w(cam), "width": w, "height": h, "fov": fov})
        check_pixels(pixels, self.limits)
        return name, out

    @api.get("/healthz")
    async def healthz(self):
        """Liveness, open: up (a checkpoint is loaded) or down, nothing else."""
        try:
            info = await asyncio.wait_for(self.renderer.info.remote(), timeout=5.0)
            up = bool(info["checkpoints"])
        except Exception:  # noqa: BLE001 - any failure to answer is "down"
            up = False
        return json_response({"status": "up" if up else "down"}, 200 if up else 503)

    @api.get("/status")
    async def status(self, request: Request):
        """Details, behind the key: the checkpoints served and why any did not load."""
        try:
            self._key(request)
            info = await self.renderer.info.remote()
            return {
                "ready": bool(info["checkpoints"]),
                "checkpoints": sorted(info["checkpoints"]),
                "problems": info["problems"],
            }
        except Exception as exc:  # noqa: BLE001 - every failure is a JSON error
            return json_error(exc, logger=log)

    @api.get("/checkpoints")
    async def checkpoints(self, request: Request):
        try:
            self._key(request)
            return JSONResponse(await self.renderer.info.remote())
        except Exception as exc:  # noqa: BLE001
            return json_error(exc, logger=log)

    @api.post("/render")
    async def render(self, request: Request):
        try:
            self._key(request)
            req = await self._parse(request, RenderRequest)
            name, cams = await self._cameras(req.checkpoint, [req])
            (png,) = await self.renderer.render.remote(name, cams)
            return Response(content=png, media_type="image/png", headers={"x-raylens-checkpoint": name})
        except Exception as exc:  # noqa: BLE001
            return json_error(exc, logger=log)

    @api.post("/render/batch")
    async def render_batch(self, request: Request):
        try:
            self._key(request)
            req = await self._parse(request, BatchRequest)
            name, cams = await self._cameras(req.checkpoint, req.cameras)
            pngs = await self.renderer.render.remote(name, cams)
            encoded = await asyncio.to_thread(lambda: [base64.b64encode(p).decode("ascii") for p in pngs])
            return JSONResponse({"checkpoint": name, "images": encoded})
        except Exception as exc:  # noqa: BLE001
            return json_error(exc, logger=log)


def build_app(args: dict[str, Any] | None = None):
    """App builder for ``serve run``: ``checkpoints`` ({name: dir}, or ``RAYLENS_RENDER_CHECKPOINTS``),
    ``limits`` (ServeLimits fields), ``default`` (the checkpoint a request without one gets),
    ``threads`` (torch threads per renderer replica)."""
    args = dict(args or {})
    key_file = args.get("api_key_file")
    auth = resolve_auth(
        api_key=args.get("api_key"),
        api_key_file=os.path.expanduser(key_file) if key_file else None,
        open=str(args.get("open", "")).strip().lower() in ("true", "1", "yes", "on"),
    )
    checkpoints = _parse_checkpoints(args.get("checkpoints") or os.environ.get(CHECKPOINTS_ENV))
    if not checkpoints:
        raise ValueError(f"no checkpoints to serve: pass checkpoints={{name: dir}} or set {CHECKPOINTS_ENV}=name=dir")
    renderer = NerfRenderer.bind(checkpoints, int(args.get("threads", 1)))
    return RenderIngress.bind(renderer, args.get("limits"), args.get("default"), auth)
