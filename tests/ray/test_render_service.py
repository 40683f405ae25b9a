"""The NeRF render service on a real local Serve app over HTTP on 127.0.0.1: a PNG for a pose and for
a look-at camera, a batch, and bad requests answered with 4xx JSON errors (never a 500)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import requests
from PIL import Image

pytestmark = [pytest.mark.ray, pytest.mark.slow]

APP = "raylens-render-test"
LIMITS = {"max_body_bytes": 4096, "max_pixels": 5000, "max_batch": 3}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny nerf-fast trained a few steps in-process on a generated capture."""
    import torch

    from raylens.train.context import LocalContext
    from raylens_domains.multiview.rays import frames_to_rays
    from raylens_domains.multiview.readers import read_frames
    from raylens_domains.multiview.scene import generate_scene
    from raylens_domains.multiview.train import NerfTrainConfig, random_ray_batches, scene_record, train_nerf

    root = tmp_path_factory.mktemp("render")
    generate_scene(root / "scene", n_train=6, n_val=0, n_test=1, size=16, seed=4)
    got = read_frames(root / "scene", split="train")
    scene = scene_record(got.info, np.stack([f.c2w for f in got.frames]), got.frames[0].intrinsics, "scene")
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
    return result.checkpoint


@pytest.fixture(scope="module")
def service(serve_port, checkpoint):
    """The render app deployed from services/raylens_services/render.yaml (this test's paths, port and limits)."""
    from ray import serve

    from raylens.serve.ray_apps import load_config, packaged_config, run_config, wait_ready

    port = serve_port
    cfg = load_config(packaged_config("render.yaml"))
    cfg["http_options"] = {"host": "127.0.0.1", "port": port}
    app = cfg["applications"][0]
    app["name"] = APP
    app["args"] = {"checkpoints": {"scene": str(checkpoint)}, "default": "scene", "limits": LIMITS}
    deployments = {d["name"]: d for d in app["deployments"]}
    deployments["NerfRenderer"]["autoscaling_config"]["max_replicas"] = 1
    deployments["NerfRenderer"]["ray_actor_options"]["num_cpus"] = 0.5
    run_config(cfg)
    url = f"http://127.0.0.1:{port}"
    health = wait_ready(f"{url}/healthz", timeout_s=180)
    try:
        yield {"url": url, "health": health}
    finally:
        serve.delete(APP)


def _png(r: requests.Response) -> np.ndarray:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(r.content)))


def test_liveness_says_up_and_details_are_on_status(service):
    assert service["health"] == {"status": "up"}
    r = requests.get(f"{service['url']}/status", timeout=60)
    assert r.status_code == 200 and r.json() == {"ready": True, "checkpoints": ["scene"], "problems": {}}
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert requests.get(f"{service['url']}{path}", timeout=60).status_code == 404, path


def test_render_a_pose_and_a_look_at_camera_over_http(service):
    pose = [[1, 0, 0, 0], [0, 0, -1, -3.5], [0, 1, 0, 0.5], [0, 0, 0, 1]]
    img = _png(requests.post(f"{service['url']}/render", json={"pose": pose, "width": 24, "height": 16}, timeout=120))
    assert img.shape == (16, 24, 3) and img.dtype == np.uint8
    r = requests.post(
        f"{service['url']}/render",
        json={"checkpoint": "scene", "look_at": {"eye": [0, -4, 2], "target": [0, 0, -0.25]}, "width": 20},
        timeout=120,
    )
    assert _png(r).shape == (20, 20, 3) and r.headers["x-raylens-checkpoint"] == "scene"


def test_a_batch_of_cameras(service):
    import base64

    cams = [{"look_at": {"eye": [4 * np.cos(a), 4 * np.sin(a), 2]}, "width": 12} for a in (0.0, 2.0)]
    r = requests.post(f"{service['url']}/render/batch", json={"cameras": cams}, timeout=120)
    assert r.status_code == 200, r.text
    images = [np.asarray(Image.open(io.BytesIO(base64.b64decode(s)))) for s in r.json()["images"]]
    assert [i.shape for i in images] == [(12, 12, 3)] * 2 and not np.array_equal(images[0], images[1])


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/render", {"pose": [[1, 0, 0], [0, 1, 0]]}, 422, "bad_camera"),
        ("/render", {"pose": [[0] * 4] * 3 + [[0, 0, 0, 1]]}, 422, "bad_camera"),
        ("/render", {"look_at": {"eye": [0, 0, 0], "target": [0, 0, 0]}}, 422, "bad_camera"),
        ("/render", {"width": 16}, 422, "bad_camera"),
        ("/render", {"look_at": {"eye": [0, -4, 2]}, "width": 200, "height": 200}, 413, "too_many_pixels"),
        ("/render", {"look_at": {"eye": [0, -4, 2]}, "width": -3}, 422, "invalid_request"),
        ("/render", {"checkpoint": "other", "look_at": {"eye": [0, -4, 2]}}, 404, "unknown_checkpoint"),
        ("/render/batch", {"cameras": [{"look_at": {"eye": [0, -4, 2]}, "width": 8}] * 4}, 413, "batch_too_large"),
        ("/render/batch", {"cameras": []}, 422, "invalid_request"),
        ("/render", {"look_at": {"eye": [0, -4, 2]}, "pad": "x" * 5000}, 413, "body_too_large"),
    ],
)
def test_bad_requests_get_4xx_json_errors(service, path, body, status, code):
    r = requests.post(f"{service['url']}{path}", json=body, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["status"] == status and err["code"] == code and err["message"]


def test_a_body_that_is_not_json(service):
    r = requests.post(
        f"{service['url']}/render", data=b"{not json", headers={"content-type": "application/json"}, timeout=60
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_json"
