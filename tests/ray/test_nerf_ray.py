"""NeRF on Ray: a capture read with Ray Data, rays streamed to 2 Ray Train workers whose gradients
are averaged every step, a checkpoint in the one format, and a second run that resumes; then
`raylens train nerf` end to end on tiny settings."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TINY = {"resolution": 20, "start_resolution": 12, "upsample_steps": [4], "features": 4, "hidden": 8}


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    from raylens_domains.multiview.scene import generate_scene

    root = tmp_path_factory.mktemp("nerf-ray") / "scene"
    generate_scene(root, n_train=8, n_val=0, n_test=2, size=16, seed=3)
    return root


def test_two_workers_train_checkpoint_and_resume(ray_session, capture, tmp_path):
    from raylens.models import load_model, read_checkpoint
    from raylens.train.options import RayTrainOptions
    from raylens_domains.multiview.ray_train import fit_nerf
    from raylens_domains.multiview.train import NerfTrainConfig

    opts = RayTrainOptions(num_workers=2, storage_path=str(tmp_path), name="nerf-resume", num_to_keep=None)

    def cfg(steps):
        return NerfTrainConfig(model_args=TINY, max_steps=steps, batch_rays=128, log_every=2, checkpoint_every=3)

    first = fit_nerf(capture, cfg(6), opts, progress=False)
    assert first.steps == 6 and first.checkpoint is not None
    ck = read_checkpoint(first.checkpoint)
    assert (ck.kind, ck.arch, ck.config["run"]["num_workers"]) == ("nerf", "nerf-fast", 2)
    assert ck.config["scene"]["format"] == "nerfstudio" and ck.config["scene"]["views"]["width"] == 16
    last = first.history[-1]
    assert last["val_psnr"] > 5 and 0 < last["val_ssim"] <= 1  # held-out views scored on rank 0
    assert last["rays_per_s"] > 0 and [h["step"] for h in first.history] == [2, 3, 4, 6]  # logs + checkpoints

    second = fit_nerf(capture, cfg(10), opts, progress=False)
    assert second.steps == 10
    steps = [h["step"] for h in second.history]
    assert steps == [2, 3, 4, 6, 8, 9, 10]  # the first run's history, then steps 8, 9 (checkpoint) and 10
    model = load_model(second.checkpoint)
    assert model.resolution == 20


def test_raylens_train_nerf_on_tiny_settings(ray_session, capture, tmp_path):
    from raylens.cli import app

    workdir = tmp_path / "out"
    r = CliRunner().invoke(
        app,
        [
            "train",
            "nerf",
            str(capture),
            "--steps",
            "4",
            "--batch-rays",
            "128",
            "--log-every",
            "2",
            "--workers",
            "2",
            "--storage",
            str(tmp_path / "runs"),
            "--name",
            "cli",
            "--model-arg",
            "resolution=12",
            "--model-arg",
            "start_resolution=12",
            "--model-arg",
            "hidden=8",
            "--workdir",
            str(workdir),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "held-out PSNR" in r.output and "checkpoint " in r.output
    for name in ("test_views.png", "curves.png", "psnr_vs_time.png", "history.csv"):
        assert (workdir / name).is_file(), name
    assert any(p.stem == "turntable" for p in workdir.iterdir())


def test_a_missing_capture_is_a_clear_error(ray_session, tmp_path):
    from raylens_domains.multiview.ray_train import fit_nerf

    with pytest.raises(FileNotFoundError, match="does not exist"):
        fit_nerf(tmp_path / "nowhere")
