"""Writers: frames to a nerfstudio ``transforms.json`` capture, or to the Blender synthetic layout.

:func:`write_transforms` writes what nerfstudio's ``nerfstudio_dataparser.py`` reads, so a capture we
make or convert opens in nerfstudio (``ns-train nerfacto --data DIR``) as it is:

* ``camera_model`` (``OPENCV``) with ``k1 k2 p1 p2`` = 0 (our frames are undistorted pinhole);
* ``fl_x fl_y cx cy w h`` at the top when every frame shares them, otherwise in every frame;
* ``frames[]`` with ``file_path`` (relative to the folder) and ``transform_matrix`` (4x4 c2w, OpenGL);
* ``train_filenames``, ``val_filenames``, ``test_filenames`` (nerfstudio needs all three once any is
  there), which is how **we record the split** of every frame;
* ``applied_transform`` (3x4) and ``applied_scale`` when the poses were moved from an original frame
  (a :class:`~raylens_domains.multiview.cameras.SceneTransform`), as nerfstudio itself records them;
* our own keys under ``"raylens"`` (scene ``aabb``, ``background``, the full scene transform), which
  nerfstudio ignores.

:func:`write_blender` writes ``transforms_{train,val,test}.json`` with ``camera_angle_x`` and RGBA PNGs
(the NeRF-synthetic layout).

:func:`convert_capture` reads any capture our readers take (nerfstudio, Blender, COLMAP; with their
options: downscale, normalisation, background) and writes it with :func:`write_transforms`, recording
the scene transform and box, so it opens in nerfstudio.

Public API: :func:`write_transforms`, :func:`write_blender`, :func:`convert_capture`, :func:`save_image`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from raylens_domains.multiview.cameras import SceneTransform
from raylens_domains.multiview.frames import SPLITS, Frame

__all__ = ["write_transforms", "write_blender", "convert_capture", "save_image"]


def save_image(image: np.ndarray, path: str | Path) -> Path:
    """Save an (H, W, 3|4) uint8 or [0, 1] float image as PNG (or whatever the suffix says)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = np.clip(np.round(a.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    Image.fromarray(a).save(path)
    return path


def _applied(transform: SceneTransform) -> tuple[list[list[float]], float]:
    """nerfstudio's (applied_transform 3x4, applied_scale) for a similarity ``x' = s R x + t``."""
    s = transform.scale
    rigid = transform.matrix[:3, :4].copy()
    rigid[:3, :3] /= s
    rigid[:3, 3] /= s
    return rigid.tolist(), s


def write_transforms(
    frames: Iterable[Frame],
    out_dir: str | Path,
    *,
    scene_transform: SceneTransform | None = None,
    aabb: Sequence[Sequence[float]] | None = None,
    background: Sequence[float] | None = None,
    image_dir: str = "images",
    extra: dict | None = None,
) -> Path:
    """Write ``frames`` as a nerfstudio capture in ``out_dir``; returns the ``transforms.json`` path.

    Args:
        frames: the frames (any splits; images are written as ``{image_dir}/frame_{i:05d}.png``).
        out_dir: the capture folder (created).
        scene_transform: original world -> the frames' world; written as ``applied_transform`` +
            ``applied_scale`` (and in full under ``raylens``) unless it is the identity.
        aabb: the scene's bounding box in the frames' world, ``[[xmin, ymin, zmin], [xmax, ymax, zmax]]``.
        background: the RGB (0-1) the images were composited on, when known.
        image_dir: sub-folder for the images.
        extra: more keys for the ``raylens`` block.

    Raises:
        ValueError: no frames.
    """
    frames = list(frames)
    if not frames:
        raise ValueError("write_transforms: no frames to write; read or generate some frames first.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    intr = [f.intrinsics for f in frames]
    shared = all(k == intr[0] for k in intr)
    meta: dict = {"camera_model": "OPENCV"}
    if shared:
        k = intr[0]
        meta.update(fl_x=k.fx, fl_y=k.fy, cx=k.cx, cy=k.cy, w=k.width, h=k.height)
    meta.update(k1=0.0, k2=0.0, p1=0.0, p2=0.0)
    entries, by_split = [], {s: [] for s in SPLITS}
    for i, f in enumerate(frames):
        rel = f"{image_dir}/frame_{i:05d}.png"
        save_image(f.image, out / rel)
        entry: dict = {"file_path": rel, "transform_matrix": np.asarray(f.c2w, dtype=np.float64).tolist()}
        if not shared:
            k = f.intrinsics
            entry.update(fl_x=k.fx, fl_y=k.fy, cx=k.cx, cy=k.cy, w=k.width, h=k.height)
        entries.append(entry)
        by_split[f.split].append(rel)
    meta["frames"] = entries
    for s in SPLITS:
        meta[f"{s}_filenames"] = by_split[s]
    ours: dict = {}
    if scene_transform is not None and not scene_transform.is_identity:
        meta["applied_transform"], meta["applied_scale"] = _applied(scene_transform)
        ours["scene_transform"] = scene_transform.to_dict()
    if aabb is not None:
        ours["aabb"] = np.asarray(aabb, dtype=np.float64).reshape(2, 3).tolist()
    if background is not None:
        ours["background"] = [float(c) for c in background]
    ours.update(extra or {})
    if ours:
        meta["raylens"] = ours
    path = out / "transforms.json"
    path.write_text(json.dumps(meta, indent=2))
    return path


def write_blender(
    frames: Iterable[Frame],
    out_dir: str | Path,
    *,
    alphas: Sequence[np.ndarray] | None = None,
    extra: dict | None = None,
) -> list[Path]:
    """Write ``frames`` in the Blender synthetic layout; returns the ``transforms_{split}.json`` paths.

    Every frame must share one centred, square-pixel camera (the layout stores only
    ``camera_angle_x``). With ``alphas`` (one (H, W) array in [0, 1] per frame) the PNGs are RGBA: the
    frame's image is stored as the straight (not premultiplied) colour and the alpha beside it, which
    a reader composites on its background (``rgb * a + bg * (1 - a)``).

    Raises:
        ValueError: no frames, or frames whose cameras the layout cannot express.
    """
    frames = list(frames)
    if not frames:
        raise ValueError("write_blender: no frames to write.")
    k = frames[0].intrinsics
    for f in frames:
        g = f.intrinsics
        if g != k or abs(g.fx - g.fy) > 1e-6 * g.fx or (g.cx, g.cy) != (g.width / 2, g.height / 2):
            raise ValueError(
                "write_blender: the Blender layout holds one centred square-pixel camera for all frames; "
                "use write_transforms for other cameras."
            )
    out = Path(out_dir)
    paths = []
    for split in SPLITS:
        items = [(i, f) for i, f in enumerate(frames) if f.split == split]
        entries = []
        for j, (i, f) in enumerate(items):
            rel = f"./{split}/r_{j}"
            image = np.asarray(f.image)
            if image.dtype != np.uint8:
                image = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
            if alphas is not None:
                a = np.clip(np.round(np.asarray(alphas[i], dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
                image = np.dstack([image, a])
            save_image(image, out / f"{rel}.png")
            entries.append({"file_path": rel, "rotation": 0.0, "transform_matrix": f.c2w.astype(float).tolist()})
        meta = {"camera_angle_x": k.camera_angle_x, "frames": entries}
        if extra:
            meta["raylens"] = extra
        path = out / f"transforms_{split}.json"
        path.write_text(json.dumps(meta, indent=2))
        paths.append(path)
    return paths


def convert_capture(source: str | Path, out_dir: str | Path, options=None, **overrides) -> Path:
    """Read a capture (any format, :func:`~.readers.read_frames` options) and write it as nerfstudio.

    The frames are written as read (undistorted, downscaled, normalised), with the capture's scene
    transform as ``applied_transform`` / ``applied_scale``, its box and background under
    ``raylens``, and the ingest report as ``ingest_report.json`` beside ``transforms.json``.
    Returns the ``transforms.json`` path.
    """
    from raylens_domains.multiview.readers import read_frames

    got = read_frames(source, options, **overrides)
    info = got.info
    path = write_transforms(
        got.frames,
        out_dir,
        scene_transform=info.scene_transform,
        aabb=info.aabb,
        background=info.background,
        extra={"converted_from": info.source, "source_format": info.format},
    )
    got.report.save(Path(out_dir) / "ingest_report.json")
    return path
