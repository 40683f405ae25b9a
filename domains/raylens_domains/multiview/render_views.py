"""Novel views from a trained NeRF checkpoint: any pose, look-at cameras, turntables, test grids.

Poses a user gives are in the capture's *original* world frame (as in its ``transforms.json``);
the checkpoint's ``scene`` record (the reader's scene transform) maps them into the normalised
frame the model was trained in. Turntables are made directly in the normalised frame, around the
point the training cameras looked at, at their typical distance and elevation (``views`` record).

>>> import numpy as np
>>> parse_pose("1 0 0 0  0 1 0 0  0 0 1 4  0 0 0 1")[:3, 3].tolist()
[0.0, 0.0, 4.0]
>>> turntable_poses(4, radius=3.0, elevation_deg=30.0).shape
(4, 4, 4)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raylens_domains.multiview.cameras import Intrinsics, SceneTransform, look_at

__all__ = [
    "LoadedNerf",
    "RenderedView",
    "load_nerf",
    "view_defaults",
    "parse_pose",
    "turntable_poses",
    "render_view",
    "render_turntable",
    "save_png",
    "view_grid",
]


@dataclass
class RenderedView:
    """One rendered camera."""

    rgb: np.ndarray
    """(H, W, 3) uint8."""
    depth: np.ndarray
    """(H, W) float32, distance along each ray in the normalised frame (0 where nothing was hit)."""
    opacity: np.ndarray
    """(H, W) float32 accumulated opacity."""


@dataclass
class LoadedNerf:
    """A trained NeRF and what it needs to render the capture's frame."""

    model: Any
    """The :class:`~.nerf_base.NerfModel`, in eval mode."""
    transform: SceneTransform
    """Original capture frame -> the model's normalised frame."""
    views: dict[str, Any] = field(default_factory=dict)
    """Typical training camera (``target``, ``radius``, ``elevation_deg``, ``up``, ``camera_angle_x``,
    ``width``, ``height``), for turntables and default image sizes."""
    checkpoint: Path | None = None

    def to_model_frame(self, c2w) -> np.ndarray:
        """A pose in the capture's original frame -> the model's frame."""
        return self.transform.apply_c2w(np.asarray(c2w, dtype=np.float64))

    def intrinsics(
        self, width: int | None = None, height: int | None = None, camera_angle_x: float | None = None
    ) -> Intrinsics:
        """A pinhole camera of the given size (default: the training views' size and field of view)."""
        w = int(width or self.views.get("width", 200))
        h = int(height or self.views.get("height", w))
        fov = float(camera_angle_x or self.views.get("camera_angle_x", 0.6911112070083618))
        return Intrinsics.from_fov(fov, w, h)


def view_defaults(c2ws: np.ndarray, intrinsics: Intrinsics | None = None) -> dict[str, Any]:
    """The typical training camera of poses ``(N, 4, 4)`` (normalised frame): the point the cameras
    look at, their median distance to it and elevation, the mean up vector."""
    from raylens_domains.multiview.capture import _focus_point

    c2ws = np.asarray(c2ws, dtype=np.float64)
    target = _focus_point(c2ws) if len(c2ws) > 1 else c2ws[0, :3, 3] - 3 * c2ws[0, :3, 2]
    up = c2ws[:, :3, 1].mean(0)
    up = up / max(np.linalg.norm(up), 1e-9)
    offsets = c2ws[:, :3, 3] - target
    radius = float(np.median(np.linalg.norm(offsets, axis=1)))
    elevation = float(
        np.degrees(
            np.median(np.arcsin(np.clip(offsets @ up / np.maximum(np.linalg.norm(offsets, axis=1), 1e-9), -1, 1)))
        )
    )
    out: dict[str, Any] = {"target": target.tolist(), "up": up.tolist(), "radius": radius, "elevation_deg": elevation}
    if intrinsics is not None:
        out.update(camera_angle_x=intrinsics.camera_angle_x, width=intrinsics.width, height=intrinsics.height)
    return out


def load_nerf(checkpoint: str | Path, device: str = "cpu") -> LoadedNerf:
    """Load a NeRF checkpoint (``raylens train nerf`` output) with its scene record.

    Raises:
        CheckpointError: not a checkpoint. ValueError: a checkpoint of another kind of model.
    """
    from raylens.models import load_model, read_checkpoint

    ck = read_checkpoint(checkpoint)
    if ck.kind != "nerf":
        raise ValueError(f"{checkpoint} holds a {ck.kind!r} model, not a NeRF; pass a `raylens train nerf` checkpoint")
    model = load_model(checkpoint, device=device)
    scene = ck.config.get("scene") or {}
    transform = (
        SceneTransform.from_dict(scene["scene_transform"])
        if scene.get("scene_transform")
        else SceneTransform.identity()
    )
    return LoadedNerf(model, transform, dict(scene.get("views") or {}), Path(checkpoint))


def parse_pose(text: str) -> np.ndarray:
    """A camera-to-world pose from 16 (4x4, row-major) or 12 (3x4) numbers, a JSON list, or a JSON
    file holding one (or a nerfstudio frame with ``transform_matrix``)."""
    s = str(text).strip()
    if s and not s.startswith("[") and Path(s).is_file():
        data = json.loads(Path(s).read_text())
        if isinstance(data, dict):
            data = data.get("transform_matrix", data.get("c2w"))
        values = np.asarray(data, dtype=np.float64).reshape(-1)
    elif s.startswith("["):
        values = np.asarray(json.loads(s), dtype=np.float64).reshape(-1)
    else:
        try:
            values = np.asarray([float(v) for v in s.replace(",", " ").split()], dtype=np.float64)
        except ValueError:
            values = np.zeros(0)
    if values.size not in (12, 16) or not np.isfinite(values).all():
        raise ValueError(
            f"a pose must be 16 numbers (4x4 camera-to-world, row-major) or 12 (3x4), got {text!r}; "
            "or give --look-at EYE TARGET"
        )
    m = np.eye(4)
    m[:3] = values.reshape(-1, 4)[:3]
    from raylens_domains.multiview.cameras import pose_problem

    problem = pose_problem(m)
    if problem:
        raise ValueError(f"pose {text!r}: {problem}")
    return m


def turntable_poses(
    n: int,
    *,
    radius: float,
    elevation_deg: float,
    target=(0.0, 0.0, 0.0),
    up=(0.0, 0.0, 1.0),
) -> np.ndarray:
    """``n`` cameras evenly spaced on a circle about ``up`` through ``target``, looking at it: (n, 4, 4)."""
    if n < 1:
        raise ValueError(f"a turntable needs at least 1 frame, got {n}")
    u = np.asarray(up, dtype=np.float64)
    u = u / np.linalg.norm(u)
    a = np.array([1.0, 0, 0]) if abs(u[0]) < 0.9 else np.array([0, 1.0, 0])
    e1 = np.cross(u, a)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(u, e1)
    el = math.radians(elevation_deg)
    t = np.asarray(target, dtype=np.float64)
    poses = []
    for k in range(n):
        az = 2 * math.pi * k / n
        eye = t + radius * (math.cos(el) * (math.cos(az) * e1 + math.sin(az) * e2) + math.sin(el) * u)
        poses.append(look_at(eye, t, up=u))
    return np.stack(poses)


@torch.no_grad()
def render_view(model, c2w, intrinsics: Intrinsics, chunk: int = 16384) -> RenderedView:
    """Render the camera ``c2w`` (model frame, OpenGL convention) with ``intrinsics``."""
    from raylens_domains.multiview.rays import camera_rays

    o, d = camera_rays(np.asarray(c2w, dtype=np.float64), intrinsics)
    h, w = intrinsics.height, intrinsics.width
    out = model.render_chunked(
        torch.from_numpy(o.reshape(-1, 3)).to(model.device), torch.from_numpy(d.reshape(-1, 3)).to(model.device), chunk
    )
    rgb = (out.rgb.clamp(0, 1).reshape(h, w, 3).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    return RenderedView(rgb, out.depth.reshape(h, w).cpu().numpy(), out.opacity.reshape(h, w).cpu().numpy())


def render_turntable(
    nerf: LoadedNerf,
    n_frames: int = 60,
    width: int | None = None,
    height: int | None = None,
    radius: float | None = None,
    elevation_deg: float | None = None,
    camera_angle_x: float | None = None,
) -> list[np.ndarray]:
    """Frames (uint8) of a full turn around the scene, at the training cameras' distance and
    elevation unless given."""
    v = nerf.views
    poses = turntable_poses(
        n_frames,
        radius=float(radius or v.get("radius", 3.0)),
        elevation_deg=float(elevation_deg if elevation_deg is not None else v.get("elevation_deg", 30.0)),
        target=v.get("target", (0.0, 0.0, 0.0)),
        up=v.get("up", (0.0, 0.0, 1.0)),
    )
    k = nerf.intrinsics(width, height, camera_angle_x)
    return [render_view(nerf.model, p, k).rgb for p in poses]


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write an (H, W, 3) uint8 (or float in [0, 1]) image as PNG."""
    from PIL import Image

    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)
    return path


def view_grid(
    pairs: list[tuple[np.ndarray, np.ndarray]], path: str | Path, labels: list[str] | None = None, scale: int = 2
) -> Path:
    """A PNG with one row per view: rendered | ground truth (| optional label under each row).

    ``pairs`` are ``(rendered, ground_truth)`` images (uint8, or float in [0, 1]); ``scale``
    enlarges small renders (nearest neighbour, so pixels stay honest).
    """
    from PIL import Image, ImageDraw

    if not pairs:
        raise ValueError("no views to put in the grid")
    rows = []
    for i, (pred, gt) in enumerate(pairs):
        a, b = (np.asarray(x) for x in (pred, gt))
        a, b = ((np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8) if x.dtype != np.uint8 else x for x in (a, b))
        if a.shape != b.shape:
            raise ValueError(f"view {i}: render {a.shape} and ground truth {b.shape} differ in size")
        gap = np.full((a.shape[0], 4, 3), 255, np.uint8)
        rows.append(np.concatenate([a, gap, b], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    img = Image.fromarray(np.concatenate(rows, axis=0))
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    head = Image.new("RGB", (img.width, 16), "white")
    draw = ImageDraw.Draw(head)
    draw.text((4, 2), "rendered", fill="black")
    draw.text((img.width // 2 + 4, 2), "ground truth", fill="black")
    out = Image.new("RGB", (img.width, img.height + 16), "white")
    out.paste(head, (0, 0))
    out.paste(img, (0, 16))
    if labels:
        draw = ImageDraw.Draw(out)
        row_h = (img.height) // len(pairs)
        for i, text in enumerate(labels[: len(pairs)]):
            draw.text((4, 16 + i * row_h + 2), text, fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save(path)
    return path
