"""Multi-view readers without Ray: nerfstudio and Blender captures, options and bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from raylens_domains.multiview.cameras import Intrinsics, SceneTransform, look_at
from raylens_domains.multiview.capture import CaptureInfo, ReadOptions
from raylens_domains.multiview.frames import Frame, image_float
from raylens_domains.multiview.readers import detect_format, plan_capture, read_frames
from raylens_domains.multiview.scene import Scene, Sphere, generate_scene, render_gt, trace
from raylens_domains.multiview.undistort import Distortion
from raylens_domains.multiview.writer import write_transforms


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    return generate_scene(tmp_path_factory.mktemp("ns"), n_train=5, n_val=2, n_test=1, size=24, seed=1).root


@pytest.fixture
def capture(scene_dir, tmp_path):
    """A fresh copy of the capture each test may break."""
    return shutil.copytree(scene_dir, tmp_path / "cap")


def _meta(root):
    return json.loads((root / "transforms.json").read_text())


def _save(root, meta):
    (root / "transforms.json").write_text(json.dumps(meta))


def _error(frame, **kw):
    return float(np.abs(image_float(frame.image) - render_gt(frame.c2w, frame.intrinsics, **kw)).max())


def test_nerfstudio_capture_reads_back_exactly(scene_dir):
    got = read_frames(scene_dir)
    assert detect_format(scene_dir) == "nerfstudio" and got.info.format == "nerfstudio"
    assert [f.split for f in got.frames] == ["train"] * 5 + ["val"] * 2 + ["test"]
    assert [f.frame_id for f in got.frames] == list(range(8))
    assert got.report.n_ok == 8 and got.report.n_skipped == 0
    assert got.info.scene_transform.is_identity
    np.testing.assert_allclose(got.info.aabb, [[-1, -1, -1], [1, 1, 1]])
    for f in got.frames:
        assert f.image.dtype == np.uint8 and f.image.shape == (24, 24, 3)
        assert _error(f) <= 0.5 / 255 + 1e-6
    assert [f.split for f in read_frames(scene_dir / "transforms.json", split="val").frames] == ["val", "val"]


def test_bad_frames_are_skipped_with_path_and_reason(capture):
    meta = _meta(capture)
    frames = meta["frames"]
    (capture / frames[0]["file_path"]).unlink()  # missing image
    frames[1]["transform_matrix"][0][0] = float("nan")  # NaN pose
    frames[2]["transform_matrix"] = np.diag([1.0, 1.0, 0.0, 1.0]).tolist()  # singular pose
    Image.new("RGB", (20, 24)).save(capture / frames[3]["file_path"])  # not the global 24x24
    (capture / frames[4]["file_path"]).write_bytes(b"not a png")  # undecodable
    _save(capture, meta)
    got = read_frames(capture)
    reasons = {s.path.rsplit("/", 1)[-1]: s.reason for s in got.report.skipped}
    assert reasons["frame_00000.png"] == "missing image"
    assert reasons["frame_00001.png"].startswith("bad pose (NaN")
    assert reasons["frame_00002.png"].startswith("bad pose (non-invertible")
    assert reasons["frame_00003.png"].startswith("image size mismatch (the image is 20x24, its camera 24x24)")
    assert reasons["frame_00004.png"].startswith("unreadable image")
    assert len(got.frames) == 3 and got.report.n_ok == 3  # the job went on
    assert got.report.reasons() == {"missing image": 1, "bad pose": 2, "image size mismatch": 1, "unreadable image": 1}


def test_errors_where_the_job_cannot_go_on(capture, tmp_path):
    meta = _meta(capture)
    _save(capture, {**meta, "camera_model": "OPENCV_FISHEYE"})
    with pytest.raises(ValueError, match="OPENCV_FISHEYE.*not supported"):
        read_frames(capture)
    _save(capture, {**meta, "test_filenames": []})
    with pytest.raises(ValueError, match="split 'test' is empty"):
        read_frames(capture, split="test")
    for f in meta["frames"]:
        f["transform_matrix"] = np.zeros((4, 4)).tolist()
    _save(capture, meta)
    with pytest.raises(ValueError, match=r"no usable frame \(8 skipped"):
        read_frames(capture)
    (capture / "transforms.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read it as JSON"):
        read_frames(capture)
    with pytest.raises(FileNotFoundError, match="not a capture"):
        read_frames(tmp_path / "cap" / "images")
    with pytest.raises(ValueError, match="ReadOptions.downscale"):
        ReadOptions(downscale=0.5)
    with pytest.raises(ValueError, match="ReadOptions.normalize"):
        ReadOptions(normalize="sphere")


def test_per_frame_camera_model_and_intrinsics(capture):
    meta = _meta(capture)
    k = {key: meta.pop(key) for key in ("fl_x", "fl_y", "cx", "cy", "w", "h")}
    for f in meta["frames"]:
        f.update(k)
    meta["frames"][0]["camera_model"] = "EQUIRECTANGULAR"
    del meta["frames"][1]["fl_y"]  # falls back to fl_x, as square pixels
    del meta["frames"][2]["w"]
    _save(capture, meta)
    got = read_frames(capture)
    reasons = sorted(s.reason for s in got.report.skipped)
    assert reasons == ["missing intrinsics (w)", "unsupported camera model (EQUIRECTANGULAR)"]
    assert len(got.frames) == 6 and all(_error(f) <= 0.5 / 255 + 1e-6 for f in got.frames)


def test_splits_without_lists_hold_out_every_nth_frame(capture):
    meta = _meta(capture)
    for s in ("train", "val", "test"):
        del meta[f"{s}_filenames"]
    _save(capture, meta)
    got = read_frames(capture, holdout_every=4)
    assert [f.split for f in got.frames] == ["test", "train", "train", "train"] * 2


def _centroid(image):
    """Sub-pixel centroid (column, row) of the dark pixels of an anti-aliased image on white."""
    w = 1.0 - image_float(image).mean(-1)
    rows, cols = np.mgrid[: w.shape[0], : w.shape[1]]
    return np.array([(w * cols).sum(), (w * rows).sum()]) / w.sum()


def test_opencv_distortion_is_removed(tmp_path):
    """A dark ball near the image corner, as a lens with OPENCV distortion sees it, lands where the pinhole
    camera sees it once read (to a small fraction of a pixel; the lens moved it by most of one)."""
    scene = Scene((Sphere((0.75, 0.5, 0.65), 0.2, ((0, 0, 0), (0, 0, 0))),), shadows=False)
    k, s = Intrinsics.from_fov(0.7, 64, 64), 4
    dist = Distortion(k1=-0.3, k2=0.05, p1=0.003, p2=-0.002)
    c2w = look_at((0, -3, 0))
    u, v = np.meshgrid((np.arange(64 * s) + 0.5) / s, (np.arange(64 * s) + 0.5) / s)
    x, y = dist.undistort_points((u - k.cx) / k.fx, (v - k.cy) / k.fy)
    d = np.stack([x, -y, -np.ones_like(x)], -1) @ c2w[:3, :3].T.astype(np.float64)
    o = np.broadcast_to(c2w[:3, 3], d.shape).reshape(-1, 3)
    seen = trace(o, d.reshape(-1, 3), scene)["rgb"].reshape(64, s, 64, s, 3).mean(axis=(1, 3))
    write_transforms([Frame(seen, c2w, k, "train")], tmp_path)
    meta = _meta(tmp_path)
    meta.update(dist.to_dict())
    _save(tmp_path, meta)
    got = read_frames(tmp_path).frames[0]
    truth = _centroid(render_gt(c2w, k, scene=scene, supersample=s))
    assert np.linalg.norm(_centroid(seen) - truth) > 0.5
    assert np.linalg.norm(_centroid(got.image) - truth) < 0.1


def test_applied_transform_is_recorded_and_maps_back(capture):
    meta = _meta(capture)
    rz = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    t = SceneTransform.from_parts(scale=2.0, rotation=rz, translation=(3.0, -1.0, 0.5))
    originals = [np.asarray(f["transform_matrix"]) for f in meta["frames"]]
    for f, c2w in zip(meta["frames"], originals):
        f["transform_matrix"] = t.apply_c2w(c2w).astype(float).tolist()
    meta["applied_transform"] = np.hstack([rz, np.array([[1.5], [-0.5], [0.25]])]).tolist()  # translation / scale
    meta["applied_scale"] = 2.0
    meta["raylens"]["aabb"] = [[1.0, -3.0, -1.5], [5.0, 1.0, 2.5]]  # the unit box, moved by t
    _save(capture, meta)
    got = read_frames(capture)
    np.testing.assert_allclose(got.info.scene_transform.matrix, t.matrix, atol=1e-12)
    for f, c2w in zip(got.frames, originals):
        np.testing.assert_allclose(got.info.scene_transform.inverse().apply_c2w(f.c2w), c2w, atol=1e-5)
    # normalising by the box undoes the scale and shift: our world is the original up to the rotation
    unit = read_frames(capture, normalize="aabb")
    np.testing.assert_allclose(unit.info.aabb, [[-1, -1, -1], [1, 1, 1]], atol=1e-9)
    np.testing.assert_allclose(unit.info.scene_transform.matrix[:3, :3], rz, atol=1e-9)
    for f in unit.frames:  # renders from the original frame's camera reproduce each image
        original = unit.info.scene_transform.inverse().apply_c2w(f.c2w)
        assert float(np.abs(image_float(f.image) - render_gt(original, f.intrinsics)).max()) <= 0.5 / 255 + 1e-5


def test_camera_normalisation_fits_the_cameras_in_the_unit_cube(scene_dir, tmp_path):
    got = read_frames(scene_dir, normalize="cameras")
    centres = np.stack([f.c2w[:3, 3] for f in got.frames])
    assert np.abs(centres).max() == pytest.approx(1.0, abs=1e-5)
    # the cameras look at the middle of the scene, which becomes the origin
    np.testing.assert_allclose(got.info.scene_transform.apply_points([0, 0, -0.25]), 0, atol=1e-5)
    info = CaptureInfo.load(got.info.save(tmp_path / "capture.json"))
    np.testing.assert_allclose(info.scene_transform.matrix, got.info.scene_transform.matrix)
    assert info.format == "nerfstudio" and info.counts == {"train": 5, "val": 2, "test": 1}


def test_downscale_halves_images_and_intrinsics(scene_dir):
    full = read_frames(scene_dir, split="train").frames[0]
    half = read_frames(scene_dir, split="train", downscale=2).frames[0]
    assert half.image.shape == (12, 12, 3)
    assert half.intrinsics.fx == pytest.approx(full.intrinsics.fx / 2) and half.intrinsics.cx == 6
    box = image_float(full.image).reshape(12, 2, 12, 2, 3).mean(axis=(1, 3))
    assert np.abs(image_float(half.image) - box).max() <= 1 / 255 + 1e-6


@pytest.mark.parametrize("background", ["white", "black"])
def test_blender_layout_composites_rgba_on_the_background(tmp_path, background):
    g = generate_scene(tmp_path, n_train=2, n_val=1, n_test=1, size=24, layout="blender")
    assert detect_format(tmp_path) == "blender"
    got = read_frames(tmp_path, background=background)
    assert [f.split for f in got.frames] == ["train", "train", "val", "test"]
    assert got.info.format == "blender" and got.info.background == ((1.0,) * 3 if background == "white" else (0.0,) * 3)
    for f in got.frames:
        assert f.intrinsics == g.intrinsics
        assert _error(f, background=background) <= 1.0 / 255 + 1e-6


def test_blender_bad_input(tmp_path):
    generate_scene(tmp_path, n_train=2, n_val=1, n_test=1, size=16, layout="blender")
    (tmp_path / "train" / "r_1.png").unlink()
    got = read_frames(tmp_path)
    assert [(s.path.rsplit("/", 2)[-2:], s.reason) for s in got.report.skipped] == [
        (["train", "r_1.png"], "missing image")
    ]
    meta = json.loads((tmp_path / "transforms_val.json").read_text())
    del meta["camera_angle_x"]
    (tmp_path / "transforms_val.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="camera_angle_x"):
        plan_capture(tmp_path)
