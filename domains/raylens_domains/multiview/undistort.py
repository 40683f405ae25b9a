"""Lens distortion (OpenCV / COLMAP radial-tangential) and image undistortion in plain numpy.

The model is nerfstudio's perspective model, which covers COLMAP's ``SIMPLE_PINHOLE``, ``PINHOLE``,
``SIMPLE_RADIAL``, ``RADIAL`` and ``OPENCV``. For normalised image coordinates ``(x, y)`` (OpenCV
convention: ``x = (u - cx) / fx``, ``y = (v - cy) / fy``, ``v`` down) and ``r2 = x^2 + y^2``::

    radial = 1 + k1 r2 + k2 r2^2 + k3 r2^3 + k4 r2^4
    x_d = x radial + 2 p1 x y + p2 (r2 + 2 x^2)
    y_d = y radial + p1 (r2 + 2 y^2) + 2 p2 x y

:func:`undistort_image` resamples an image to the same pinhole intrinsics without distortion: each
output pixel centre is distorted (closed form) and the input is sampled there bilinearly; samples
falling outside the input take the nearest edge pixel. No OpenCV needed.

Public API: :class:`Distortion`, :data:`SUPPORTED_CAMERA_MODELS`, :func:`undistort_image`.

>>> import numpy as np
>>> d = Distortion(k1=-0.1)
>>> xd, yd = d.distort(np.array([0.3]), np.array([0.2]))
>>> x, y = d.undistort_points(xd, yd)
>>> bool(np.allclose([x[0], y[0]], [0.3, 0.2], atol=1e-9))
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from raylens_domains.multiview.cameras import Intrinsics

__all__ = ["Distortion", "SUPPORTED_CAMERA_MODELS", "undistort_image"]

SUPPORTED_CAMERA_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")
"""Camera models whose distortion :class:`Distortion` represents (fisheye and others are refused)."""


@dataclass(frozen=True)
class Distortion:
    """Radial (k1..k4) and tangential (p1, p2) distortion coefficients; all zero means none."""

    k1: float = 0.0
    """r^2 radial coefficient."""
    k2: float = 0.0
    """r^4 radial coefficient."""
    k3: float = 0.0
    """r^6 radial coefficient."""
    k4: float = 0.0
    """r^8 radial coefficient (nerfstudio's perspective model; not OpenCV's rational k4)."""
    p1: float = 0.0
    """Tangential coefficient."""
    p2: float = 0.0
    """Tangential coefficient."""

    def __post_init__(self) -> None:
        for name in ("k1", "k2", "k3", "k4", "p1", "p2"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or not math.isfinite(v):
                raise ValueError(f"Distortion.{name} must be a finite number, got {v!r}.")
            object.__setattr__(self, name, float(v))

    @property
    def is_zero(self) -> bool:
        return not any((self.k1, self.k2, self.k3, self.k4, self.p1, self.p2))

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("k1", "k2", "k3", "k4", "p1", "p2")}

    def distort(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distort normalised coordinates (closed form)."""
        r2 = x * x + y * y
        radial = 1 + r2 * (self.k1 + r2 * (self.k2 + r2 * (self.k3 + r2 * self.k4)))
        xd = x * radial + 2 * self.p1 * x * y + self.p2 * (r2 + 2 * x * x)
        yd = y * radial + self.p1 * (r2 + 2 * y * y) + 2 * self.p2 * x * y
        return xd, yd

    def undistort_points(
        self, xd: np.ndarray, yd: np.ndarray, *, iterations: int = 50, tol: float = 1e-12
    ) -> tuple[np.ndarray, np.ndarray]:
        """Invert :meth:`distort` with Newton's method (numerical 2x2 Jacobian), per point."""
        xd = np.asarray(xd, dtype=np.float64)
        yd = np.asarray(yd, dtype=np.float64)
        x, y = xd.copy(), yd.copy()
        h = 1e-7
        for _ in range(iterations):
            fx, fy = self.distort(x, y)
            rx, ry = fx - xd, fy - yd
            if max(np.abs(rx).max(initial=0), np.abs(ry).max(initial=0)) < tol:
                break
            ax, ay = self.distort(x + h, y)
            bx, by = self.distort(x, y + h)
            j11, j21 = (ax - fx) / h, (ay - fy) / h
            j12, j22 = (bx - fx) / h, (by - fy) / h
            det = j11 * j22 - j12 * j21
            det = np.where(np.abs(det) < 1e-12, 1e-12, det)
            x = x - (j22 * rx - j12 * ry) / det
            y = y - (-j21 * rx + j11 * ry) / det
        return x, y


def _bilinear(image: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Sample ``image`` (H, W, C) float at array coordinates (0 = first pixel's centre), edges clamped."""
    h, w = image.shape[:2]
    px = np.clip(px, 0, w - 1)
    py = np.clip(py, 0, h - 1)
    x0 = np.minimum(np.floor(px).astype(np.int64), w - 2 if w > 1 else 0)
    y0 = np.minimum(np.floor(py).astype(np.int64), h - 2 if h > 1 else 0)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    ax, ay = (px - x0)[..., None], (py - y0)[..., None]
    top = image[y0, x0] * (1 - ax) + image[y0, x1] * ax
    bottom = image[y1, x0] * (1 - ax) + image[y1, x1] * ax
    return top * (1 - ay) + bottom * ay


def undistort_image(image: np.ndarray, intrinsics: Intrinsics, distortion: Distortion) -> np.ndarray:
    """The image as seen by the same pinhole camera without ``distortion`` (same size and dtype).

    Args:
        image: (H, W, C) uint8 or float, taken by a camera with ``intrinsics`` and ``distortion``.
        intrinsics: the camera's pinhole part (pixel centres at ``u + 0.5``).
        distortion: its distortion; all zero returns ``image`` unchanged.
    """
    if distortion.is_zero:
        return image
    k = intrinsics
    if image.shape[:2] != (k.height, k.width):
        raise ValueError(
            f"undistort_image: the image is {image.shape[1]}x{image.shape[0]} but the camera is {k.width}x{k.height}."
        )
    u, v = np.meshgrid(np.arange(k.width) + 0.5, np.arange(k.height) + 0.5)
    xd, yd = distortion.distort((u - k.cx) / k.fx, (v - k.cy) / k.fy)
    src = image.astype(np.float64)
    squeeze = src.ndim == 2
    if squeeze:
        src = src[..., None]
    out = _bilinear(src, xd * k.fx + k.cx - 0.5, yd * k.fy + k.cy - 0.5)
    if squeeze:
        out = out[..., 0]
    if image.dtype == np.uint8:
        return np.clip(np.round(out), 0, 255).astype(np.uint8)
    return out.astype(image.dtype)
