"""Frames to a video file: MP4 (H.264) through imageio-ffmpeg, whose wheel ships ffmpeg; a GIF
(Pillow) when the MP4 writer is not available or fails, or when the path asks for ``.gif``.

>>> import tempfile, numpy as np
>>> frames = [np.full((16, 16, 3), i * 20, np.uint8) for i in range(4)]
>>> write_video(frames, tempfile.mkdtemp() + "/spin.gif", fps=8).suffix
'.gif'
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["write_video", "write_gif"]

log = logging.getLogger("raylens.multiview")


def _as_uint8(frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    if not len(frames):
        raise ValueError("no frames to write; render at least one view")
    out = []
    for i, f in enumerate(frames):
        a = np.asarray(f)
        if a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"frame {i} must be (H, W, 3) RGB, got shape {a.shape}")
        if a.dtype != np.uint8:
            a = (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)
        out.append(a)
    if len({a.shape for a in out}) > 1:
        raise ValueError(f"frames differ in size {sorted({a.shape for a in out})}; render them all at one size")
    return out


def write_gif(frames: Sequence[np.ndarray], path: str | Path, fps: float = 24) -> Path:
    """An animated, looping GIF of ``frames`` (uint8, or float in [0, 1])."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(a) for a in _as_uint8(frames)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return path


def write_video(frames: Sequence[np.ndarray], path: str | Path, fps: float = 24) -> Path:
    """Write ``frames`` as an MP4 at ``path`` (or a GIF when ``path`` ends in ``.gif``).

    Returns the file written: ``path``, or ``path`` with a ``.gif`` suffix when the MP4 writer
    (imageio with imageio-ffmpeg) is missing or fails; the fallback is logged with its reason.
    """
    path = Path(path)
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    data = _as_uint8(frames)
    if path.suffix.lower() == ".gif":
        return write_gif(data, path, fps)
    try:
        import imageio.v2 as imageio

        path.parent.mkdir(parents=True, exist_ok=True)
        h, w = data[0].shape[:2]
        # H.264 in yuv420p wants even sides; pad by one pixel rather than let ffmpeg rescale
        pad = ((0, h % 2), (0, w % 2), (0, 0))
        with imageio.get_writer(str(path), fps=fps, codec="libx264", quality=8, macro_block_size=1) as writer:
            for a in data:
                writer.append_data(np.pad(a, pad, mode="edge") if h % 2 or w % 2 else a)
        return path
    except Exception as e:  # noqa: BLE001 - any writer failure falls back to the GIF
        log.warning(
            "MP4 writer unavailable (%s: %s); writing a GIF instead (pip install imageio imageio-ffmpeg)",
            type(e).__name__,
            e,
        )
        return write_gif(data, path.with_suffix(".gif"), fps)
