"""The KubeRay manifests under deploy/: a strict structural check of the ray.io/v1 fields they use (no
unknown keys, the types KubeRay's CRDs require), the RayJob's entrypoint parsed by the real ``raylens``
CLI (``--dry-run``), and the RayService's serveConfigV2 validated by Ray Serve's own schema, importable,
and in step with services/raylens_services/search.yaml. No cluster and no network.

The KubeRay CRD schemas are not packaged on PyPI, hence the structural check rather than the CRDs.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"raylens:{VERSION}"
RAY_VERSION = importlib.metadata.version("ray")
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

# The ray.io/v1 fields (KubeRay's API reference), for the objects these manifests use.
RAYJOB_SPEC = {
    "activeDeadlineSeconds", "backoffLimit", "clusterSelector", "deletionStrategy", "entrypoint",
    "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "jobId", "managedBy", "metadata",
    "rayClusterSpec", "runtimeEnvYAML", "shutdownAfterJobFinishes", "submissionMode", "submitterConfig",
    "submitterPodTemplate", "suspend", "ttlSecondsAfterFinished",
}  # fmt: skip
RAYSERVICE_SPEC = {
    "deploymentUnhealthySecondThreshold", "excludeHeadPodFromServeSvc", "managedBy", "rayClusterConfig",
    "serveConfigV2", "serveService", "serviceUnhealthySecondThreshold", "upgradeStrategy",
}  # fmt: skip
CLUSTER_SPEC = {
    "authOptions", "autoscalerOptions", "enableInTreeAutoscaling", "gcsFaultToleranceOptions",
    "headGroupSpec", "headServiceAnnotations", "managedBy", "rayVersion", "suspend", "upgradeStrategy",
    "workerGroupSpecs",
}  # fmt: skip
HEAD_GROUP = {"enableIngress", "headService", "rayStartParams", "serviceType", "template"}
WORKER_GROUP = {
    "groupName", "idleTimeoutSeconds", "maxReplicas", "minReplicas", "numOfHosts", "rayStartParams",
    "replicas", "scaleStrategy", "suspend", "template",
}  # fmt: skip
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}


def _load(name: str) -> dict:
    docs = list(yaml.safe_load_all((DEPLOY / name).read_text()))
    assert len(docs) == 1, f"{name}: one object per file"
    return docs[0]


def _unknown(obj: dict, allowed: set[str], where: str) -> None:
    assert isinstance(obj, dict), f"{where} must be a mapping"
    extra = sorted(set(obj) - allowed)
    assert not extra, f"{where}: unknown fields {extra}; KubeRay's are {sorted(allowed)}"


def _check_pod_template(template: dict, where: str) -> list[dict]:
    _unknown(template, {"metadata", "spec"}, where)
    containers = template["spec"]["containers"]
    assert isinstance(containers, list) and containers, f"{where}: no containers"
    volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
    for c in containers:
        assert DNS_1123.match(c["name"]), f"{where}: container name {c['name']!r}"
        assert c["image"] == IMAGE, f"{where}: image {c['image']} (deploy/Dockerfile builds {IMAGE})"
        res = c["resources"]
        for kind in ("requests", "limits"):
            assert all(isinstance(v, str) for v in res[kind].values()), f"{where}: quantities are strings"
        for m in c.get("volumeMounts", []):
            assert m["name"] in volumes, f"{where}: mount {m['name']} has no volume"
            assert m["mountPath"].startswith("/"), where
    return containers


def _check_cluster(spec: dict, where: str) -> dict:
    _unknown(spec, CLUSTER_SPEC, where)
    assert spec["rayVersion"] == RAY_VERSION, f"{where}: rayVersion {spec['rayVersion']} but ray {RAY_VERSION}"
    assert spec["authOptions"] == {"mode": "token"}, f"{where}: token auth on"
    head = spec["headGroupSpec"]
    _unknown(head, HEAD_GROUP, f"{where}.headGroupSpec")
    groups = [("head", head)]
    names = set()
    for g in spec["workerGroupSpecs"]:
        _unknown(g, WORKER_GROUP, f"{where}.workerGroupSpecs")
        assert DNS_1123.match(g["groupName"]) and g["groupName"] not in names
        names.add(g["groupName"])
        for key in ("replicas", "minReplicas", "maxReplicas"):
            assert isinstance(g[key], int) and not isinstance(g[key], bool), f"{g['groupName']}.{key}"
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
        groups.append((g["groupName"], g))
    for name, g in groups:
        params = g["rayStartParams"]
        assert isinstance(params, dict)
        # KubeRay's rayStartParams is map[string]string: a bare number or bool is refused by the API server
        bad = {k: v for k, v in params.items() if not isinstance(v, str)}
        assert not bad, f"{where}.{name}.rayStartParams values must be strings: {bad}"
        _check_pod_template(g["template"], f"{where}.{name}.template")
    ports = {p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert {6379, 8265}.issubset(ports), f"{where}: the head exposes the GCS and the dashboard"
    return spec


def _check_object(obj: dict, kind: str) -> None:
    assert obj["apiVersion"] == "ray.io/v1" and obj["kind"] == kind
    assert DNS_1123.match(obj["metadata"]["name"]) and len(obj["metadata"]["name"]) <= 63
    assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}


# ------------------------------------------------------------------------------------------- RayJob


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return _load("rayjob-train-clip.yaml")


def test_rayjob_structure(rayjob):
    _check_object(rayjob, "RayJob")
    spec = rayjob["spec"]
    _unknown(spec, RAYJOB_SPEC, "RayJob.spec")
    assert spec["submissionMode"] in SUBMISSION_MODES
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] >= 0
    assert isinstance(spec["runtimeEnvYAML"], str) and isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)
    submitter = _check_pod_template(spec["submitterPodTemplate"], "RayJob.submitterPodTemplate")
    assert spec["submitterPodTemplate"]["spec"]["restartPolicy"] == "Never" and submitter
    cluster = _check_cluster(spec["rayClusterSpec"], "RayJob.rayClusterSpec")
    workers = cluster["workerGroupSpecs"]
    assert workers, "a worker group"
    gpus = [
        int(c["resources"]["limits"].get("nvidia.com/gpu", 0))
        for g in workers
        for c in g["template"]["spec"]["containers"]
    ]
    assert any(gpus), "the training job runs on GPU workers"
    # every Ray pod sees the storage the entrypoint writes to
    storage = _flag(spec["entrypoint"], "--storage")
    for g in [cluster["headGroupSpec"], *workers]:
        mounts = [m["mountPath"] for c in g["template"]["spec"]["containers"] for m in c.get("volumeMounts", [])]
        assert any(storage == m or storage.startswith(m + "/") for m in mounts), (storage, mounts)


def _flag(entrypoint: str, name: str) -> str:
    argv = shlex.split(entrypoint)
    return argv[argv.index(name) + 1]


def test_rayjob_entrypoint_is_a_real_raylens_command(rayjob):
    from raylens.cli import app

    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert argv[:2] == ["raylens", "train"], argv
    workers = int(_flag(rayjob["spec"]["entrypoint"], "--workers"))
    result = CliRunner().invoke(app, [*argv[1:], "--dry-run"])  # parses and validates every option, runs nothing
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.stdout)
    assert resolved["ray"]["use_gpu"] is True and resolved["ray"]["num_workers"] == workers
    assert resolved["ray"]["storage_path"] == _flag(rayjob["spec"]["entrypoint"], "--storage")
    group = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert (
        group["replicas"] * int(group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
        >= workers
    )


def test_a_broken_rayjob_fails_the_checks(rayjob):
    import copy

    for breaks in (
        lambda j: j["spec"].update(shutdownAfterJobFinish=True),  # a misspelt field
        lambda j: j["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),
        lambda j: j["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(minReplicas=3),
    ):
        broken = copy.deepcopy(rayjob)
        breaks(broken)
        with pytest.raises(AssertionError):
            test_rayjob_structure(broken)


# --------------------------------------------------------------------------------------- RayService


@pytest.fixture(scope="module")
def rayservice() -> dict:
    return _load("rayservice-search.yaml")


@pytest.fixture(scope="module")
def serve_config(rayservice) -> dict:
    text = rayservice["spec"]["serveConfigV2"]
    assert isinstance(text, str), "serveConfigV2 is a YAML string"
    return yaml.safe_load(text)


def test_rayservice_structure(rayservice):
    _check_object(rayservice, "RayService")
    _unknown(rayservice["spec"], RAYSERVICE_SPEC, "RayService.spec")
    cluster = _check_cluster(rayservice["spec"]["rayClusterConfig"], "RayService.rayClusterConfig")
    for g in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        ports = {p["containerPort"] for c in g["template"]["spec"]["containers"] for p in c.get("ports", [])}
        assert 8000 in ports, "every pod that may run a Serve proxy exposes 8000"


def test_serve_config_is_valid_for_ray_serve_and_its_import_path_resolves(serve_config):
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(serve_config)  # Ray Serve's own validation of a `serve deploy` config
    broken = yaml.safe_load(yaml.safe_dump(serve_config))
    broken["applications"][0]["deployments"][0]["num_replicas"] = "many"
    with pytest.raises(ValueError):  # pydantic's ValidationError: the same check can fail
        ServeDeploySchema.model_validate(broken)
    for app in serve_config["applications"]:
        module, _, attr = app["import_path"].partition(":")
        assert module.startswith("raylens_services."), module
        target = getattr(importlib.import_module(module), attr)
        assert callable(target), app["import_path"]


def test_serve_config_matches_search_yaml(serve_config):
    packaged = yaml.safe_load((ROOT / "services" / "raylens_services" / "search.yaml").read_text())
    assert [a["name"] for a in serve_config["applications"]] == [a["name"] for a in packaged["applications"]]
    ours, theirs = serve_config["applications"][0], packaged["applications"][0]
    for key in ("route_prefix", "import_path", "deployments"):
        assert ours[key] == theirs[key], key  # same deployments, replicas, autoscaling and limits
    cluster_only = {"indices", "data_roots", "api_key_file"}  # paths differ on the cluster
    assert {k: v for k, v in ours["args"].items() if k not in cluster_only} == {
        k: v for k, v in theirs["args"].items() if k not in cluster_only
    }
    assert set(ours["args"]["indices"]) == set(theirs["args"]["indices"])
    assert serve_config["logging_config"] == packaged["logging_config"]


def test_serve_on_the_pod_network_has_an_api_key_from_a_mounted_secret(rayservice, serve_config):
    assert serve_config["http_options"]["host"] == "0.0.0.0"
    key_file = serve_config["applications"][0]["args"]["api_key_file"]  # required off loopback
    cluster = rayservice["spec"]["rayClusterConfig"]
    for g in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:  # the app is built on any node
        spec = g["template"]["spec"]
        secrets = {v["name"] for v in spec["volumes"] if "secret" in v}
        mounts = [m for c in spec["containers"] for m in c.get("volumeMounts", []) if m["name"] in secrets]
        assert any(key_file.startswith(m["mountPath"] + "/") for m in mounts), (key_file, mounts)
        paths = [*serve_config["applications"][0]["args"]["indices"].values()]
        volume_mounts = [m["mountPath"] for c in spec["containers"] for m in c.get("volumeMounts", [])]
        assert all(any(p.startswith(m + "/") for m in volume_mounts) for p in paths), (paths, volume_mounts)


def test_the_image_is_built_by_deploy_dockerfile():
    text = (DEPLOY / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)$", text, re.M).group(1)
    assert base == f"rayproject/ray:{RAY_VERSION}-py311-gpu", base
    assert f"-t {IMAGE} " in text and '[gpu]"' in text
    pins = [
        d
        for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
        if d.startswith("torch")
    ]
    assert all(f'"{p}"' in text for p in pins), pins
