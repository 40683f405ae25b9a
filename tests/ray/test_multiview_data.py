"""The multiview pack's data on a local Ray: the frames reader with its report, the source registry,
and the streaming shuffled rays dataset."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from raylens.data import ReadResult, open_source
from raylens_domains.multiview.frames import image_float
from raylens_domains.multiview.scene import generate_scene, render_gt

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    return generate_scene(tmp_path_factory.mktemp("mv"), n_train=6, n_val=1, n_test=1, size=16, seed=7).root


def test_frames_dataset_and_report_of_bad_frames(ray_session, capture, tmp_path):
    from raylens_domains.multiview.ray_reader import read_capture

    root = shutil.copytree(capture, tmp_path / "cap")
    meta = json.loads((root / "transforms.json").read_text())
    (root / meta["frames"][0]["file_path"]).unlink()
    meta["frames"][1]["transform_matrix"][2][3] = float("nan")
    Image.new("RGB", (12, 16)).save(root / meta["frames"][2]["file_path"])
    (root / "transforms.json").write_text(json.dumps(meta))

    result = read_capture(root, normalize="auto")
    assert isinstance(result, ReadResult) and result.name == str(root)
    rows = sorted(result.dataset.take_all(), key=lambda r: r["frame_id"])
    assert [int(r["frame_id"]) for r in rows] == [3, 4, 5, 6, 7]
    assert [str(r["split"]) for r in rows] == ["train"] * 3 + ["val", "test"]
    row = rows[0]
    assert row["image"].shape == (16, 16, 3) and row["image"].dtype == np.uint8
    assert row["c2w"].shape == (4, 4) and row["c2w"].dtype == np.float32
    assert (int(row["width"]), int(row["height"])) == (16, 16)
    k = result.capture.scene_transform
    original = k.inverse().apply_c2w(row["c2w"])
    from raylens_domains.multiview.cameras import Intrinsics

    intr = Intrinsics(*(float(row[c]) for c in ("fx", "fy", "cx", "cy")), 16, 16)
    assert np.abs(image_float(row["image"]) - render_gt(original, intr)).max() <= 0.5 / 255 + 1e-5

    report = result.report()
    reasons = sorted(s.reason.split(" (")[0] for s in report.skipped)
    assert report.n_ok == 5 and reasons == ["bad pose", "image size mismatch", "missing image"]
    assert result.stats == {"planned_train": 4, "planned_val": 1, "planned_test": 1}  # two were skipped while planning


def test_open_source_dispatches_captures_to_the_multiview_reader(ray_session, capture, tmp_path):
    from raylens_domains.multiview.ray_reader import CaptureReadResult

    by_path = open_source(str(capture), split="val")
    by_kind = open_source(f"multiview:{capture / 'transforms.json'}", downscale=2)
    assert isinstance(by_path, CaptureReadResult) and isinstance(by_kind, CaptureReadResult)
    assert by_path.dataset.count() == 1
    assert by_kind.dataset.take(1)[0]["image"].shape == (8, 8, 3)
    with pytest.raises(TypeError, match="no preprocess"):
        open_source(str(capture), preprocess=lambda x: x)
    root = shutil.copytree(capture, tmp_path / "cap")
    meta = json.loads((root / "transforms.json").read_text())
    meta["train_filenames"] += meta["test_filenames"]
    meta["test_filenames"] = []
    (root / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="split 'test' is empty"):
        open_source(str(root), split="test")


@pytest.mark.parametrize("shuffle", ["block", "global", None])
def test_rays_dataset_has_every_train_pixel_once(ray_session, capture, shuffle):
    from raylens_domains.multiview.ray_rays import rays_dataset
    from raylens_domains.multiview.ray_reader import read_capture
    from raylens_domains.multiview.readers import read_frames

    frames = {f.frame_id: f for f in read_frames(capture, split="train").frames}
    result = read_capture(capture)
    rays = rays_dataset(result, split="train", shuffle=shuffle, seed=0, frames_per_task=2)
    batch = rays.take_batch(10_000)
    assert result.report().n_ok == 6  # the split was chosen before decoding: no val/test image was loaded
    n = len(batch["rgb"])
    assert n == 6 * 16 * 16
    keys = batch["frame_id"].astype(np.int64) * 1000 + batch["pixel_id"]
    assert len(np.unique(keys)) == n and set(np.unique(batch["frame_id"]).tolist()) == set(frames)
    np.testing.assert_allclose(np.linalg.norm(batch["directions"], axis=1), 1.0, atol=1e-5)
    for i in range(0, n, 97):  # each ray carries its own pixel's colour and camera centre
        f = frames[int(batch["frame_id"][i])]
        v, u = divmod(int(batch["pixel_id"][i]), 16)
        np.testing.assert_allclose(batch["rgb"][i], f.image[v, u] / 255.0, atol=1e-6)
        np.testing.assert_allclose(batch["origins"][i], f.c2w[:3, 3], atol=1e-6)
    in_order = bool((np.diff(keys) > 0).all())
    assert in_order == (shuffle is None)


def test_frames_of_different_sizes_stream_through_ray(ray_session, tmp_path):
    from raylens_domains.multiview.cameras import Intrinsics, look_at
    from raylens_domains.multiview.frames import Frame
    from raylens_domains.multiview.ray_rays import rays_dataset
    from raylens_domains.multiview.ray_reader import read_capture
    from raylens_domains.multiview.writer import write_transforms

    frames = [
        Frame(render_gt(look_at((3, 0, 1)), k), look_at((3, 0, 1)), k, "train")
        for k in (Intrinsics.from_fov(0.7, 12, 10), Intrinsics.from_fov(0.7, 8, 8), Intrinsics.from_fov(0.7, 12, 10))
    ]
    write_transforms(frames, tmp_path)
    result = read_capture(tmp_path, frames_per_task=3)
    shapes = sorted(r["image"].shape for r in result.dataset.take_all())
    assert shapes == [(8, 8, 3), (10, 12, 3), (10, 12, 3)]
    assert rays_dataset(result, frames_per_task=3, seed=1).count() == 120 + 64 + 120
