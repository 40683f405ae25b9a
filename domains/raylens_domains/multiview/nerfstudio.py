"""Planners for nerfstudio ``transforms.json`` captures and the Blender synthetic layout.

**nerfstudio** (a folder with ``transforms.json``, or the ``.json`` itself), read as nerfstudio's own
``nerfstudio_dataparser.py`` reads it:

* intrinsics ``fl_x fl_y cx cy w h`` at the top apply to every frame, otherwise each frame has its
  own (a file with only ``camera_angle_x`` gets centred square pixels from each image's size);
* ``camera_model`` ``SIMPLE_PINHOLE``, ``PINHOLE``, ``SIMPLE_RADIAL``, ``RADIAL`` or ``OPENCV`` (the
  default when absent is a pinhole); distortion ``k1 k2 k3 k4 p1 p2``, global when any is at the top,
  else per frame, is removed on load. Any other model (``OPENCV_FISHEYE``, ``EQUIRECTANGULAR``, ...)
  is refused with a ``ValueError`` naming it;
* frames are taken in file-name order (their ``frame_id``); the split comes from
  ``train_filenames`` / ``val_filenames`` / ``test_filenames`` when present (a frame in none is
  skipped), otherwise every ``holdout_every``-th frame is ``test``;
* ``applied_transform`` (3x4) and ``applied_scale`` say how the poses were moved from the original
  world (e.g. COLMAP's); they become part of :attr:`CaptureInfo.scene_transform`, so renders and
  points map back to that world exactly as nerfstudio's ``dataparser_transform`` does;
* our own ``"raylens": {"aabb": ...}`` block gives the scene box.

**Blender** (``transforms_{train,val,test}.json`` with ``camera_angle_x``; ``file_path`` without its
``.png``): RGBA images composited on :attr:`ReadOptions.background`.

Public API: :func:`plan_nerfstudio`, :func:`plan_blender`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from raylens.data.report import SkippedRow
from raylens_domains.multiview.cameras import Intrinsics, SceneTransform, as_c2w, pose_problem
from raylens_domains.multiview.capture import CapturePlan, FrameSpec, ReadOptions, finish_plan
from raylens_domains.multiview.frames import SPLITS
from raylens_domains.multiview.undistort import SUPPORTED_CAMERA_MODELS, Distortion

__all__ = ["plan_nerfstudio", "plan_blender"]

_INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h")
_DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")


def _load_json(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read it as JSON ({e}); fix or regenerate the file.") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
        raise ValueError(f"{path}: no 'frames' list; a transforms file is a JSON object with a 'frames' list.")
    return meta


def _check_model(name: object, where: str) -> None:
    if name not in SUPPORTED_CAMERA_MODELS:
        raise ValueError(
            f"{where}: camera_model {name!r} is not supported (supported: {', '.join(SUPPORTED_CAMERA_MODELS)}). "
            "Undistort the images to a PINHOLE camera first (e.g. COLMAP's image_undistorter) and write "
            "camera_model PINHOLE."
        )


def _applied(meta: dict, where: Path) -> SceneTransform:
    t = SceneTransform.identity()
    try:
        if "applied_transform" in meta:
            t = SceneTransform(as_c2w(meta["applied_transform"]))
        if "applied_scale" in meta:
            t = SceneTransform.from_parts(scale=float(meta["applied_scale"])) @ t
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: bad applied_transform / applied_scale ({e}).") from None
    return t


def _norm(p: str) -> str:
    return os.path.normpath(str(p))


def _intrinsics(meta: dict, frame: dict) -> Intrinsics | None:
    """The frame's camera; ``None`` when only ``camera_angle_x`` is known. Raises ValueError."""
    values = {}
    for key in _INTRINSIC_KEYS:
        src = meta if key in meta else frame
        if key in src:
            values[key] = src[key]
    if "fl_x" not in values and ("camera_angle_x" in meta or "camera_angle_x" in frame):
        return None
    if "fl_y" not in values and "fl_x" in values:
        values["fl_y"] = values["fl_x"]
    if "w" in values and "h" in values:
        values.setdefault("cx", float(values["w"]) / 2)
        values.setdefault("cy", float(values["h"]) / 2)
    missing = [k for k in _INTRINSIC_KEYS if k not in values]
    if missing:
        raise ValueError(f"missing intrinsics ({', '.join(missing)})")
    try:
        return Intrinsics(
            float(values["fl_x"]),
            float(values["fl_y"]),
            float(values["cx"]),
            float(values["cy"]),
            int(values["w"]),
            int(values["h"]),
        )
    except (ValueError, TypeError) as e:
        raise ValueError(f"bad intrinsics ({e})") from None


def _distortion(meta: dict, frame: dict) -> Distortion:
    src = meta if any(k in meta for k in _DISTORTION_KEYS) else frame
    try:
        return Distortion(**{k: float(src.get(k, 0.0)) for k in _DISTORTION_KEYS})
    except (ValueError, TypeError) as e:
        raise ValueError(f"bad distortion ({e})") from None


def plan_nerfstudio(path: str | Path, options: ReadOptions | None = None) -> CapturePlan:
    """Plan a nerfstudio capture (see the module docstring).

    Raises:
        FileNotFoundError: no ``transforms.json``.
        ValueError: unreadable JSON, unsupported camera model, bad ``applied_transform``, no usable
            frame, or an empty requested split.
    """
    options = options or ReadOptions()
    path = Path(path)
    json_path = path if path.suffix.lower() == ".json" else path / "transforms.json"
    if not json_path.is_file():
        raise FileNotFoundError(
            f"{json_path} not found; a nerfstudio capture is a folder holding transforms.json (or pass the .json file)."
        )
    meta = _load_json(json_path)
    data_dir = json_path.parent
    _check_model(meta.get("camera_model", "PINHOLE"), str(json_path))
    lists = {s: {_norm(p) for p in meta[f"{s}_filenames"]} for s in SPLITS if f"{s}_filenames" in meta}
    angle = meta.get("camera_angle_x")
    entries = sorted((f for f in meta["frames"] if isinstance(f, dict)), key=lambda f: str(f.get("file_path", "")))
    specs: list[FrameSpec] = []
    skipped: list[SkippedRow] = []
    for i, frame in enumerate(entries):
        rel = str(frame.get("file_path", ""))
        image = str(data_dir / rel)
        if not rel:
            skipped.append(SkippedRow(f"{json_path}#frames[{i}]", "no file_path"))
            continue
        if "camera_model" in frame and frame["camera_model"] not in SUPPORTED_CAMERA_MODELS:
            skipped.append(SkippedRow(image, f"unsupported camera model ({frame['camera_model']})"))
            continue
        problem = (
            pose_problem(frame["transform_matrix"]) if "transform_matrix" in frame else "bad pose (no transform_matrix)"
        )
        if problem:
            skipped.append(SkippedRow(image, problem))
            continue
        try:
            k = _intrinsics(meta, frame)
            dist = _distortion(meta, frame)
        except ValueError as e:
            skipped.append(SkippedRow(image, str(e)))
            continue
        if lists:
            split = next((s for s, names in lists.items() if _norm(rel) in names), None)
            if split is None:
                skipped.append(SkippedRow(image, "in no split list (train/val/test_filenames)"))
                continue
        else:
            split = "test" if i % options.holdout_every == 0 and len(entries) > 1 else "train"
        if not os.path.isfile(image):
            skipped.append(SkippedRow(image, "missing image"))
            continue
        specs.append(
            FrameSpec(
                path=image,
                c2w=as_c2w(frame["transform_matrix"]),
                split=split,
                frame_id=i,
                intrinsics=k,
                camera_angle_x=float(frame.get("camera_angle_x", angle)) if k is None else None,
                distortion=dist,
            )
        )
    aabb = (meta.get("raylens") or {}).get("aabb")
    return finish_plan(
        str(json_path.parent if json_path.name == "transforms.json" else json_path),
        "nerfstudio",
        specs,
        skipped,
        options,
        applied=_applied(meta, json_path),
        aabb=aabb,
    )


def _blender_image(root: Path, rel: str) -> Path:
    p = root / rel
    return p if p.suffix.lower() in (".png", ".jpg", ".jpeg") else p.with_name(p.name + ".png")


def plan_blender(path: str | Path, options: ReadOptions | None = None) -> CapturePlan:
    """Plan a Blender synthetic capture (``transforms_{train,val,test}.json`` in ``path``).

    Raises:
        FileNotFoundError: no ``transforms_*.json`` in the folder.
        ValueError: a file without ``camera_angle_x``, unreadable JSON, no usable frame, or an empty
            requested split.
    """
    options = options or ReadOptions()
    root = Path(path)
    files = {s: root / f"transforms_{s}.json" for s in SPLITS if (root / f"transforms_{s}.json").is_file()}
    if not files:
        raise FileNotFoundError(
            f"{root}: no transforms_train.json / transforms_val.json / transforms_test.json; "
            "a Blender capture is a folder holding them."
        )
    specs: list[FrameSpec] = []
    skipped: list[SkippedRow] = []
    aabb = None
    frame_id = 0
    for split, file in files.items():
        meta = _load_json(file)
        if "camera_angle_x" not in meta:
            raise ValueError(f"{file}: no camera_angle_x; the Blender layout needs the horizontal field of view.")
        angle = meta["camera_angle_x"]
        if not isinstance(angle, int | float) or not 0 < angle < np.pi:
            raise ValueError(f"{file}: camera_angle_x must be a field of view in radians in (0, pi), got {angle!r}.")
        aabb = aabb or (meta.get("raylens") or {}).get("aabb")
        for j, frame in enumerate(meta["frames"]):
            fid, frame_id = frame_id, frame_id + 1
            rel = str(frame.get("file_path", "")) if isinstance(frame, dict) else ""
            if not rel:
                skipped.append(SkippedRow(f"{file}#frames[{j}]", "no file_path"))
                continue
            image = _blender_image(root, rel)
            problem = (
                pose_problem(frame["transform_matrix"])
                if "transform_matrix" in frame
                else "bad pose (no transform_matrix)"
            )
            if problem:
                skipped.append(SkippedRow(str(image), problem))
                continue
            if not image.is_file():
                skipped.append(SkippedRow(str(image), "missing image"))
                continue
            specs.append(FrameSpec(str(image), as_c2w(frame["transform_matrix"]), split, fid, None, angle))
    return finish_plan(str(root), "blender", specs, skipped, options, aabb=aabb)
