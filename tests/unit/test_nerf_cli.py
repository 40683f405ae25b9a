"""The pack's commands on tiny settings, without Ray: `raylens render` (pose, look-at, turntable) on a
small trained checkpoint, `raylens train nerf --dry-run`, and the nerfstudio backend's job."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from raylens.cli import app
from raylens.train.context import LocalContext
from raylens_domains.multiview.nerf_backend import build_nerfstudio_job
from raylens_domains.multiview.rays import frames_to_rays
from raylens_domains.multiview.readers import read_frames
from raylens_domains.multiview.scene import generate_scene
from raylens_domains.multiview.train import NerfTrainConfig, random_ray_batches, scene_record, train_nerf

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    capture = root / "scene"
    generate_scene(capture, n_train=6, n_val=0, n_test=1, size=16, seed=2)
    got = read_frames(capture, split="train")
    scene = scene_record(got.info, np.stack([f.c2w for f in got.frames]), got.frames[0].intrinsics, str(capture))
    cfg = NerfTrainConfig(
        model_args={"resolution": 16, "start_resolution": 16, "features": 4, "hidden": 8}, max_steps=4, batch_rays=128
    )
    torch.manual_seed(0)
    result = train_nerf(
        cfg,
        LocalContext(storage=root / "runs", device="cpu"),
        random_ray_batches(frames_to_rays(got.frames), 128),
        scene=scene,
    )
    return {"capture": capture, "checkpoint": result.checkpoint, "root": root}


def test_render_a_pose_and_a_look_at_camera(trained, tmp_path):
    ck = str(trained["checkpoint"])
    out = tmp_path / "pose.png"
    pose = "1 0 0 0  0 0 -1 -3.5  0 1 0 0.5  0 0 0 1"  # looking along +y from (0, -3.5, 0.5)
    r = runner.invoke(app, ["render", ck, "--pose", pose, "--width", "20", "--height", "12", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert Image.open(out).size == (20, 12)
    out2 = tmp_path / "look.png"
    r = runner.invoke(app, ["render", ck, "--look-at", "0,-4,2", "0,0,-0.25", "--out", str(out2)])
    assert r.exit_code == 0, r.output
    assert Image.open(out2).size == (16, 16)  # the training views' size by default


def test_render_a_turntable_video(trained, tmp_path):
    r = runner.invoke(
        app,
        [
            "render",
            str(trained["checkpoint"]),
            "--turntable",
            "--frames",
            "6",
            "--width",
            "16",
            "--out",
            str(tmp_path / "t.mp4"),
        ],
    )
    assert r.exit_code == 0, r.output
    written = [p for p in tmp_path.iterdir() if p.stem == "t"]
    assert written and written[0].stat().st_size > 0 and written[0].suffix in (".mp4", ".gif")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "exactly one of"),
        (["--pose", "1 2 3"], "16 numbers"),
        (["--pose", "0 0 0 0  0 0 0 0  0 0 0 0  0 0 0 1"], "pose"),
        (["--look-at", "0,0,1", "0,0,1"], "same point"),
        (["--turntable", "--frames", "0"], "frames"),
    ],
)
def test_render_refuses_bad_cameras_with_a_clear_message(trained, args, message):
    r = runner.invoke(app, ["render", str(trained["checkpoint"]), *args])
    assert r.exit_code != 0
    assert message in r.output


def test_render_refuses_a_checkpoint_of_another_kind(tmp_path):
    from raylens.models import create_model, save_model

    save_model(create_model("timm/test_resnet", num_classes=2), tmp_path / "cls")
    r = runner.invoke(app, ["render", str(tmp_path / "cls"), "--turntable"])
    assert r.exit_code != 0 and "not a NeRF" in str(r.exception)


def test_train_nerf_dry_run_shows_the_resolved_config(trained):
    r = runner.invoke(
        app, ["train", "nerf", str(trained["capture"]), "--steps", "50", "--model", "nerf-vanilla", "--dry-run"]
    )
    assert r.exit_code == 0, r.output
    assert "max_steps: 50" in r.output and "model: nerf-vanilla" in r.output and "num_workers: 2" in r.output


def test_nerfstudio_job_entrypoint_and_runtime_env(trained):
    job = build_nerfstudio_job(trained["capture"], max_steps=2000)
    args = job.entrypoint.split()
    assert args[:2] == ["ns-train", "nerfacto"] and args[-1] == "nerfstudio-data"
    assert args[args.index("--data") + 1] == "." and args[args.index("--max-num-iterations") + 1] == "2000"
    env = job.runtime_env
    assert env["working_dir"] == str(trained["capture"].resolve())
    assert env["pip"]["packages"] == ["nerfstudio>=1.1,<1.2"] and not any(
        "raylens" in p for p in env["pip"]["packages"]
    )
    assert job.entrypoint_num_gpus == 1
    kw = job.submit_kwargs()
    assert set(kw) == {"entrypoint", "runtime_env", "entrypoint_num_gpus", "entrypoint_num_cpus", "metadata"}
    json.dumps(kw)  # what JobSubmissionClient sends is plain JSON
    shared = build_nerfstudio_job("/shared/capture", fmt="blender", upload=False, use_gpu=False, method="instant-ngp")
    assert shared.entrypoint.split()[:4] == ["ns-train", "instant-ngp", "--data", "/shared/capture"]
    assert shared.entrypoint.endswith("blender-data") and "working_dir" not in shared.runtime_env
    with pytest.raises(FileNotFoundError, match="not a local folder"):
        build_nerfstudio_job(trained["root"] / "missing")
    with pytest.raises(ValueError, match="format"):
        build_nerfstudio_job("/x", fmt="ply", upload=False)
