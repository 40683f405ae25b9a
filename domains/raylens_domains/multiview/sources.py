"""The multiview pack's data source: ``open_source("multiview:CAPTURE")`` (and captures it recognises).

Registered into :data:`raylens.data.SOURCES` when the pack's plug-in loads. It takes a folder
holding ``transforms.json`` (nerfstudio), ``transforms_{train,val,test}.json`` (Blender) or a COLMAP
sparse model (``cameras.txt|bin`` here or in ``sparse/0``), or a ``transforms*.json`` file; other
specs need the ``multiview:`` prefix. It opens :func:`~.ray_reader.read_capture` (ray is imported
only then) and returns its :class:`~.ray_reader.CaptureReadResult` (one row per frame).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raylens.data.result import ReadResult
from raylens.data.sources import register_source

__all__ = ["is_capture", "open_capture"]


def is_capture(spec: str) -> bool:
    """Cheap check (file names only) that ``spec`` is a multi-view capture."""
    p = Path(spec).expanduser()
    if p.is_file():
        return p.suffix.lower() == ".json" and p.name.startswith("transforms")
    if not p.is_dir():
        return False
    names = ["transforms.json", *(f"transforms_{s}.json" for s in ("train", "val", "test"))]
    if any((p / n).is_file() for n in names):
        return True
    return any((d / f"cameras.{e}").is_file() for d in (p, p / "sparse" / "0", p / "sparse") for e in ("txt", "bin"))


@register_source(
    "multiview",
    accepts=is_capture,
    describe="a multi-view capture (transforms.json, Blender transforms_*.json or a COLMAP model; multiview pack)",
    priority=15,
)
def open_capture(
    spec: str, preprocess: Any = None, *, split: str | None = None, seed: int = 0, **options: Any
) -> ReadResult:
    """Read a capture with :func:`~.ray_reader.read_capture`: one row per frame.

    Args:
        spec: the capture folder or its ``transforms*.json``.
        preprocess: must be None (frames are read as they are; use ``downscale=`` to shrink them).
        split: ``train``, ``val`` or ``test`` to read only that split.
        seed: unused (the reader draws nothing).
        **options: :class:`~.capture.ReadOptions` fields (``downscale``, ``normalize``, ``background``,
            ``holdout_every``, ``aabb``), ``format`` or ``frames_per_task``.
    """
    from raylens_domains.multiview.ray_reader import read_capture

    if preprocess is not None:
        raise TypeError(
            "multi-view captures take no preprocess (frames keep their pixels and cameras); "
            "pass downscale=N to shrink the images"
        )
    return read_capture(Path(spec).expanduser(), split=split, **options)
