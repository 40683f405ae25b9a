"""The frame: one posed image, and its row in a Ray dataset (DESIGN.md "multiview").

A row (``dict``; a batch is the same keys with a leading axis) has:

=============  ==========================  ==================================================
key            type                        meaning
=============  ==========================  ==================================================
``image``      (H, W, 3) uint8 or float32  RGB; float images are in [0, 1]
``c2w``        (4, 4) float32              camera-to-world, OpenGL convention (looks down -z)
``fx fy``      float32                     focal lengths, pixels
``cx cy``      float32                     principal point, pixels (centre = width / 2)
``width``      int32                       image width, pixels
``height``     int32                       image height, pixels
``split``      str                         ``train``, ``val`` or ``test``
``path``       str                         the image file (``""`` for generated frames)
``frame_id``   int64                       index of the frame within its capture
=============  ==========================  ==================================================

Public API: :data:`FRAME_COLUMNS`, :data:`SPLITS`, :class:`Frame`, :func:`frames_to_batch`,
:func:`batch_to_frames`, :func:`image_float`.

>>> import numpy as np
>>> from raylens_domains.multiview.cameras import Intrinsics, look_at
>>> f = Frame(np.zeros((4, 6, 3), np.uint8), look_at((0, -3, 1)), Intrinsics(5, 5, 3, 2, 6, 4), "train")
>>> row = f.to_row(); sorted(row) == sorted(FRAME_COLUMNS), int(row["width"]), int(row["height"])
(True, 6, 4)
>>> Frame.from_row(row).intrinsics == f.intrinsics
True
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from raylens_domains.multiview.cameras import Intrinsics, pose_problem

__all__ = ["FRAME_COLUMNS", "SPLITS", "Frame", "frames_to_batch", "batch_to_frames", "image_float"]

FRAME_COLUMNS = ("image", "c2w", "fx", "fy", "cx", "cy", "width", "height", "split", "path", "frame_id")
"""The columns of a frame row, in order."""
SPLITS = ("train", "val", "test")
"""The splits a frame can belong to."""


def image_float(image: np.ndarray) -> np.ndarray:
    """An image as float32 in [0, 1] (uint8 is divided by 255; floats are returned as float32)."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    return image.astype(np.float32, copy=False)


@dataclass
class Frame:
    """One posed image."""

    image: np.ndarray
    """(H, W, 3) uint8, or float32 in [0, 1]."""
    c2w: np.ndarray
    """(4, 4) camera-to-world, OpenGL convention (camera looks down -z, +y up)."""
    intrinsics: Intrinsics
    """Pinhole intrinsics; ``width`` and ``height`` match ``image``."""
    split: str = "train"
    """``train``, ``val`` or ``test``."""
    path: str = ""
    """Where the image came from (``""`` for generated frames)."""
    frame_id: int = 0
    """Index of the frame within its capture."""

    def __post_init__(self) -> None:
        image = np.asarray(self.image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"Frame.image must be (H, W, 3) RGB, got shape {image.shape}; drop alpha first.")
        if image.dtype != np.uint8 and not np.issubdtype(image.dtype, np.floating):
            raise ValueError(f"Frame.image must be uint8 or float in [0, 1], got dtype {image.dtype}.")
        h, w = image.shape[:2]
        if (w, h) != (self.intrinsics.width, self.intrinsics.height):
            raise ValueError(
                f"Frame.image is {w}x{h} but its intrinsics say {self.intrinsics.width}x{self.intrinsics.height}; "
                "scale the intrinsics with Intrinsics.scaled() when resizing."
            )
        problem = pose_problem(self.c2w)
        if problem:
            raise ValueError(f"Frame.c2w: {problem}")
        if self.split not in SPLITS:
            raise ValueError(f"Frame.split must be one of {SPLITS}, got {self.split!r}.")
        self.image = image
        c2w = np.asarray(self.c2w, dtype=np.float32)
        self.c2w = np.vstack([c2w, [0, 0, 0, 1]]).astype(np.float32) if c2w.shape == (3, 4) else c2w

    def to_row(self) -> dict:
        """The frame as a dataset row (see the module docstring)."""
        k = self.intrinsics
        return {
            "image": self.image,
            "c2w": self.c2w.astype(np.float32),
            "fx": np.float32(k.fx),
            "fy": np.float32(k.fy),
            "cx": np.float32(k.cx),
            "cy": np.float32(k.cy),
            "width": np.int32(k.width),
            "height": np.int32(k.height),
            "split": self.split,
            "path": self.path,
            "frame_id": np.int64(self.frame_id),
        }

    @classmethod
    def from_row(cls, row: dict) -> Frame:
        """A frame from a dataset row."""
        k = Intrinsics(
            float(row["fx"]),
            float(row["fy"]),
            float(row["cx"]),
            float(row["cy"]),
            int(row["width"]),
            int(row["height"]),
        )
        return cls(
            np.asarray(row["image"]),
            np.asarray(row["c2w"]),
            k,
            str(row["split"]),
            str(row.get("path", "")),
            int(row.get("frame_id", 0)),
        )


def frames_to_batch(frames: Iterable[Frame]) -> dict[str, np.ndarray]:
    """Frames of one size as a batch (``dict`` of arrays with a leading frame axis)."""
    rows = [f.to_row() for f in frames]
    if not rows:
        raise ValueError("frames_to_batch: no frames given.")
    shapes = {r["image"].shape for r in rows}
    if len(shapes) > 1:
        raise ValueError(f"frames_to_batch: frames have different image shapes {sorted(shapes)}; batch one size.")
    return {k: np.array([r[k] for r in rows]) for k in FRAME_COLUMNS}


def batch_to_frames(batch: dict[str, np.ndarray]) -> list[Frame]:
    """The frames of a batch (the inverse of :func:`frames_to_batch`)."""
    n = len(batch["c2w"])
    return [Frame.from_row({k: batch[k][i] for k in batch}) for i in range(n)]
