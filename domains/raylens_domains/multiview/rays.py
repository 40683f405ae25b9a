"""Frames to rays: one ray per pixel, through the pixel's centre.

A rays batch (``dict`` of arrays, one entry per ray) has:

==============  ===============  ==========================================================
key             type             meaning
==============  ===============  ==========================================================
``origins``     (N, 3) float32   the camera centre in world coordinates
``directions``  (N, 3) float32   **unit-length** world direction (so ``t`` is a world distance)
``rgb``         (N, 3) float32   the pixel's colour in [0, 1]
``pixel_id``    (N,) int32       ``v * width + u`` within its frame
``frame_id``    (N,) int64       the frame's ``frame_id``
==============  ===============  ==========================================================

Pixel ``(u, v)`` (column, row) looks through ``(u + 0.5, v + 0.5)``; in the camera frame its
direction is ``((u + 0.5 - cx) / fx, -(v + 0.5 - cy) / fy, -1)`` (OpenGL: looks down -z, +y up).

Public API: :data:`RAY_COLUMNS`, :func:`camera_rays`, :func:`frame_rays`, :func:`frames_to_rays`,
:func:`batch_frames_to_rays`.

>>> import numpy as np
>>> from raylens_domains.multiview.cameras import Intrinsics, look_at
>>> o, d = camera_rays(look_at((0, -4, 0)), Intrinsics(10, 10, 2, 2, 4, 4))
>>> o.shape, d.shape, bool(np.allclose(np.linalg.norm(d, axis=-1), 1))
((4, 4, 3), (4, 4, 3), True)
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from raylens_domains.multiview.cameras import Intrinsics
from raylens_domains.multiview.frames import Frame, batch_to_frames, image_float

__all__ = ["RAY_COLUMNS", "camera_rays", "frame_rays", "frames_to_rays", "batch_frames_to_rays"]

RAY_COLUMNS = ("origins", "directions", "rgb", "pixel_id", "frame_id")
"""The columns of a rays batch."""


def camera_rays(c2w, intrinsics: Intrinsics) -> tuple[np.ndarray, np.ndarray]:
    """World-space rays through every pixel centre: ``origins, directions``, each ``(H, W, 3)`` float32.

    Directions are unit length.
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    k = intrinsics
    u, v = np.meshgrid(np.arange(k.width) + 0.5, np.arange(k.height) + 0.5)
    d_cam = np.stack([(u - k.cx) / k.fx, -(v - k.cy) / k.fy, -np.ones_like(u)], axis=-1)
    d = d_cam @ c2w[:3, :3].T
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    o = np.broadcast_to(c2w[:3, 3], d.shape)
    return o.astype(np.float32), d.astype(np.float32)


def frame_rays(frame: Frame) -> dict[str, np.ndarray]:
    """The rays of one frame (see the module docstring), in row-major pixel order."""
    o, d = camera_rays(frame.c2w, frame.intrinsics)
    n = o.shape[0] * o.shape[1]
    return {
        "origins": o.reshape(n, 3),
        "directions": d.reshape(n, 3),
        "rgb": image_float(frame.image).reshape(n, 3),
        "pixel_id": np.arange(n, dtype=np.int32),
        "frame_id": np.full(n, frame.frame_id, dtype=np.int64),
    }


def frames_to_rays(frames: Iterable[Frame]) -> dict[str, np.ndarray]:
    """All rays of ``frames``, concatenated in frame order (sizes may differ between frames)."""
    parts = [frame_rays(f) for f in frames]
    if not parts:
        return {
            "origins": np.zeros((0, 3), np.float32),
            "directions": np.zeros((0, 3), np.float32),
            "rgb": np.zeros((0, 3), np.float32),
            "pixel_id": np.zeros(0, np.int32),
            "frame_id": np.zeros(0, np.int64),
        }
    return {k: np.concatenate([p[k] for p in parts]) for k in RAY_COLUMNS}


def batch_frames_to_rays(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A batch of frame rows -> a batch of rays (the ``map_batches`` body of :mod:`.ray_rays`)."""
    return frames_to_rays(batch_to_frames(batch))
