"""What every multi-view reader shares: options, the per-frame plan, normalisation and frame loading.

A read happens in two steps, so Ray can spread the heavy one:

1. **plan** (cheap, on the driver; one function per format in :mod:`.nerfstudio` and :mod:`.colmap`):
   parse the capture's metadata into :class:`FrameSpec` s (image path, pose, camera, split), skip
   frames whose metadata is bad (NaN or non-invertible pose, missing image, bad intrinsics), and
   compute the scene transform (``applied_transform`` and normalisation). The result is a
   :class:`CapturePlan`. Errors the job cannot go on from (unreadable JSON, unsupported camera model,
   an empty split, no usable frame at all) raise here with the fix.
2. **load** (:func:`load_frame`, per frame): decode the image, composite RGBA on the background,
   check its size against the camera, undistort, downscale; a failure raises :class:`FrameSkip`
   and the frame is reported, never fatal.

Normalisation (:attr:`ReadOptions.normalize`) maps the scene into the cube ``[-1, 1]^3``:

* ``"aabb"``: the scene's box (from the capture or :attr:`ReadOptions.aabb`) is centred and scaled so
  its longest side spans the cube;
* ``"cameras"``: the point nearest every camera's optical axis is centred and the cameras are
  scaled to fit in the cube (nerfstudio's ``auto_scale_poses``);
* ``"auto"``: ``aabb`` when the capture has a box, otherwise ``cameras``; ``"none"``: keep the frame.

The composed transform (original world -> ours) is a :class:`~.cameras.SceneTransform` kept in
:class:`CaptureInfo`, which is saved with the data (and by the trainer with its checkpoint), so
renders map back to the capture's original frame.

Public API: :data:`NORMALIZE_MODES`, :class:`ReadOptions`, :class:`FrameSkip`, :class:`FrameSpec`,
:class:`CaptureInfo`, :class:`CapturePlan`, :func:`normalization`, :func:`finish_plan`,
:func:`load_frame`, :func:`iter_frames`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from raylens.data.report import IngestReport, SkippedRow
from raylens_domains.multiview.cameras import Intrinsics, SceneTransform
from raylens_domains.multiview.frames import SPLITS, Frame
from raylens_domains.multiview.undistort import Distortion, undistort_image

__all__ = [
    "NORMALIZE_MODES",
    "ReadOptions",
    "FrameSkip",
    "FrameSpec",
    "CaptureInfo",
    "CapturePlan",
    "normalization",
    "finish_plan",
    "load_frame",
    "iter_frames",
]

NORMALIZE_MODES = ("none", "aabb", "cameras", "auto")


def _background(value) -> tuple[float, float, float]:
    named = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}
    if isinstance(value, str):
        if value not in named:
            raise ValueError(f"ReadOptions.background must be 'white', 'black' or an RGB triple, got {value!r}.")
        return named[value]
    rgb = tuple(float(c) for c in value)
    if len(rgb) != 3 or not all(0 <= c <= 1 for c in rgb):
        raise ValueError(f"ReadOptions.background must be 'white', 'black' or an RGB triple in [0, 1], got {value!r}.")
    return rgb


@dataclass(frozen=True)
class ReadOptions:
    """How to read a capture (every reader takes these)."""

    downscale: float = 1.0
    """Divide each image side by this (``2`` halves them; >= 1); the intrinsics follow."""
    normalize: str = "none"
    """``none``, ``aabb``, ``cameras`` or ``auto``: move the scene into ``[-1, 1]^3`` (module docstring)."""
    background: str | tuple[float, float, float] = "white"
    """What RGBA images are composited on: ``white``, ``black`` or an RGB triple in [0, 1]."""
    split: str | None = None
    """Read only this split (``train``, ``val`` or ``test``); an empty split is an error."""
    holdout_every: int = 8
    """Captures without split information: every n-th frame (in file-name order) is ``test``."""
    aabb: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None
    """The scene box ``(min, max)`` in the capture's own frame; overrides the one in the capture."""

    def __post_init__(self) -> None:
        if not (isinstance(self.downscale, int | float) and math.isfinite(self.downscale) and self.downscale >= 1):
            raise ValueError(
                f"ReadOptions.downscale must be a number >= 1 (2 halves each side), got {self.downscale!r}."
            )
        if self.normalize not in NORMALIZE_MODES:
            raise ValueError(f"ReadOptions.normalize must be one of {NORMALIZE_MODES}, got {self.normalize!r}.")
        object.__setattr__(self, "background", _background(self.background))
        if self.split is not None and self.split not in SPLITS:
            raise ValueError(f"ReadOptions.split must be one of {SPLITS} or None, got {self.split!r}.")
        if not (isinstance(self.holdout_every, int) and self.holdout_every >= 2):
            raise ValueError(f"ReadOptions.holdout_every must be an integer >= 2, got {self.holdout_every!r}.")
        if self.aabb is not None:
            box = np.asarray(self.aabb, dtype=np.float64)
            if box.shape != (2, 3) or not np.isfinite(box).all() or not (box[1] > box[0]).all():
                raise ValueError(
                    f"ReadOptions.aabb must be ((xmin, ymin, zmin), (xmax, ymax, zmax)) with max > min, got {self.aabb!r}."
                )
            object.__setattr__(self, "aabb", tuple(tuple(float(v) for v in r) for r in box))


class FrameSkip(Exception):
    """A frame cannot be used; the message is the reason shown in the ingest report."""


@dataclass(frozen=True)
class FrameSpec:
    """One frame's metadata, before its image is loaded."""

    path: str
    """The image file."""
    c2w: np.ndarray
    """(4, 4) camera-to-world in *our* frame (after the scene transform), OpenGL convention."""
    split: str
    """``train``, ``val`` or ``test``."""
    frame_id: int
    """Index of the frame within the capture (stable: file-name order)."""
    intrinsics: Intrinsics | None = None
    """The camera at full resolution; ``None`` when it comes from the image size (Blender layout)."""
    camera_angle_x: float | None = None
    """Horizontal field of view (radians) for ``intrinsics=None``: centred, square pixels."""
    distortion: Distortion = field(default_factory=Distortion)
    """Lens distortion to remove (all zero: none)."""

    def to_row(self) -> dict:
        """A flat dict of plain values (for ``ray.data.from_items``)."""
        k = self.intrinsics
        return {
            "path": self.path,
            "c2w": np.asarray(self.c2w, dtype=np.float64).reshape(16),
            "split": self.split,
            "frame_id": int(self.frame_id),
            "intrinsics": json.dumps(k.to_dict() if k else None),
            "camera_angle_x": float("nan") if self.camera_angle_x is None else float(self.camera_angle_x),
            "distortion": json.dumps(self.distortion.to_dict()),
        }

    @classmethod
    def from_row(cls, row: dict) -> FrameSpec:
        k = json.loads(str(row["intrinsics"]))
        angle = float(row["camera_angle_x"])
        return cls(
            path=str(row["path"]),
            c2w=np.asarray(list(row["c2w"]), dtype=np.float64).reshape(4, 4),
            split=str(row["split"]),
            frame_id=int(row["frame_id"]),
            intrinsics=Intrinsics(**k) if k else None,
            camera_angle_x=None if math.isnan(angle) else angle,
            distortion=Distortion(**json.loads(str(row["distortion"]))),
        )


@dataclass(frozen=True)
class CaptureInfo:
    """What a reader learnt about the capture as a whole; save it with the data and the checkpoint."""

    source: str
    """What was read (the capture folder or file)."""
    format: str
    """``nerfstudio``, ``blender`` or ``colmap``."""
    scene_transform: SceneTransform
    """Original world -> the frames' world (``applied_transform``, then normalisation)."""
    aabb: np.ndarray | None
    """(2, 3) scene box in the frames' world, or None when neither the capture nor the options have one."""
    background: tuple[float, float, float]
    """What RGBA images were composited on (and the background a NeRF should render)."""
    downscale: float = 1.0
    """The downscale factor applied to the images."""
    counts: dict[str, int] = field(default_factory=dict)
    """Planned frames per split (before load-time skips)."""

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "format": self.format,
            "scene_transform": self.scene_transform.to_dict(),
            "aabb": None if self.aabb is None else np.asarray(self.aabb).tolist(),
            "background": list(self.background),
            "downscale": self.downscale,
            "counts": dict(self.counts),
        }

    @classmethod
    def from_dict(cls, d: dict) -> CaptureInfo:
        return cls(
            source=d["source"],
            format=d["format"],
            scene_transform=SceneTransform.from_dict(d["scene_transform"]),
            aabb=None if d.get("aabb") is None else np.asarray(d["aabb"], dtype=np.float64),
            background=tuple(d.get("background", (1.0, 1.0, 1.0))),
            downscale=float(d.get("downscale", 1.0)),
            counts=dict(d.get("counts", {})),
        )

    def save(self, path: str | Path) -> Path:
        """Write the info as JSON (``capture.json`` beside the data or in a checkpoint)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> CaptureInfo:
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass
class CapturePlan:
    """A parsed capture: the frames to load, the frames already skipped and the capture's info."""

    specs: list[FrameSpec]
    """Frames to load, in ``frame_id`` order."""
    skipped: list[SkippedRow]
    """Frames skipped while parsing (path + reason)."""
    info: CaptureInfo
    """The capture as a whole."""
    options: ReadOptions
    """The options of this read."""

    def new_report(self) -> IngestReport:
        """An ingest report holding the parse-time skips (loads add to it)."""
        return IngestReport(self.info.source, 0, list(self.skipped))


def _focus_point(c2ws: np.ndarray) -> np.ndarray:
    """The point nearest (least squares) to every camera's optical axis; the cameras' mean if ill-posed."""
    origins = c2ws[:, :3, 3]
    dirs = -c2ws[:, :3, 2]
    dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    m = np.eye(3)[None] - dirs[:, :, None] * dirs[:, None, :]
    a, b = m.sum(0), np.einsum("nij,nj->i", m, origins)
    if np.linalg.cond(a) > 1e6:
        return origins.mean(0)
    return np.linalg.solve(a, b)


def normalization(mode: str, c2ws: np.ndarray, aabb: np.ndarray | None) -> SceneTransform:
    """The transform that moves the scene into ``[-1, 1]^3`` (see the module docstring).

    Args:
        mode: one of :data:`NORMALIZE_MODES`.
        c2ws: (N, 4, 4) the cameras, in the frame the transform starts from.
        aabb: (2, 3) the scene box in that frame, or None.

    Raises:
        ValueError: ``mode="aabb"`` without a box.
    """
    if mode == "auto":
        mode = "aabb" if aabb is not None else "cameras"
    if mode == "none":
        return SceneTransform.identity()
    if mode == "aabb":
        if aabb is None:
            raise ValueError(
                "normalize='aabb' needs the scene's box: pass ReadOptions(aabb=((xmin, ymin, zmin), (xmax, ymax, zmax))) "
                "or use normalize='cameras'."
            )
        lo, hi = np.asarray(aabb, dtype=np.float64)
        center, scale = (lo + hi) / 2, 2.0 / float((hi - lo).max())
    else:
        if len(c2ws) == 0:
            return SceneTransform.identity()
        center = _focus_point(c2ws)
        reach = float(np.abs(c2ws[:, :3, 3] - center).max())
        scale = 1.0 / reach if reach > 1e-9 else 1.0
    return SceneTransform.from_parts(scale=scale, translation=-scale * center)


def _transform_aabb(t: SceneTransform, aabb: np.ndarray) -> np.ndarray:
    lo, hi = np.asarray(aabb, dtype=np.float64)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    w = t.apply_points(corners)
    return np.stack([w.min(0), w.max(0)])


def finish_plan(
    source: str,
    fmt: str,
    specs: list[FrameSpec],
    skipped: list[SkippedRow],
    options: ReadOptions,
    *,
    applied: SceneTransform | None = None,
    aabb: Sequence | None = None,
) -> CapturePlan:
    """Common last step of every format's planner: normalise, select the split, check it is not empty.

    ``specs`` carry poses in the capture's file frame; ``applied`` maps the original world to that frame
    (nerfstudio's ``applied_transform``); ``aabb`` is the capture's own box in the file frame.

    Raises:
        ValueError: no usable frame, or the requested split is empty.
    """
    applied = applied or SceneTransform.identity()
    box = options.aabb if options.aabb is not None else aabb
    if box is not None:
        box = np.asarray(box, dtype=np.float64)
        if box.shape != (2, 3) or not np.isfinite(box).all() or not (box[1] > box[0]).all():
            raise ValueError(
                f"{source}: the scene aabb must be [[xmin, ymin, zmin], [xmax, ymax, zmax]], got {box.tolist()}."
            )
    if not specs:
        reasons = IngestReport(source, 0, skipped).reasons()
        raise ValueError(
            f"{source}: no usable frame ({len(skipped)} skipped: {reasons or 'the capture lists no frames'}); "
            "fix the capture (see the ingest report) or point the reader at another one."
        )
    norm = normalization(options.normalize, np.stack([s.c2w for s in specs]), box)
    specs = [replace(s, c2w=norm.apply_c2w(s.c2w).astype(np.float64)) for s in specs]
    counts = {sp: sum(s.split == sp for s in specs) for sp in SPLITS}
    if options.split is not None:
        if counts[options.split] == 0:
            have = ", ".join(f"{k}={v}" for k, v in counts.items())
            raise ValueError(
                f"{source}: split {options.split!r} is empty ({have}); read another split or add "
                f"{options.split} frames to the capture."
            )
        specs = [s for s in specs if s.split == options.split]
    info = CaptureInfo(
        source=source,
        format=fmt,
        scene_transform=norm @ applied,
        aabb=None if box is None else _transform_aabb(norm, box),
        background=options.background,
        downscale=float(options.downscale),
        counts=counts,
    )
    return CapturePlan(specs, skipped, info, options)


def _read_rgb(path: str, background: tuple[float, float, float]) -> np.ndarray:
    """Decode an image to (H, W, 3) uint8, compositing any alpha on ``background``."""
    try:
        with Image.open(path) as im:
            im.load()
            has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                a = np.asarray(im, dtype=np.float64)
                a = a / (65535.0 if a.max(initial=0) > 255 else 255.0)
                return np.clip(np.round(np.repeat(a[..., None], 3, axis=2) * 255), 0, 255).astype(np.uint8)
            rgba = np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
    except FileNotFoundError:
        raise FrameSkip("missing image") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure is a skipped frame
        raise FrameSkip(f"unreadable image ({type(e).__name__}: {e})") from None
    if not has_alpha:
        return rgba
    rgb = rgba[..., :3].astype(np.float64) / 255.0
    alpha = rgba[..., 3:].astype(np.float64) / 255.0
    out = rgb * alpha + np.asarray(background) * (1 - alpha)
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def load_frame(spec: FrameSpec, options: ReadOptions) -> Frame:
    """Load one planned frame: decode, composite, check the size, undistort, downscale.

    Raises:
        FrameSkip: missing or unreadable image, or an image whose size is not the camera's.
    """
    image = _read_rgb(spec.path, options.background)
    h, w = image.shape[:2]
    k = spec.intrinsics
    if k is None:
        if spec.camera_angle_x is None:
            raise FrameSkip("no camera (neither intrinsics nor camera_angle_x)")
        try:
            k = Intrinsics.from_fov(spec.camera_angle_x, w, h)
        except ValueError as e:
            raise FrameSkip(f"bad camera_angle_x ({e})") from None
    elif (w, h) != (k.width, k.height):
        raise FrameSkip(f"image size mismatch (the image is {w}x{h}, its camera {k.width}x{k.height})")
    image = undistort_image(image, k, spec.distortion)
    if options.downscale != 1:
        k = k.scaled(options.downscale)
        image = np.asarray(Image.fromarray(image).resize((k.width, k.height), Image.Resampling.BOX))
    return Frame(image, spec.c2w.astype(np.float32), k, spec.split, spec.path, spec.frame_id)


def iter_frames(plan: CapturePlan, report: IngestReport | None = None) -> Iterator[Frame]:
    """Load the plan's frames one by one; skipped frames are added to ``report`` (and never raise)."""
    for spec in plan.specs:
        try:
            frame = load_frame(spec, plan.options)
        except FrameSkip as e:
            if report is not None:
                report.skipped.append(SkippedRow(spec.path, str(e)))
            continue
        if report is not None:
            report.n_ok += 1
        yield frame
