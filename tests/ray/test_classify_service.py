"""The /classify endpoint on a real local Serve app (the packaged serve config, deployed with `serve run`):
v1 serves a PyTorch checkpoint and v2 its INT8 ONNX Runtime export through the one loader; replicas
answer at once (warm before traffic); per-version Prometheus metrics; v2 is promoted to v1 by a config
change that reconfigures the v1 replica in place (same process), with no failed request.

Requests go over HTTP; what only a replica knows (its backend, process id, swaps) is read from the
classifier deployments through their handles (``info``)."""

from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest
import requests
from PIL import Image

pytestmark = [pytest.mark.ray, pytest.mark.slow]

APP = "raylens-classify-test"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A small CNN for 16 px digits (saved as a PyTorch checkpoint) and its INT8 ONNX export."""
    import torch

    from raylens.classify import CompressConfig, compress_classifier, load_labelled
    from raylens.models import create_model
    from raylens.serve.classify import save_classifier

    root = tmp_path_factory.mktemp("classify-serve")
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=10, width=4)
    train = load_labelled("digits", image_size=16, limit=64)
    test = load_labelled("digits:heldout", image_size=16, limit=16)
    torch_dir = save_classifier(model, root / "torch", classes=train.classes, image_size=16)
    report = compress_classifier(
        torch_dir, train, test, root / "small", CompressConfig(steps=("int8",), latency_repeats=2)
    )
    return {"torch": str(torch_dir), "int8": report.directories["int8"]}


def _config(checkpoints: dict, port: int, v1_user_config: dict | None = None) -> dict:
    from raylens.serve.ray_apps import load_config

    cfg = load_config()
    cfg["http_options"] = {"host": "127.0.0.1", "port": port}
    app = cfg["applications"][0]
    app["name"] = APP
    app["args"] = {
        "classifiers": {
            "v1": {"checkpoint": checkpoints["torch"], "weight": 0.5},
            "v2": {"checkpoint": checkpoints["int8"], "weight": 0.5},
        }
    }
    deployments = {d["name"]: d for d in app["deployments"]}
    deployments["ClipEmbedder"]["autoscaling_config"]["max_replicas"] = 1
    if v1_user_config is not None:
        deployments["Classifier_v1"]["user_config"] = v1_user_config
    return cfg


def _digit_b64(i: int) -> str:
    from raylens.data.digits import load_digits_split

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(load_digits_split("heldout").images[i])).resize((16, 16)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _classify(url: str, version: str, n: int = 2) -> dict:
    r = requests.post(
        f"{url}/classify",
        json={"images_b64": [_digit_b64(i) for i in range(n)]},
        headers={"x-model-version": version},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r.json()


def _info(version: str) -> dict:
    from ray import serve

    return serve.get_deployment_handle(f"Classifier_{version}", app_name=APP).info.remote().result(timeout_s=60)


def _wait_classifiers(url: str, timeout_s: float = 300) -> dict:
    """``/status`` until both classifier versions are ready (this app opens no index: /healthz stays down)."""
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        try:
            r = requests.get(f"{url}/status", timeout=10)
            last = r.status_code, r.text[:300]
            versions = r.json().get("classifier_versions", {}) if r.status_code == 200 else {}
            if set(versions) == {"v1", "v2"} and all(v["ready"] for v in versions.values()):
                return versions
        except requests.RequestException as e:
            last = repr(e)
        time.sleep(2)
    raise TimeoutError(f"the classifiers were not ready after {timeout_s}s (last: {last})")


@pytest.fixture(scope="module")
def service(serve_port, checkpoints):
    from ray import serve

    from raylens.serve.ray_apps import run_config

    port = serve_port
    run_config(_config(checkpoints, port))
    url = f"http://127.0.0.1:{port}"
    versions = _wait_classifiers(url)
    try:
        yield {"url": url, "versions": versions, "port": port}
    finally:
        serve.delete(APP)


def test_both_runtimes_serve_warm_through_one_loader(service):
    v1, v2 = _info("v1"), _info("v2")
    assert v1["backend"] == "torch" and v2["backend"] == "onnxruntime"
    for info in (v1, v2):
        assert info["ready"] and info["replica"]["warmup_s"] >= 0  # warmed before the replica was ready
    a, b = _classify(service["url"], "v1"), _classify(service["url"], "v2")
    assert a["model_version"] == "v1" and a["checkpoint_hash"] == v1["checkpoint_hash"]
    assert b["model_version"] == "v2" and b["checkpoint_hash"] == v2["checkpoint_hash"]
    assert len(a["predictions"]) == len(b["predictions"]) == 2
    assert a["checkpoint_hash"] != b["checkpoint_hash"]
    assert _info("v2")["stats"]["images"] >= 2


def test_per_version_metrics_are_exported(service, ray_session):
    from raylens.serve.observe import exported_name
    from raylens_services.classify import CLASSIFIER_IMAGES

    _classify(service["url"], "v1")
    _classify(service["url"], "v2")
    port = next(n["MetricsExportPort"] for n in ray_session.nodes() if n["Alive"])
    name = exported_name(CLASSIFIER_IMAGES, counter=True)
    deadline, lines = time.monotonic() + 90, []
    while time.monotonic() < deadline:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
        lines = [ln for ln in text.splitlines() if ln.startswith(name + "{")]
        if any('version="v1"' in ln and 'backend="torch"' in ln for ln in lines) and any(
            'version="v2"' in ln and 'backend="onnxruntime"' in ln for ln in lines
        ):
            break
        time.sleep(2)
    assert any('version="v2"' in ln and 'backend="onnxruntime"' in ln for ln in lines), lines
    assert any('version="v1"' in ln and 'backend="torch"' in ln for ln in lines), lines


def test_promote_v2_to_v1_by_config_without_restart(service, checkpoints):
    from raylens.serve.ray_apps import run_config

    url = service["url"]
    before, v2_hash = _info("v1"), _info("v2")["checkpoint_hash"]
    run_config(_config(checkpoints, service["port"], v1_user_config={"checkpoint": checkpoints["int8"]}))
    statuses, deadline, after = [], time.monotonic() + 120, before
    while time.monotonic() < deadline:
        r = requests.post(
            f"{url}/classify", json={"images_b64": [_digit_b64(0)]}, headers={"x-model-version": "v1"}, timeout=60
        )
        statuses.append(r.status_code)
        after = _info("v1")
        if after["checkpoint_hash"] == v2_hash:
            break
        time.sleep(0.5)
    assert after["checkpoint_hash"] == v2_hash and after["backend"] == "onnxruntime"
    assert after["replica"]["pid"] == before["replica"]["pid"], "the v1 replica was restarted"
    assert after["stats"]["swaps"] == 1 and after["version"] == "v1"
    assert set(statuses) == {200}, statuses  # traffic kept being answered during the swap
    out = _classify(url, "v1")
    assert out["model_version"] == "v1" and out["checkpoint_hash"] == v2_hash
