"""cluster.yaml against the cluster-config schema Ray itself ships, Ray's own config checks, and what the
clusters issue asks of it (CPU head, 1- and 8-GPU workers, docker, token auth, a loopback dashboard)."""

from __future__ import annotations

import copy
import importlib.metadata
import json
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TEXT = (ROOT / "cluster.yaml").read_text()


def _schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(TEXT)


def _gpus(node_type: dict) -> int:
    return int(node_type["resources"].get("GPU", 0))


def _setup_for(config: dict, name: str) -> list[str]:
    """The commands a node of this type runs before `ray start`, by Ray's rules: a node type's own
    `worker_setup_commands` replace the global lists; otherwise setup + head/worker setup."""
    node_type = config["available_node_types"][name]
    if name == config["head_node_type"]:
        return config.get("setup_commands", []) + config.get("head_setup_commands", [])
    if "worker_setup_commands" in node_type:
        return node_type["worker_setup_commands"]
    return config.get("setup_commands", []) + config.get("worker_setup_commands", [])


def test_valid_against_rays_own_schema_and_checks(config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    jsonschema.validate(config, _schema())
    full = prepare_config(copy.deepcopy(config))  # Ray's defaults merged in, as `ray up` does
    validate_config(full)  # the schema again, plus head type and min-workers rules
    assert full["available_node_types"]["gpu_8x"]["worker_setup_commands"] == _setup_for(config, "gpu_8x")


@pytest.mark.parametrize(
    "break_it",
    [
        pytest.param(lambda c: c["available_node_types"]["gpu_1x"].update(gpus=1), id="unknown node-type key"),
        pytest.param(lambda c: c["available_node_types"]["gpu_8x"]["resources"].update(GPU="8"), id="GPU as text"),
        pytest.param(lambda c: c["available_node_types"]["head"].pop("node_config"), id="no node_config"),
        pytest.param(lambda c: c["docker"].update(gpu_image="x"), id="unknown docker key"),
        pytest.param(lambda c: c.update(idle_timeout_minutes="ten"), id="idle timeout as text"),
        pytest.param(lambda c: c.pop("cluster_name"), id="no cluster_name"),
    ],
)
def test_a_broken_copy_is_rejected_by_the_schema(config, break_it):
    broken = copy.deepcopy(config)
    break_it(broken)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, _schema())


def test_rays_checks_reject_a_head_type_that_is_not_listed(config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = copy.deepcopy(config)
    broken["head_node_type"] = "gpu_16x"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(broken))


def test_cpu_head_and_1_and_8_gpu_worker_types_with_min_max_and_idle_timeouts(config):
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert _gpus(head) == 0 and head["resources"]["CPU"] > 0
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    gpu_counts = sorted(_gpus(t) for t in workers.values() if _gpus(t))
    assert 1 in gpu_counts and 8 in gpu_counts, gpu_counts
    for name, t in workers.items():
        assert 0 <= t["min_workers"] <= t["max_workers"] <= config["max_workers"], name
    assert sum(t["min_workers"] for t in workers.values()) <= config["max_workers"]
    assert config["idle_timeout_minutes"] > 0
    eight = next(t for t in workers.values() if _gpus(t) == 8)
    assert 0 < eight["idle_timeout_s"] < config["idle_timeout_minutes"] * 60  # the expensive type goes first


def test_docker_images_match_the_ray_we_pin_and_gpu_nodes_get_cuda(config):
    ray_version = importlib.metadata.version("ray")
    minor = ".".join(ray_version.split(".")[:2])
    docker = config["docker"]
    images = [docker["image"], docker["head_image"]] + [
        t["docker"]["worker_image"] for t in config["available_node_types"].values() if "docker" in t
    ]
    for image in images:
        assert re.fullmatch(rf"rayproject/ray:{re.escape(minor)}\.\d+-py311-(cpu|gpu)", image), image
    assert docker["head_image"].endswith("-cpu")
    for name, t in config["available_node_types"].items():
        if _gpus(t):
            assert t["docker"]["worker_image"].endswith("-gpu"), name


def test_gpu_nodes_install_raylens_with_the_gpu_extra_and_cpu_nodes_without(config):
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "gpu" in pyproject["optional-dependencies"]
    torch_pins = [d for d in pyproject["dependencies"] if d.startswith(("torch==", "torchvision=="))]
    for name, t in config["available_node_types"].items():
        setup = " ; ".join(_setup_for(config, name))
        installs = re.findall(r"pip install[^;]*?raylens(\[[a-z,]+\])?\"", setup)
        assert installs, f"{name} never installs raylens: {setup}"
        assert installs == (["[gpu]"] if _gpus(t) else [""]), (name, installs)
        for pin in torch_pins:  # the same torch everywhere: the one pyproject.toml pins
            assert f'"{pin}"' in setup, (name, pin)
    assert "~/raylens" in config["file_mounts"] and config["file_mounts"]["~/raylens"] == "."


def test_token_auth_on_every_node_and_the_dashboard_on_loopback(config):
    token_dir = "~/.raylens/ray-token"
    assert config["file_mounts"][token_dir] == token_dir
    for name in config["available_node_types"]:
        setup = _setup_for(config, name)
        assert any(f"cp {token_dir}/auth_token ~/.ray/auth_token" in c for c in setup), name
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2 and all(c.startswith("RAY_AUTH_MODE=token ray start") for c in ray_starts)
    head_start = next(c for c in config["head_start_ray_commands"] if "ray start" in c)
    assert "--dashboard-host=127.0.0.1" in head_start and not any("0.0.0.0" in c for c in starts)
    # the comments that tell people how to reach it stay
    for needed in (
        "ray dashboard cluster.yaml",
        "ssh -i <key.pem> -L 8265:localhost:8265",
        "never 0.0.0.0",
        "raylens cluster env --token-file ~/.raylens/ray-token/auth_token",
    ):
        assert needed in TEXT, needed
