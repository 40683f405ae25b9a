"""COLMAP sparse models (text or binary), parsed by pycolmap.

COLMAP stores, per image, ``cam_from_world`` (world-to-camera) in the OpenCV convention (camera looks
down ``+z``, ``y`` down). Our ``c2w`` is its inverse with the y and z axes flipped to the OpenGL
convention: ``c2w = inv(cam_from_world) @ diag(1, -1, -1, 1)``. COLMAP's world frame is kept as the
original frame (no ``applied_transform``); normalisation, if asked for, is recorded as usual.

* Cameras: ``SIMPLE_PINHOLE``, ``PINHOLE``, ``SIMPLE_RADIAL``, ``RADIAL`` and ``OPENCV`` (distortion
  removed on load). Frames of other models are skipped, and a model whose cameras are all of other
  models is refused with a ``ValueError``.
* Images are found in ``images_dir`` (default: the ``images`` folder next to ``sparse/``).
* Splits: every ``holdout_every``-th image (by name) is ``test``.
* The scene box is the 1st-99th percentile box of the 3D points, grown by 10%, when there are points.

Public API: :func:`find_model`, :func:`plan_colmap`, :func:`write_colmap`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from raylens.data.report import SkippedRow
from raylens_domains.multiview.cameras import Intrinsics, pose_problem
from raylens_domains.multiview.capture import CapturePlan, FrameSpec, ReadOptions, finish_plan
from raylens_domains.multiview.frames import Frame
from raylens_domains.multiview.undistort import SUPPORTED_CAMERA_MODELS, Distortion

__all__ = ["find_model", "plan_colmap", "write_colmap"]

_FLIP = np.diag([1.0, -1.0, -1.0, 1.0])


def _is_model(d: Path) -> bool:
    return any((d / f"cameras.{ext}").is_file() for ext in ("txt", "bin"))


def find_model(path: str | Path) -> Path:
    """The sparse model folder under ``path`` (itself, ``sparse/0``, ``sparse`` or ``colmap/sparse/0``).

    Raises:
        FileNotFoundError: none of them holds ``cameras.txt`` or ``cameras.bin``.
    """
    root = Path(path)
    for d in (root, root / "sparse" / "0", root / "sparse", root / "colmap" / "sparse" / "0"):
        if _is_model(d):
            return d
    raise FileNotFoundError(
        f"{root}: no COLMAP sparse model (cameras.txt/.bin) here or in sparse/0, sparse, colmap/sparse/0; "
        "pass the folder holding cameras, images and points3D."
    )


def _default_images_dir(model: Path) -> Path:
    for d in (model.parent, model.parent.parent, model.parent.parent.parent, model):
        if (d / "images").is_dir():
            return d / "images"
    return model.parent / "images"


def _camera(cam) -> tuple[Intrinsics, Distortion]:
    """Intrinsics + distortion of a supported pycolmap camera."""
    name, p, w, h = cam.model.name, [float(v) for v in cam.params], int(cam.width), int(cam.height)
    if name == "SIMPLE_PINHOLE":
        return Intrinsics(p[0], p[0], p[1], p[2], w, h), Distortion()
    if name == "PINHOLE":
        return Intrinsics(p[0], p[1], p[2], p[3], w, h), Distortion()
    if name == "SIMPLE_RADIAL":
        return Intrinsics(p[0], p[0], p[1], p[2], w, h), Distortion(k1=p[3])
    if name == "RADIAL":
        return Intrinsics(p[0], p[0], p[1], p[2], w, h), Distortion(k1=p[3], k2=p[4])
    if name == "OPENCV":
        return Intrinsics(p[0], p[1], p[2], p[3], w, h), Distortion(k1=p[4], k2=p[5], p1=p[6], p2=p[7])
    raise AssertionError(name)  # callers check SUPPORTED_CAMERA_MODELS first


def plan_colmap(
    path: str | Path, options: ReadOptions | None = None, *, images_dir: str | Path | None = None
) -> CapturePlan:
    """Plan a COLMAP capture (see the module docstring).

    Raises:
        FileNotFoundError: no sparse model under ``path``.
        ValueError: pycolmap cannot read the model, every camera has an unsupported model, no usable
            frame, or an empty requested split.
    """
    import pycolmap

    options = options or ReadOptions()
    model = find_model(path)
    try:
        rec = pycolmap.Reconstruction(str(model))
    except Exception as e:  # noqa: BLE001 - pycolmap raises ValueError/RuntimeError for bad models
        raise ValueError(f"{model}: pycolmap cannot read this COLMAP model ({e}); re-export it from COLMAP.") from None
    models = {c.model.name for c in rec.cameras.values()}
    if models and not models & set(SUPPORTED_CAMERA_MODELS):
        raise ValueError(
            f"{model}: camera model(s) {sorted(models)} not supported (supported: {', '.join(SUPPORTED_CAMERA_MODELS)}). "
            "Undistort with COLMAP's image_undistorter first (it writes PINHOLE cameras)."
        )
    images = Path(images_dir) if images_dir is not None else _default_images_dir(model)
    specs: list[FrameSpec] = []
    skipped: list[SkippedRow] = []
    for i, img in enumerate(sorted(rec.images.values(), key=lambda im: im.name)):
        file = str(images / img.name)
        cam = rec.cameras[img.camera_id]
        if cam.model.name not in SUPPORTED_CAMERA_MODELS:
            skipped.append(SkippedRow(file, f"unsupported camera model ({cam.model.name})"))
            continue
        if not img.has_pose:
            skipped.append(SkippedRow(file, "bad pose (image not registered)"))
            continue
        w2c = np.vstack([np.asarray(img.cam_from_world().matrix(), dtype=np.float64), [0, 0, 0, 1]])
        problem = pose_problem(w2c)
        if problem:
            skipped.append(SkippedRow(file, problem))
            continue
        try:
            k, dist = _camera(cam)
        except ValueError as e:
            skipped.append(SkippedRow(file, f"bad intrinsics ({e})"))
            continue
        if not Path(file).is_file():
            skipped.append(SkippedRow(file, "missing image"))
            continue
        split = "test" if i % options.holdout_every == 0 and len(rec.images) > 1 else "train"
        specs.append(FrameSpec(file, np.linalg.inv(w2c) @ _FLIP, split, i, k, None, dist))
    aabb = None
    if rec.num_points3D() > 0:
        xyz = np.array([p.xyz for p in rec.points3D.values()], dtype=np.float64)
        lo, hi = np.percentile(xyz, 1, axis=0), np.percentile(xyz, 99, axis=0)
        pad = 0.05 * (hi - lo) + 1e-6
        aabb = np.stack([lo - pad, hi + pad])
    return finish_plan(str(model), "colmap", specs, skipped, options, aabb=aabb)


def write_colmap(frames: Iterable[Frame], out_dir: str | Path, *, binary: bool = True, image_names=None) -> Path:
    """Write the frames' cameras and poses as a COLMAP sparse model (PINHOLE cameras, no points).

    Frames sharing intrinsics share a camera. Images are not written: ``image_names`` (default
    ``frame_{i:05d}.png``) name them in the model. Returns ``out_dir``.
    """
    import pycolmap

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rec = pycolmap.Reconstruction()
    cams: dict[Intrinsics, int] = {}
    for i, f in enumerate(frames):
        k = f.intrinsics
        if k not in cams:
            cams[k] = len(cams) + 1
            cam = pycolmap.Camera(
                model="PINHOLE", width=k.width, height=k.height, params=[k.fx, k.fy, k.cx, k.cy], camera_id=cams[k]
            )
            rec.add_camera_with_trivial_rig(cam)
        w2c = np.linalg.inv(np.asarray(f.c2w, dtype=np.float64) @ _FLIP)
        name = image_names[i] if image_names is not None else f"frame_{i:05d}.png"
        image = pycolmap.Image(name=name, camera_id=cams[k], image_id=i + 1)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(w2c[:3, :4]))
    (rec.write_binary if binary else rec.write_text)(str(out))
    return out
