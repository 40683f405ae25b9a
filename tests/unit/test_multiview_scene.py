"""The embedded multi-view scene: analytic tracing, exact renders and the capture it writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from raylens_domains.multiview.cameras import Intrinsics, look_at
from raylens_domains.multiview.frames import image_float
from raylens_domains.multiview.scene import (
    DEFAULT_SCENE,
    Box,
    Scene,
    Sphere,
    background_rgb,
    generate_scene,
    render_gt,
    trace,
)


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    return generate_scene(tmp_path_factory.mktemp("scene"), n_train=6, n_val=2, n_test=2, size=32, seed=3)


def test_trace_hits_a_sphere_at_the_analytic_distance():
    sphere = DEFAULT_SCENE.objects[1]
    assert isinstance(sphere, Sphere)
    c = np.asarray(sphere.center)
    origin = c + np.array([0.0, -3.0, 0.0])
    out = trace(origin[None], np.array([[0.0, 1.0, 0.0]]))
    assert out["alpha"][0] == 1.0
    assert out["depth"][0] == pytest.approx(3.0 - sphere.radius, abs=1e-5)
    miss = trace(np.array([[0.0, 0.0, 5.0]]), np.array([[0.0, 0.0, 1.0]]), background="black")
    assert miss["alpha"][0] == 0 and np.isinf(miss["depth"][0]) and miss["rgb"][0].tolist() == [0, 0, 0]


def test_rotated_box_is_hit_on_its_turned_face():
    box = Box((0.0, 0.0, 0.0), (0.5, 0.1, 0.5), ((1, 0, 0), (0, 0, 1)), yaw_deg=90.0)
    scene = Scene((box,), shadows=False)
    # turned by 90 degrees, the box is 1.0 long along y and 0.2 along x
    along_y = trace(np.array([[0.0, -3.0, 0.0]]), np.array([[0.0, 1.0, 0.0]]), scene)
    along_x = trace(np.array([[-3.0, 0.0, 0.0]]), np.array([[1.0, 0.0, 0.0]]), scene)
    assert along_y["depth"][0] == pytest.approx(2.5, abs=1e-6)
    assert along_x["depth"][0] == pytest.approx(2.9, abs=1e-6)


def test_shading_is_lambert_plus_ambient_and_shadows_darken():
    scene = Scene((Sphere((0, 0, 0), 0.5, ((0.8, 0.8, 0.8), (0.8, 0.8, 0.8))),), light_dir=(0, 0, 1), ambient=0.25)
    top = trace(np.array([[0.0, 0.0, 3.0]]), np.array([[0.0, 0.0, -1.0]]), scene)["rgb"][0]
    side = trace(np.array([[3.0, 0.0, 0.0]]), np.array([[-1.0, 0.0, 0.0]]), scene)["rgb"][0]
    np.testing.assert_allclose(top, 0.8, atol=1e-6)  # facing the light: full albedo
    np.testing.assert_allclose(side, 0.8 * 0.25, atol=1e-6)  # 90 degrees from the light: ambient only
    # the slab under the default scene's red sphere is in its shadow on one side
    lit = Scene(DEFAULT_SCENE.objects, shadows=False)
    k = Intrinsics.from_fov(0.69, 48, 48)
    c2w = look_at((0, -3.5, 2.5), (0, 0, -0.25))
    assert render_gt(c2w, k).mean() < render_gt(c2w, k, scene=lit).mean()


def test_render_gt_is_deterministic_and_supersampling_only_softens_edges():
    k = Intrinsics.from_fov(0.69, 40, 40)
    c2w = look_at((2.5, -2.5, 2.0), (0, 0, -0.25))
    a, b = render_gt(c2w, k), render_gt(c2w, k)
    assert a.shape == (40, 40, 3) and a.dtype == np.float32 and np.array_equal(a, b)
    assert 0.0 <= a.min() and a.max() <= 1.0
    soft = render_gt(c2w, k, supersample=3)
    assert np.abs(soft - a).mean() < 0.05 and not np.array_equal(soft, a)
    with pytest.raises(ValueError, match="supersample"):
        render_gt(c2w, k, supersample=0)


def test_scene_validation_names_the_field():
    with pytest.raises(ValueError, match="aabb"):
        Scene((Sphere((0.9, 0, 0), 0.5, ((1, 0, 0), (0, 1, 0))),))
    with pytest.raises(ValueError, match="Sphere.radius"):
        Sphere((0, 0, 0), -1, ((1, 0, 0), (0, 1, 0)))
    with pytest.raises(ValueError, match="Box.texture"):
        Box((0, 0, 0), (1, 1, 1), ((1, 0, 0), (0, 1, 0)), texture="dots")
    with pytest.raises(ValueError, match="background"):
        background_rgb("grey")


def test_generated_capture_matches_the_exact_renderer(capture):
    meta = json.loads(capture.files[0].read_text())
    assert len(meta["frames"]) == 10
    assert (len(meta["train_filenames"]), len(meta["val_filenames"]), len(meta["test_filenames"])) == (6, 2, 2)
    assert meta["raylens"]["aabb"] == [[-1, -1, -1], [1, 1, 1]]
    k = capture.intrinsics
    assert (meta["w"], meta["h"], meta["fl_x"]) == (32, 32, pytest.approx(k.fx))
    for entry in meta["frames"][:4]:
        png = np.asarray(Image.open(capture.root / entry["file_path"]))
        gt = render_gt(np.asarray(entry["transform_matrix"]), k)
        assert np.abs(image_float(png) - gt).max() <= 0.5 / 255 + 1e-6  # only the 8-bit rounding
        # every view sees the scene and some background
        fg = (np.abs(gt - 1.0) > 1e-6).any(-1).mean()
        assert 0.1 < fg < 0.95
        # cameras sit on the upper hemisphere, looking at the scene
        c2w = np.asarray(entry["transform_matrix"])
        assert c2w[2, 3] > 0 and c2w[:3, 2] @ (c2w[:3, 3] - [0, 0, -0.25]) > 0


def test_same_seed_same_capture_other_seed_other_views(tmp_path, capture):
    again = generate_scene(tmp_path / "a", n_train=6, n_val=2, n_test=2, size=32, seed=3)
    other = generate_scene(tmp_path / "b", n_train=6, n_val=2, n_test=2, size=32, seed=4)
    m0, m1, m2 = (json.loads(g.files[0].read_text()) for g in (capture, again, other))
    assert m0["frames"] == m1["frames"] and m0["frames"] != m2["frames"]
    a = np.asarray(Image.open(capture.root / "images/frame_00000.png"))
    b = np.asarray(Image.open(again.root / "images/frame_00000.png"))
    assert np.array_equal(a, b)


def test_blender_layout_stores_alpha_and_straight_colour(tmp_path):
    g = generate_scene(tmp_path, n_train=2, n_val=1, n_test=1, size=24, layout="blender")
    assert sorted(p.name for p in g.files) == ["transforms_test.json", "transforms_train.json", "transforms_val.json"]
    meta = json.loads((tmp_path / "transforms_train.json").read_text())
    assert meta["camera_angle_x"] == pytest.approx(g.intrinsics.camera_angle_x)
    rgba = np.asarray(Image.open(tmp_path / (meta["frames"][0]["file_path"] + ".png")))
    assert rgba.shape == (24, 24, 4)
    alpha = trace(*(a.reshape(-1, 3) for a in _rays(meta["frames"][0]["transform_matrix"], g.intrinsics)))["alpha"]
    np.testing.assert_array_equal(rgba[..., 3].reshape(-1) > 0, alpha > 0)


def _rays(c2w, k):
    from raylens_domains.multiview.rays import camera_rays

    return camera_rays(np.asarray(c2w), k)


def test_generate_scene_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_train"):
        generate_scene(tmp_path, n_train=0)
    with pytest.raises(ValueError, match="layout"):
        generate_scene(tmp_path, n_train=1, layout="llff")
    with pytest.raises(ValueError, match="size"):
        generate_scene(tmp_path, n_train=1, size=2)
