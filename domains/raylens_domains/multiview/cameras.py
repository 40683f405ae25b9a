"""Pinhole cameras: intrinsics, look-at poses, pose checks and the scene transform.

Conventions (the whole pack uses them; DESIGN.md "multiview"):

* ``c2w`` is a 4x4 float32 camera-to-world matrix in the OpenGL / nerfstudio convention: the
  camera looks down its local ``-z``, ``+y`` is up in the image, ``+x`` is right.
* Pixel ``(u, v)`` has its centre at ``(u + 0.5, v + 0.5)``; ``cx, cy`` are in the same pixel units.
* A :class:`SceneTransform` is a similarity (rotation, uniform scale, translation) that maps the
  capture's *original* world frame to the frame the frames are in (after ``applied_transform`` and
  normalisation); it is saved with the data and with checkpoints so renders map back.

Public API: :class:`Intrinsics`, :func:`look_at`, :func:`orbit_poses`, :func:`hemisphere_poses`,
:func:`pose_problem`, :func:`as_c2w`, :class:`SceneTransform`.

>>> K = Intrinsics.from_fov(0.6911, 100, 100)
>>> round(K.fx, 2), K.cx
(138.89, 50.0)
>>> c2w = look_at((0, -4, 0), (0, 0, 0))
>>> c2w[:3, 2].round(3).tolist()  # the camera's +z points back at the eye, away from the target
[0.0, -1.0, 0.0]
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "Intrinsics",
    "look_at",
    "orbit_poses",
    "hemisphere_poses",
    "pose_problem",
    "as_c2w",
    "SceneTransform",
]


@dataclass(frozen=True)
class Intrinsics:
    """A pinhole camera's intrinsics in pixels (no distortion: undistort first)."""

    fx: float
    """Focal length along x, pixels."""
    fy: float
    """Focal length along y, pixels."""
    cx: float
    """Principal point x, pixels (the image centre is ``width / 2``)."""
    cy: float
    """Principal point y, pixels."""
    width: int
    """Image width, pixels."""
    height: int
    """Image height, pixels."""

    def __post_init__(self) -> None:
        for name in ("fx", "fy"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"Intrinsics.{name} must be a positive focal length in pixels, got {v!r}.")
        for name in ("cx", "cy"):
            if not math.isfinite(float(getattr(self, name))):
                raise ValueError(f"Intrinsics.{name} must be finite, got {getattr(self, name)!r}.")
        for name in ("width", "height"):
            v = getattr(self, name)
            if int(v) != v or int(v) < 1:
                raise ValueError(f"Intrinsics.{name} must be a positive whole number of pixels, got {v!r}.")
        for name in ("fx", "fy", "cx", "cy"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))

    @classmethod
    def from_fov(cls, camera_angle_x: float, width: int, height: int) -> Intrinsics:
        """Square pixels with the horizontal field of view ``camera_angle_x`` (radians), centred."""
        if not (0 < camera_angle_x < math.pi):
            raise ValueError(f"camera_angle_x must be in (0, pi) radians, got {camera_angle_x!r}.")
        f = 0.5 * width / math.tan(0.5 * camera_angle_x)
        return cls(f, f, width / 2, height / 2, width, height)

    @property
    def K(self) -> np.ndarray:  # noqa: N802 - the usual name of the matrix
        """The 3x3 intrinsic matrix (float64)."""
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], dtype=np.float64)

    @property
    def camera_angle_x(self) -> float:
        """Horizontal field of view in radians."""
        return 2 * math.atan(0.5 * self.width / self.fx)

    def scaled(self, factor: float) -> Intrinsics:
        """The intrinsics of the image resized by ``1 / factor`` (``factor=2`` halves each side).

        The new size is ``round(size / factor)`` and the focal lengths and principal point scale by
        the actual size ratio, so pixel centres stay consistent.
        """
        if not factor > 0:
            raise ValueError(f"downscale factor must be > 0, got {factor!r}.")
        w, h = max(1, round(self.width / factor)), max(1, round(self.height / factor))
        sx, sy = w / self.width, h / self.height
        return Intrinsics(self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, w, h)

    def to_dict(self) -> dict:
        return {"fx": self.fx, "fy": self.fy, "cx": self.cx, "cy": self.cy, "width": self.width, "height": self.height}


def look_at(eye: Sequence[float], target: Sequence[float] = (0, 0, 0), up: Sequence[float] = (0, 0, 1)) -> np.ndarray:
    """The OpenGL-convention ``c2w`` (4x4 float32) of a camera at ``eye`` looking at ``target``.

    Raises:
        ValueError: ``eye == target`` or the view direction is parallel to ``up``.
    """
    eye, target, up = (np.asarray(v, dtype=np.float64).reshape(3) for v in (eye, target, up))
    back = eye - target
    if np.linalg.norm(back) < 1e-9:
        raise ValueError("look_at: eye and target are the same point; move the camera away from the target.")
    z = back / np.linalg.norm(back)
    x = np.cross(up, z)
    if np.linalg.norm(x) < 1e-9:
        raise ValueError("look_at: the view direction is parallel to `up`; pass another `up` vector.")
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w.astype(np.float32)


def orbit_poses(
    n: int,
    *,
    radius: float = 4.0,
    elevation_deg: float = 30.0,
    target: Sequence[float] = (0, 0, 0),
    start_deg: float = 0.0,
) -> np.ndarray:
    """``n`` poses evenly spaced on a horizontal circle (a turntable), shape ``(n, 4, 4)`` float32."""
    if n < 1:
        raise ValueError(f"orbit_poses: n must be >= 1, got {n}.")
    el = math.radians(elevation_deg)
    out = []
    for k in range(n):
        az = math.radians(start_deg) + 2 * math.pi * k / n
        eye = np.asarray(target, dtype=np.float64) + radius * np.array(
            [math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)]
        )
        out.append(look_at(eye, target))
    return np.stack(out)


def hemisphere_poses(
    n: int,
    rng: np.random.Generator,
    *,
    radius: float = 4.0,
    min_elevation_deg: float = 10.0,
    max_elevation_deg: float = 70.0,
    target: Sequence[float] = (0, 0, 0),
) -> np.ndarray:
    """``n`` poses drawn uniformly (by area) on a band of the upper hemisphere, looking at ``target``."""
    lo, hi = math.sin(math.radians(min_elevation_deg)), math.sin(math.radians(max_elevation_deg))
    z = rng.uniform(lo, hi, size=n)
    az = rng.uniform(0, 2 * math.pi, size=n)
    r_xy = np.sqrt(1 - z**2)
    eyes = np.stack([r_xy * np.cos(az), r_xy * np.sin(az), z], axis=1) * radius + np.asarray(target)
    return np.stack([look_at(e, target) for e in eyes]) if n else np.zeros((0, 4, 4), np.float32)


def as_c2w(matrix) -> np.ndarray:
    """A 3x4 or 4x4 pose as a 4x4 float64 matrix (the bottom row completed for 3x4)."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape == (3, 4):
        m = np.vstack([m, [0, 0, 0, 1]])
    if m.shape != (4, 4):
        raise ValueError(f"a pose must be a 3x4 or 4x4 matrix, got shape {m.shape}.")
    return m


def pose_problem(matrix) -> str | None:
    """Why ``matrix`` is not a usable camera-to-world pose, or ``None`` when it is.

    A pose must be 3x4 or 4x4, finite, with bottom row ``0 0 0 1`` and an invertible rotation part.
    """
    try:
        m = as_c2w(matrix)
    except (ValueError, TypeError) as e:
        return f"bad pose ({e})"
    if not np.isfinite(m).all():
        return "bad pose (NaN or infinite values)"
    if not np.allclose(m[3], [0, 0, 0, 1], atol=1e-6):
        return f"bad pose (bottom row {m[3].tolist()} is not 0 0 0 1)"
    det = float(np.linalg.det(m[:3, :3]))
    if abs(det) < 1e-6:
        return f"bad pose (non-invertible rotation, det={det:.3g})"
    return None


@dataclass(frozen=True)
class SceneTransform:
    """A similarity from the capture's original world frame to ours: ``x_ours = matrix @ [x, 1]``.

    ``matrix[:3, :3]`` is ``scale * R`` (R a rotation), so :attr:`scale` is recovered from it. Compose
    with ``@`` (``b @ a`` applies ``a`` first).

    >>> t = SceneTransform.from_parts(scale=0.5, translation=(1, 0, 0))
    >>> t.apply_points([[2, 0, 0]]).tolist(), t.inverse().apply_points([[2, 0, 0]]).tolist()
    ([[2.0, 0.0, 0.0]], [[2.0, 0.0, 0.0]])
    """

    matrix: np.ndarray
    """4x4 similarity matrix, original world -> our world."""

    def __post_init__(self) -> None:
        m = np.asarray(self.matrix, dtype=np.float64)
        if m.shape == (3, 4):
            m = np.vstack([m, [0, 0, 0, 1]])
        if m.shape != (4, 4) or not np.isfinite(m).all():
            raise ValueError(f"SceneTransform.matrix must be a finite 4x4 (or 3x4) matrix, got shape {m.shape}.")
        s = abs(np.linalg.det(m[:3, :3])) ** (1 / 3)
        if s < 1e-12 or not np.allclose(m[:3, :3].T @ m[:3, :3], s * s * np.eye(3), atol=1e-5 * max(1.0, s * s)):
            raise ValueError(
                "SceneTransform.matrix must be a similarity (rotation times a uniform scale, plus a "
                "translation); normalise the rotation part of the matrix."
            )
        object.__setattr__(self, "matrix", m)

    @classmethod
    def identity(cls) -> SceneTransform:
        return cls(np.eye(4))

    @classmethod
    def from_parts(cls, *, scale: float = 1.0, rotation=None, translation=(0, 0, 0)) -> SceneTransform:
        """``x_ours = scale * rotation @ x + translation``."""
        m = np.eye(4)
        m[:3, :3] = scale * (np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64))
        m[:3, 3] = translation
        return cls(m)

    @property
    def scale(self) -> float:
        """The uniform scale (our units per original unit)."""
        return float(abs(np.linalg.det(self.matrix[:3, :3])) ** (1 / 3))

    @property
    def is_identity(self) -> bool:
        return bool(np.allclose(self.matrix, np.eye(4), atol=1e-9))

    def __matmul__(self, other: SceneTransform) -> SceneTransform:
        return SceneTransform(self.matrix @ other.matrix)

    def inverse(self) -> SceneTransform:
        return SceneTransform(np.linalg.inv(self.matrix))

    def apply_points(self, points) -> np.ndarray:
        """Map points ``(..., 3)`` from the original frame to ours."""
        p = np.asarray(points, dtype=np.float64)
        return p @ self.matrix[:3, :3].T + self.matrix[:3, 3]

    def apply_c2w(self, c2w) -> np.ndarray:
        """Map camera-to-world poses ``(..., 4, 4)`` from the original frame to ours (rotation kept orthonormal)."""
        c = np.asarray(c2w, dtype=np.float64)
        out = self.matrix @ c
        out[..., :3, :3] /= self.scale
        return out.astype(np.float32)

    def to_dict(self) -> dict:
        return {"matrix": self.matrix.tolist(), "scale": self.scale}

    @classmethod
    def from_dict(cls, d: dict) -> SceneTransform:
        if "matrix" not in d:
            raise ValueError("a saved SceneTransform needs a 'matrix' key (4x4 list); re-save it with to_dict().")
        return cls(np.asarray(d["matrix"], dtype=np.float64))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> SceneTransform:
        return cls.from_dict(json.loads(Path(path).read_text()))
