"""Our transforms.json against the nerfstudio schema, as nerfstudio's dataparser reads it; round trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raylens_domains.multiview.cameras import Intrinsics, SceneTransform, look_at
from raylens_domains.multiview.frames import Frame
from raylens_domains.multiview.readers import read_frames
from raylens_domains.multiview.scene import generate_scene
from raylens_domains.multiview.writer import write_blender, write_transforms

# nerfstudio/cameras/cameras.py: CAMERA_MODEL_TO_TYPE keys (the camera_model values it accepts)
NERFSTUDIO_CAMERA_MODELS = {
    "SIMPLE_PINHOLE",
    "PINHOLE",
    "SIMPLE_RADIAL",
    "RADIAL",
    "OPENCV",
    "OPENCV_FISHEYE",
    "EQUIRECTANGULAR",
    "OMNIDIRECTIONALSTEREO_L",
    "OMNIDIRECTIONALSTEREO_R",
    "VR180_L",
    "VR180_R",
    "ORTHOPHOTO",
    "FISHEYE624",
}


def nerfstudio_reads(data: Path, split: str) -> dict:
    """What nerfstudio's ``Nerfstudio._generate_dataparser_outputs(split)`` (nerfstudio_dataparser.py)
    takes from a capture, with its checks, minus the torch: keys fixed at the top or required per
    frame, file names sorted, ``{split}_filenames`` validated, ``applied_transform`` as 3x4."""
    meta = json.loads((data / "transforms.json").read_text())
    fixed = {k: k in meta for k in ("fl_x", "fl_y", "cx", "cy", "h", "w")}
    distort_fixed = any(k in meta for k in ("k1", "k2", "k3", "p1", "p2"))
    frames = sorted(meta["frames"], key=lambda f: str(data / Path(f["file_path"])))
    out = {k: [] for k in ("fl_x", "fl_y", "cx", "cy", "h", "w", "fname", "pose", "distortion")}
    for frame in frames:
        fname = data / Path(frame["file_path"])
        for key, is_fixed in fixed.items():
            if not is_fixed:
                assert key in frame, f"{key} not specified in frame"
                out[key].append(float(frame[key]) if key not in ("h", "w") else int(frame[key]))
        if not distort_fixed:
            out["distortion"].append([float(frame.get(k, 0.0)) for k in ("k1", "k2", "k3", "k4", "p1", "p2")])
        out["fname"].append(fname)
        out["pose"].append(np.array(frame["transform_matrix"]))
        assert "mask_path" not in frame and "depth_file_path" not in frame
    has_split_files_spec = any(f"{s}_filenames" in meta for s in ("train", "val", "test"))
    if f"{split}_filenames" in meta:
        names = {data / Path(x) for x in meta[f"{split}_filenames"]}
        assert not names - set(out["fname"]), f"Some filenames for split {split} were not found"
        indices = [i for i, p in enumerate(out["fname"]) if p in names]
    else:
        assert not has_split_files_spec, f"The dataset's list of filenames for split {split} is missing."
        indices = list(range(len(out["fname"])))
    assert meta.get("camera_model", "PINHOLE") in NERFSTUDIO_CAMERA_MODELS
    poses = np.array(out["pose"]).astype(np.float32)[:, :3, :4]  # what Cameras(camera_to_worlds=...) takes
    if "applied_transform" in meta:
        assert np.array(meta["applied_transform"]).shape == (3, 4)
    if "applied_scale" in meta:
        float(meta["applied_scale"])
    for fname in out["fname"][:1]:  # the automatic downscale opens the first image
        Image.open(fname).size  # noqa: B018
    value = lambda key: [meta[key]] * len(indices) if fixed[key] else [out[key][i] for i in indices]
    return {
        "fnames": [out["fname"][i] for i in indices],
        "poses": poses[indices],
        **{key: value(key) for key in fixed},
    }


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    return generate_scene(tmp_path_factory.mktemp("ns"), n_train=4, n_val=1, n_test=2, size=20, seed=5)


def test_generated_capture_passes_the_nerfstudio_schema(capture):
    frames = read_frames(capture.root).frames
    for split in ("train", "val", "test"):
        ns = nerfstudio_reads(capture.root, split)
        mine = [f for f in frames if f.split == split]
        assert [Path(f.path) for f in mine] == ns["fnames"]
        np.testing.assert_allclose(ns["poses"], np.stack([f.c2w[:3, :4] for f in mine]), atol=1e-6)
        assert ns["fl_x"] == [f.intrinsics.fx for f in mine] and ns["w"] == [20] * len(mine)


def test_per_frame_intrinsics_and_scene_transform_are_written_the_nerfstudio_way(tmp_path):
    img = lambda w, h, c: np.full((h, w, 3), c, np.uint8)
    frames = [
        Frame(img(16, 12, 10), look_at((3, 0, 1)), Intrinsics(20, 21, 8, 6, 16, 12), "train"),
        Frame(img(20, 10, 200), look_at((0, 3, 1)), Intrinsics(25, 25, 10, 5, 20, 10), "train"),
        Frame(img(16, 12, 90), look_at((-3, 0, 1)), Intrinsics(20, 21, 8, 6, 16, 12), "test"),
    ]
    t = SceneTransform.from_parts(scale=0.5, rotation=np.diag([1.0, -1.0, -1.0]), translation=(0.1, 0.2, 0.3))
    path = write_transforms(frames, tmp_path, scene_transform=t, aabb=[[-1, -1, -1], [1, 1, 1]])
    meta = json.loads(path.read_text())
    assert "fl_x" not in meta and all("fl_x" in f and "w" in f for f in meta["frames"])
    assert meta["camera_model"] == "OPENCV" and meta["val_filenames"] == []
    # nerfstudio rebuilds the similarity as diag(s) @ [applied_transform; 0 0 0 1]
    rebuilt = np.diag([meta["applied_scale"]] * 3 + [1.0]) @ np.vstack([meta["applied_transform"], [0, 0, 0, 1]])
    np.testing.assert_allclose(rebuilt, t.matrix, atol=1e-12)
    ns = nerfstudio_reads(tmp_path, "train")
    assert ns["w"] == [16, 20] and ns["fl_y"] == [21.0, 25.0]
    back = read_frames(tmp_path)
    assert [f.intrinsics for f in back.frames] == [f.intrinsics for f in frames]
    assert [f.split for f in back.frames] == ["train", "train", "test"]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(back.frames, frames))
    np.testing.assert_allclose(back.info.scene_transform.matrix, t.matrix, atol=1e-12)


def test_blender_writer_refuses_cameras_it_cannot_hold(tmp_path):
    k = Intrinsics(20, 21, 8, 6, 16, 12)  # non-square pixels
    with pytest.raises(ValueError, match="centred square-pixel"):
        write_blender([Frame(np.zeros((12, 16, 3), np.uint8), look_at((3, 0, 1)), k)], tmp_path)
    with pytest.raises(ValueError, match="no frames"):
        write_transforms([], tmp_path)


def test_convert_a_colmap_capture_to_nerfstudio(capture, tmp_path):
    from raylens_domains.multiview.colmap import write_colmap
    from raylens_domains.multiview.writer import convert_capture

    frames = read_frames(capture.root).frames
    (tmp_path / "col" / "images").mkdir(parents=True)
    for i, f in enumerate(frames):
        Image.fromarray(f.image).save(tmp_path / "col" / "images" / f"frame_{i:05d}.png")
    write_colmap(frames, tmp_path / "col" / "sparse" / "0")
    path = convert_capture(tmp_path / "col", tmp_path / "ns", normalize="cameras", downscale=2)
    for split in ("train", "test"):
        nerfstudio_reads(path.parent, split)
    back = read_frames(path.parent)
    assert back.frames[0].image.shape == (10, 10, 3) and back.info.format == "nerfstudio"
    # the conversion's normalisation travels as applied_transform/applied_scale: poses map back to COLMAP's world
    for original, converted in zip(frames, back.frames):
        np.testing.assert_allclose(
            back.info.scene_transform.inverse().apply_c2w(converted.c2w), original.c2w, atol=1e-5
        )
    assert json.loads((path.parent / "ingest_report.json").read_text())["n_ok"] == len(frames)
