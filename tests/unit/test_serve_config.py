"""services/raylens_services/search.yaml and raylens.serve.config: the config is valid for Serve, sets autoscaling and the
A/B split, and resolves for `raylens serve` (no cluster is started)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from raylens.serve.config import resolve_config, search_app

CONFIG = Path(__file__).resolve().parents[2] / "services" / "raylens_services" / "search.yaml"


def _cfg() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def test_config_passes_serves_schema_and_sets_autoscaling_and_ab():
    from ray.serve.schema import ServeDeploySchema

    cfg = _cfg()
    ServeDeploySchema.model_validate(cfg)
    app = search_app(cfg)
    assert app["import_path"] == "raylens_services.search:build_app" and app["route_prefix"] == "/"
    deps = {d["name"]: d for d in app["deployments"]}
    auto = deps["ClipEmbedder"]["autoscaling_config"]
    assert auto["min_replicas"] == 1 and auto["max_replicas"] > 1 and auto["target_ongoing_requests"] > 0
    assert all(0 < d["ray_actor_options"]["num_cpus"] <= 0.5 for d in deps.values())  # fits 2 cores
    assert all(d["max_ongoing_requests"] > 0 for d in deps.values())
    weights = {v: c["weight"] for v, c in app["args"]["classifiers"].items()}
    assert set(weights) == {"v1", "v2"} and {f"Classifier_{v}" for v in weights} <= set(deps)
    assert cfg["http_options"]["host"] == "127.0.0.1"


def test_resolve_config_makes_paths_absolute_and_applies_overrides(tmp_path):
    cfg = _cfg()
    out = resolve_config(
        cfg, base_dir=tmp_path, port=9001, host="127.0.0.1", indices="a=x/idx,b=/abs/idx", checkpoint="ckpt"
    )
    args = search_app(out)["args"]
    assert out["http_options"] == {"host": "127.0.0.1", "port": 9001}
    assert args["indices"] == {"a": str(tmp_path / "x/idx"), "b": "/abs/idx"}
    assert args["checkpoint"] == str(tmp_path / "ckpt")
    assert search_app(cfg)["args"]["indices"] == {"natural": "raylens-demo/index"}  # the input is not changed
    assert resolve_config(cfg, base_dir=tmp_path, indices="only/idx")["applications"][0]["args"]["indices"] == {
        "default": str(tmp_path / "only/idx")
    }
    with pytest.raises(ValueError, match="port"):
        resolve_config(cfg, port=0)
    with pytest.raises(ValueError, match="no application"):
        search_app(cfg, "nope")


def test_builder_composes_the_deployments_without_starting_ray(tmp_path, monkeypatch):
    from ray.serve import Application

    from raylens.models import create_model
    from raylens.serve.ray_apps import config_args, config_options

    monkeypatch.delenv("RAYLENS_INDEX", raising=False)
    from raylens_services.search import build_app

    create_model("clip-tiny").save(tmp_path / "clip")
    cfg = _cfg()
    args = {**config_args(cfg), "indices": {}, "checkpoint": str(tmp_path / "clip"), "options": config_options(cfg)}
    app = build_app(args)
    assert isinstance(app, Application)


def test_raylens_serve_dry_run_prints_the_resolved_config(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from raylens.cli import app

    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["serve", "--dry-run", "--port", "8123", "--index", "demo=runs/index"])
    assert res.exit_code == 0, res.output
    cfg = yaml.safe_load(res.output)
    assert cfg["http_options"]["port"] == 8123
    assert search_app(cfg)["args"]["indices"] == {"demo": str(tmp_path / "runs/index")}
