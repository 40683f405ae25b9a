"""Read a multi-view capture into frames, without Ray: one call for every format.

:func:`detect_format` tells a nerfstudio capture (``transforms.json``), a Blender one
(``transforms_{train,val,test}.json``) and a COLMAP model (``cameras.txt|bin`` here or under
``sparse/0``) apart; :func:`plan_capture` parses it (:mod:`.capture` explains plan and load);
:func:`read_frames` loads every frame and returns them with the ingest report; :func:`iter_frames`
(re-exported) streams them. The Ray Data reader is :mod:`.ray_reader`.

Public API: :data:`FORMATS`, :func:`detect_format`, :func:`plan_capture`, :class:`CaptureFrames`,
:func:`read_frames`, :func:`iter_frames`.

>>> import tempfile
>>> from raylens_domains.multiview.scene import generate_scene
>>> g = generate_scene(tempfile.mkdtemp(), n_train=3, n_val=1, n_test=1, size=16)
>>> got = read_frames(g.root, split="train")
>>> len(got.frames), got.report.summary().startswith("ingest of"), got.info.format
(3, True, 'nerfstudio')
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from raylens.data.report import IngestReport
from raylens_domains.multiview.capture import CaptureInfo, CapturePlan, ReadOptions, iter_frames
from raylens_domains.multiview.colmap import find_model, plan_colmap
from raylens_domains.multiview.frames import Frame
from raylens_domains.multiview.nerfstudio import plan_blender, plan_nerfstudio

__all__ = ["FORMATS", "detect_format", "plan_capture", "CaptureFrames", "read_frames", "iter_frames"]

FORMATS = ("nerfstudio", "blender", "colmap")


def detect_format(path: str | Path) -> str:
    """``nerfstudio``, ``blender`` or ``colmap`` for the capture at ``path``.

    Raises:
        FileNotFoundError: ``path`` does not exist or holds none of them.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist; pass a capture folder (or its transforms.json).")
    if p.is_file():
        if p.suffix.lower() == ".json":
            return "nerfstudio"
        raise FileNotFoundError(f"{p} is a file but not a transforms .json; pass the capture folder.")
    if (p / "transforms.json").is_file():
        return "nerfstudio"
    if any((p / f"transforms_{s}.json").is_file() for s in ("train", "val", "test")):
        return "blender"
    try:
        find_model(p)
        return "colmap"
    except FileNotFoundError:
        pass
    raise FileNotFoundError(
        f"{p}: not a capture: no transforms.json (nerfstudio), transforms_train.json (Blender) or COLMAP "
        "sparse model (cameras.txt/.bin, sparse/0). Generate one with raylens_domains.multiview.scene.generate_scene."
    )


def _options(options: ReadOptions | None, overrides: dict) -> ReadOptions:
    if options is not None and overrides:
        raise TypeError("pass either options=ReadOptions(...) or keyword options, not both")
    if options is not None:
        return options
    unknown = set(overrides) - {f.name for f in fields(ReadOptions)}
    if unknown:
        raise TypeError(f"unknown read option(s) {sorted(unknown)}; see ReadOptions.")
    return ReadOptions(**overrides)


def plan_capture(
    path: str | Path, options: ReadOptions | None = None, *, format: str | None = None, **overrides
) -> CapturePlan:
    """Parse a capture of any format (detected unless ``format`` is given) into a plan.

    Keyword ``overrides`` are :class:`ReadOptions` fields (``downscale=2, normalize="auto"``).
    """
    opts = _options(options, overrides)
    fmt = format or detect_format(path)
    if fmt == "nerfstudio":
        return plan_nerfstudio(path, opts)
    if fmt == "blender":
        return plan_blender(path, opts)
    if fmt == "colmap":
        return plan_colmap(path, opts)
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}.")


@dataclass
class CaptureFrames:
    """Frames read in memory, how the read went, and the capture's info."""

    frames: list[Frame]
    """The frames loaded, in ``frame_id`` order."""
    report: IngestReport
    """Frames read and skipped (path + reason)."""
    info: CaptureInfo
    """Format, scene transform, box, background (save it with what you make from the frames)."""


def read_frames(
    path: str | Path, options: ReadOptions | None = None, *, format: str | None = None, **overrides
) -> CaptureFrames:
    """Read every frame of a capture in memory (small captures, tests; use :mod:`.ray_reader` at scale).

    Raises:
        FileNotFoundError, ValueError: as :func:`plan_capture`; ValueError also when every frame was
            skipped at load.
    """
    plan = plan_capture(path, options, format=format, **overrides)
    report = plan.new_report()
    frames = list(iter_frames(plan, report))
    if not frames:
        raise ValueError(f"{plan.info.source}: every frame was skipped ({report.summary()}).")
    return CaptureFrames(frames, report, plan.info)
