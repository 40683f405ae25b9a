"""The NeRF loop on LocalContext: a few steps reduce the loss for both models, checkpoints are the
one format (load_model renders the same image), a second call resumes where the first stopped."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from raylens.models import load_model, read_checkpoint
from raylens.train.context import LocalContext
from raylens_domains.multiview.rays import frames_to_rays
from raylens_domains.multiview.readers import read_frames
from raylens_domains.multiview.scene import generate_scene
from raylens_domains.multiview.train import (
    PSNR_CURVE_PNG,
    NerfTrainConfig,
    eval_views_from_frames,
    random_ray_batches,
    scene_record,
    train_nerf,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {
    "nerf-fast": {"resolution": 24, "start_resolution": 16, "upsample_steps": [6], "features": 6, "hidden": 16},
    "nerf-vanilla": {"width": 32, "depth": 2, "n_coarse": 16, "n_fine": 8, "pos_freqs": 6, "dir_freqs": 2},
}


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    root = tmp_path_factory.mktemp("nerf") / "scene"
    generate_scene(root, n_train=8, n_val=0, n_test=2, size=24, seed=1)
    train = read_frames(root, split="train")
    test = read_frames(root, split="test")
    c2ws = np.stack([f.c2w for f in train.frames])
    return {
        "root": root,
        "rays": frames_to_rays(train.frames),
        "views": eval_views_from_frames(test.frames),
        "scene": scene_record(train.info, c2ws, train.frames[0].intrinsics, source=str(root)),
    }


def _cfg(model: str, steps: int, **kw) -> NerfTrainConfig:
    return NerfTrainConfig(
        model=model, model_args=dict(TINY[model]), max_steps=steps, batch_rays=256, log_every=4, eval_every=0, **kw
    )


@pytest.mark.parametrize("model", ["nerf-fast", "nerf-vanilla"])
def test_a_few_steps_reduce_the_loss(capture, model, tmp_path):
    torch.manual_seed(0)
    ctx = LocalContext(storage=tmp_path, device="cpu")
    result = train_nerf(
        _cfg(model, 24), ctx, random_ray_batches(capture["rays"], 256), capture["views"], scene=capture["scene"]
    )
    losses = [h["loss"] for h in result.history]
    assert result.steps == 24 and len(losses) == 6
    assert losses[-1] < 0.7 * losses[0], losses
    last = result.history[-1]
    assert 0 < last["val_ssim"] <= 1 and last["val_psnr"] > 8 and last["rays_per_s"] > 0


def test_checkpoint_is_the_one_format_and_loads_back(capture, tmp_path):
    ctx = LocalContext(storage=tmp_path, device="cpu")
    result = train_nerf(
        _cfg("nerf-fast", 10), ctx, random_ray_batches(capture["rays"], 256), capture["views"], scene=capture["scene"]
    )
    ck = read_checkpoint(result.checkpoint)
    assert (ck.kind, ck.arch) == ("nerf", "nerf-fast")
    assert ck.config["step"] == 10 and ck.config["train"]["max_steps"] == 10
    assert ck.config["scene"]["scene_transform"]["matrix"] and ck.config["scene"]["views"]["radius"] > 1
    assert ck.model_config["aabb"] == [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0] and ck.model_config["background"] == [1.0] * 3
    for name in ("train_state.pt", "history.json", "curves.png", PSNR_CURVE_PNG):
        assert (result.checkpoint / name).is_file(), name
    model = load_model(result.checkpoint)
    assert model.resolution == 24  # the upsampled grids come back at their trained size
    v = capture["views"][0]
    o, d = torch.from_numpy(v.origins), torch.from_numpy(v.directions)
    again = load_model(result.checkpoint).render_chunked(o, d).rgb
    torch.testing.assert_close(model.render_chunked(o, d).rgb, again)


def test_a_second_call_resumes_at_the_saved_step(capture, tmp_path):
    ctx = LocalContext(storage=tmp_path, device="cpu")
    batches = random_ray_batches(capture["rays"], 256)
    first = train_nerf(_cfg("nerf-fast", 8, checkpoint_every=4), ctx, batches, scene=capture["scene"])
    assert first.steps == 8
    second = train_nerf(_cfg("nerf-fast", 12), ctx, batches, scene=capture["scene"])
    assert second.steps == 12
    steps = [h["step"] for h in second.history]
    assert steps == sorted(steps) and steps[-1] == 12 and 8 in steps  # the history went on from step 8
    state = torch.load(second.checkpoint / "train_state.pt", weights_only=True)
    # the grids' Adam state went on through the upsampling at step 6 and the resume at step 8
    assert state["step"] == 12 and int(state["optimizer"]["grid"]["state"][0]["t"].max()) > 8
    assert json.loads((second.checkpoint / "history.json").read_text())[-1]["step"] == 12


def test_the_learning_rate_decays_over_lr_decay_steps_then_holds(capture, tmp_path):
    ctx = LocalContext(storage=tmp_path, device="cpu")
    cfg = _cfg("nerf-fast", 16, lr_decay_steps=8, lr_final_ratio=0.1)
    result = train_nerf(cfg, ctx, random_ray_batches(capture["rays"], 256), scene=capture["scene"])
    lrs = {h["step"]: h["lr"] for h in result.history}  # the lr of the step just taken
    assert lrs[4] == pytest.approx(cfg.lr * 0.1 ** (3 / 8))
    assert lrs[12] == lrs[16] == pytest.approx(cfg.lr * 0.1)
    whole_run = train_nerf(
        _cfg("nerf-fast", 16),
        LocalContext(storage=tmp_path / "b", device="cpu"),
        random_ray_batches(capture["rays"], 256),
        scene=capture["scene"],
    )
    assert whole_run.history[-2]["lr"] > cfg.lr * 0.1  # without it the decay spans all 16 steps


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="batch_rays"):
        NerfTrainConfig(batch_rays=0)
    with pytest.raises(ValueError, match="lr_final_ratio"):
        NerfTrainConfig(lr_final_ratio=0)
    with pytest.raises(ValueError, match="lr_decay_steps"):
        NerfTrainConfig(lr_decay_steps=-1)
    with pytest.raises(ValueError, match="clip"):
        from raylens_domains.multiview.train import build_nerf

        build_nerf(NerfTrainConfig(model="clip-tiny"), None, "cpu")


def test_the_fast_grid_is_sized_from_the_images_unless_given():
    from raylens_domains.multiview.train import build_nerf

    scene = {"aabb": [-1, -1, -1, 1, 1, 1], "background": [1, 1, 1], "views": {"width": 100, "height": 80}}
    assert build_nerf(NerfTrainConfig(), scene, "cpu").config["resolution"] == 64
    scene["views"] = {"width": 300, "height": 400}
    assert build_nerf(NerfTrainConfig(), scene, "cpu").config["resolution"] == 256
    given = NerfTrainConfig(model_args={"resolution": 40, "start_resolution": 20})
    assert build_nerf(given, scene, "cpu").config["resolution"] == 40
