"""COLMAP sparse models (text and binary), written with pycolmap itself, read back by our reader."""

from __future__ import annotations

import shutil

import numpy as np
import pycolmap
import pytest

from raylens_domains.multiview.colmap import find_model, write_colmap
from raylens_domains.multiview.frames import image_float
from raylens_domains.multiview.readers import detect_format, read_frames
from raylens_domains.multiview.scene import generate_scene, render_gt


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = generate_scene(tmp_path_factory.mktemp("ns"), n_train=5, n_val=0, n_test=1, size=24, seed=2).root
    return read_frames(root).frames


def _colmap_capture(frames, root, *, binary):
    """``root/images`` + ``root/sparse/0`` written by pycolmap, with the frames' images."""
    (root / "images").mkdir(parents=True)
    for i, f in enumerate(frames):
        shutil.copy(f.path, root / "images" / f"frame_{i:05d}.png")
    write_colmap(frames, root / "sparse" / "0", binary=binary)
    return root


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_poses_round_trip_through_a_pycolmap_model(scene, tmp_path, binary):
    root = _colmap_capture(scene, tmp_path, binary=binary)
    assert (root / "sparse/0" / ("cameras.bin" if binary else "cameras.txt")).is_file()
    assert detect_format(root) == "colmap" and find_model(root) == root / "sparse" / "0"
    got = read_frames(root, holdout_every=3)
    assert got.info.format == "colmap" and got.report.n_skipped == 0
    assert [f.split for f in got.frames] == ["test", "train", "train", "test", "train", "train"]
    for ours, back in zip(scene, got.frames):
        np.testing.assert_allclose(back.c2w, ours.c2w, atol=1e-5)
        assert back.intrinsics == ours.intrinsics
        assert float(np.abs(image_float(back.image) - render_gt(back.c2w, back.intrinsics)).max()) <= 0.5 / 255 + 1e-6


def test_our_poses_mean_what_colmap_means(scene, tmp_path):
    """Independent of our conversion: pycolmap's own projection of a scene point lands on the pixel
    whose ray (OpenGL c2w, pixel centres at +0.5) passes through that point."""
    write_colmap(scene, tmp_path, binary=False)
    rec = pycolmap.Reconstruction(str(tmp_path))
    point = np.array([-0.35, -0.3, -0.15])  # the red sphere's centre
    for f in scene:
        image = rec.find_image_with_name(f"frame_{f.frame_id:05d}.png")
        u, v = image.project_point(point)
        p = np.linalg.inv(f.c2w.astype(np.float64)) @ np.append(point, 1)
        k = f.intrinsics
        assert (u, v) == (
            pytest.approx(k.cx + k.fx * p[0] / -p[2], abs=1e-3),
            pytest.approx(k.cy - k.fy * p[1] / -p[2], abs=1e-3),
        )


def test_distortion_unsupported_models_unregistered_and_missing_images(scene, tmp_path):
    (tmp_path / "images").mkdir()
    rec = pycolmap.Reconstruction()
    k = scene[0].intrinsics
    opencv = pycolmap.Camera(
        model="OPENCV",
        width=k.width,
        height=k.height,
        params=[k.fx, k.fy, k.cx, k.cy, 0.01, 0.0, 0.0, 0.0],
        camera_id=1,
    )
    fisheye = pycolmap.Camera(
        model="OPENCV_FISHEYE", width=k.width, height=k.height, params=[k.fx, k.fy, k.cx, k.cy, 0, 0, 0, 0], camera_id=2
    )
    rec.add_camera_with_trivial_rig(opencv)
    rec.add_camera_with_trivial_rig(fisheye)
    flip = np.diag([1.0, -1.0, -1.0, 1.0])
    for i, f in enumerate(scene[:4]):
        w2c = np.linalg.inv(f.c2w.astype(np.float64) @ flip)
        name = f"im{i}.png"
        rec.add_image_with_trivial_frame(
            pycolmap.Image(name=name, camera_id=2 if i == 1 else 1, image_id=i + 1), pycolmap.Rigid3d(w2c[:3, :4])
        )
        if i != 2:
            shutil.copy(f.path, tmp_path / "images" / name)
    for xyz in ([-1, -1, -0.6], [1, 1, 0.4], [0, 0, 0]):
        rec.add_point3D(np.asarray(xyz, dtype=np.float64), pycolmap.Track())
    rec.write_binary(str(tmp_path))
    got = read_frames(tmp_path)
    reasons = {s.path.rsplit("/", 1)[-1]: s.reason for s in got.report.skipped}
    assert reasons == {"im1.png": "unsupported camera model (OPENCV_FISHEYE)", "im2.png": "missing image"}
    assert len(got.frames) == 2
    assert got.info.aabb is not None and (got.info.aabb[0] < [-0.9, -0.9, -0.5]).all()
    # the OPENCV camera's k1 was applied: the read image differs from the file, which had none
    assert not np.array_equal(got.frames[0].image, scene[0].image)

    only_fisheye = tmp_path / "fisheye"
    rec2 = pycolmap.Reconstruction()
    rec2.add_camera_with_trivial_rig(fisheye)
    rec2.add_image_with_trivial_frame(pycolmap.Image(name="a.png", camera_id=2, image_id=1), pycolmap.Rigid3d())
    only_fisheye.mkdir()
    rec2.write_text(str(only_fisheye))
    with pytest.raises(ValueError, match="OPENCV_FISHEYE.*not supported"):
        read_frames(only_fisheye)


def test_no_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a capture"):
        read_frames(tmp_path)
    with pytest.raises(FileNotFoundError, match="no COLMAP sparse model"):
        read_frames(tmp_path, format="colmap")
