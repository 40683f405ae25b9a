"""Multi-view geometry: intrinsics, look-at poses, pose checks, scene transforms, rays, undistortion."""

from __future__ import annotations

import numpy as np
import pytest

from raylens_domains.multiview.cameras import (
    Intrinsics,
    SceneTransform,
    hemisphere_poses,
    look_at,
    orbit_poses,
    pose_problem,
)
from raylens_domains.multiview.frames import Frame, batch_to_frames, frames_to_batch
from raylens_domains.multiview.rays import camera_rays, frame_rays, frames_to_rays
from raylens_domains.multiview.undistort import Distortion, undistort_image


def _rot(axis, deg):
    a = np.radians(deg)
    c, s = np.cos(a), np.sin(a)
    x, y, z = np.asarray(axis, float) / np.linalg.norm(axis)
    return np.array(
        [
            [c + x * x * (1 - c), x * y * (1 - c) - z * s, x * z * (1 - c) + y * s],
            [y * x * (1 - c) + z * s, c + y * y * (1 - c), y * z * (1 - c) - x * s],
            [z * x * (1 - c) - y * s, z * y * (1 - c) + x * s, c + z * z * (1 - c)],
        ]
    )


def _project(c2w, k: Intrinsics, point):
    """Pixel (u, v) of a world point, straight from the OpenGL convention (independent of rays.py)."""
    p = np.linalg.inv(c2w) @ np.append(point, 1.0)
    x, y, z = p[:3]
    assert z < 0, "the point must be in front of the camera (-z)"
    return k.fx * x / -z + k.cx, k.cy - k.fy * y / -z


def test_intrinsics_validate_scale_and_fov():
    k = Intrinsics.from_fov(np.pi / 2, 100, 80)
    assert k.fx == pytest.approx(50.0) and (k.cx, k.cy) == (50.0, 40.0)
    assert k.camera_angle_x == pytest.approx(np.pi / 2)
    half = k.scaled(2)
    assert (half.width, half.height, half.fx, half.cx) == (50, 40, pytest.approx(25.0), 25.0)
    np.testing.assert_allclose(k.K, [[50, 0, 50], [0, 50, 40], [0, 0, 1]])
    with pytest.raises(ValueError, match="Intrinsics.fx"):
        Intrinsics(0, 1, 0, 0, 4, 4)
    with pytest.raises(ValueError, match="Intrinsics.width"):
        Intrinsics(1, 1, 0, 0, 4.5, 4)
    with pytest.raises(ValueError, match="camera_angle_x"):
        Intrinsics.from_fov(4.0, 10, 10)


def test_look_at_follows_the_opengl_convention():
    c2w = look_at((3.0, -2.0, 1.5), (0.2, 0.1, -0.3))
    r = c2w[:3, :3]
    np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-6)
    assert np.linalg.det(r) == pytest.approx(1.0, abs=1e-6)
    k = Intrinsics(40, 40, 16, 12, 32, 24)
    u, v = _project(c2w, k, (0.2, 0.1, -0.3))
    assert (u, v) == (pytest.approx(16), pytest.approx(12))  # the target is at the principal point
    assert c2w[:3, 1] @ [0, 0, 1] > 0  # image up is world up
    u_up, v_up = _project(c2w, k, (0.2, 0.1, 0.0))
    assert v_up < 12  # a point above the target appears higher in the image (smaller row)
    with pytest.raises(ValueError, match="same point"):
        look_at((1, 1, 1), (1, 1, 1))
    with pytest.raises(ValueError, match="parallel"):
        look_at((0, 0, 3), (0, 0, 0))


def test_orbit_and_hemisphere_poses():
    ring = orbit_poses(8, radius=2.0, elevation_deg=30)
    assert ring.shape == (8, 4, 4)
    np.testing.assert_allclose(np.linalg.norm(ring[:, :3, 3], axis=1), 2.0, atol=1e-5)
    np.testing.assert_allclose(ring[:, 2, 3], 1.0, atol=1e-5)
    dome = hemisphere_poses(50, np.random.default_rng(0), radius=3.0)
    el = np.degrees(np.arcsin(dome[:, 2, 3] / 3.0))
    assert el.min() >= 10 - 1e-3 and el.max() <= 70 + 1e-3


@pytest.mark.parametrize(
    "matrix, reason",
    [
        (np.full((4, 4), np.nan), "NaN"),
        (np.diag([1.0, 1.0, 0.0, 1.0]), "non-invertible"),
        (np.vstack([np.eye(4)[:3], [1, 0, 0, 1]]), "bottom row"),
        (np.eye(3), "3x4 or 4x4"),
    ],
)
def test_pose_problem_names_what_is_wrong(matrix, reason):
    assert reason in pose_problem(matrix)


def test_pose_problem_accepts_3x4_and_4x4():
    assert pose_problem(np.eye(4)) is None and pose_problem(np.eye(4)[:3]) is None


def test_scene_transform_composes_inverts_and_keeps_poses_orthonormal(tmp_path):
    t = SceneTransform.from_parts(scale=0.25, rotation=_rot((1, 2, 3), 40), translation=(1, -2, 0.5))
    assert t.scale == pytest.approx(0.25)
    p = np.random.default_rng(0).normal(size=(5, 3))
    np.testing.assert_allclose(t.inverse().apply_points(t.apply_points(p)), p, atol=1e-12)
    np.testing.assert_allclose((t @ t.inverse()).matrix, np.eye(4), atol=1e-12)
    c2w = look_at((3, 1, 2))
    moved = t.apply_c2w(c2w)
    np.testing.assert_allclose(moved[:3, :3].T @ moved[:3, :3], np.eye(3), atol=1e-5)
    np.testing.assert_allclose(moved[:3, 3], t.apply_points(c2w[:3, 3]), atol=1e-5)
    back = SceneTransform.load(t.save(tmp_path / "t.json"))
    np.testing.assert_allclose(back.matrix, t.matrix)
    with pytest.raises(ValueError, match="similarity"):
        SceneTransform(np.diag([1.0, 2.0, 1.0, 1.0]))


def test_camera_rays_pass_through_projected_points():
    k = Intrinsics(30, 32, 15.5, 11.0, 31, 23)
    c2w = look_at((2.0, -3.0, 1.0), (0, 0, 0))
    o, d = camera_rays(c2w, k)
    assert o.shape == d.shape == (23, 31, 3)
    np.testing.assert_allclose(np.linalg.norm(d, axis=-1), 1.0, atol=1e-6)
    # the ray of pixel (u, v) goes through a point that projects to (u + 0.5, v + 0.5)
    for u, v in [(0, 0), (30, 22), (7, 13)]:
        point = o[v, u] + 2.7 * d[v, u]
        pu, pv = _project(c2w, k, point)
        assert (pu, pv) == (pytest.approx(u + 0.5, abs=1e-4), pytest.approx(v + 0.5, abs=1e-4))


def test_frame_rows_batches_and_rays():
    k = Intrinsics(5, 5, 3, 2, 6, 4)
    img = np.arange(72, dtype=np.uint8).reshape(4, 6, 3)
    frames = [Frame(img, look_at((0, -3, 1)), k, "train", "a.png", 7), Frame(img, look_at((3, 0, 1)), k, "val", "", 8)]
    batch = frames_to_batch(frames)
    assert batch["image"].shape == (2, 4, 6, 3) and batch["split"].tolist() == ["train", "val"]
    back = batch_to_frames(batch)
    assert [f.frame_id for f in back] == [7, 8] and np.array_equal(back[0].image, img)
    r = frame_rays(frames[0])
    assert r["rgb"].dtype == np.float32 and r["pixel_id"].tolist() == list(range(24))
    np.testing.assert_allclose(r["rgb"][6 * 2 + 5], img[2, 5] / 255.0)  # pixel id = v * width + u
    all_rays = frames_to_rays(frames)
    assert all_rays["frame_id"].tolist() == [7] * 24 + [8] * 24
    with pytest.raises(ValueError, match="intrinsics say"):
        Frame(img, np.eye(4), Intrinsics(5, 5, 3, 2, 8, 4))
    with pytest.raises(ValueError, match="Frame.c2w"):
        Frame(img, np.full((4, 4), np.nan), k)
    with pytest.raises(ValueError, match="Frame.split"):
        Frame(img, np.eye(4), k, "holdout")


def test_distortion_round_trips_and_undistort_image_inverts_it():
    d = Distortion(k1=-0.12, k2=0.03, p1=0.002, p2=-0.001)
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-0.5, 0.5, 100), rng.uniform(-0.4, 0.4, 100)
    xu, yu = d.undistort_points(*d.distort(x, y))
    np.testing.assert_allclose(xu, x, atol=1e-9)
    np.testing.assert_allclose(yu, y, atol=1e-9)
    # a smooth pattern, distorted by sampling it where the lens sends each pixel, comes back
    k = Intrinsics(60, 60, 32, 24, 64, 48)
    pattern = lambda px, py: np.stack([np.sin(px / 5.0), np.cos(py / 7.0), np.sin((px + py) / 9.0)], -1) * 0.5 + 0.5
    u, v = np.meshgrid(np.arange(64) + 0.5, np.arange(48) + 0.5)
    xu, yu = d.undistort_points((u - k.cx) / k.fx, (v - k.cy) / k.fy)
    distorted = pattern(xu * k.fx + k.cx, yu * k.fy + k.cy)
    fixed = undistort_image(distorted, k, d)
    truth = pattern(u, v)
    inner = (slice(6, -6), slice(6, -6))
    assert np.abs(fixed[inner] - truth[inner]).max() < 0.01
    assert np.abs(distorted[inner] - truth[inner]).max() > 0.05  # the distortion was real
    assert undistort_image(distorted, k, Distortion()) is distorted
    assert undistort_image((distorted * 255).astype(np.uint8), k, d).dtype == np.uint8
    with pytest.raises(ValueError, match="Distortion.k1"):
        Distortion(k1=float("nan"))
