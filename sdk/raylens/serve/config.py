"""Serve config files for the raylens services: resolve one for a start (paths, host, port), no Ray needed.

``raylens serve`` reads ``services/raylens_services/search.yaml`` (or a given file), applies the command-line
overrides with :func:`resolve_config` and hands the result to Serve's own ``serve run``, so both
start the same thing.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

__all__ = ["resolve_config", "search_app"]


def search_app(cfg: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """The application entry named ``name`` (default: the first) of a serve config."""
    apps = cfg.get("applications") or []
    for app in apps:
        if name is None or app.get("name") == name:
            return app
    raise ValueError(f"the config has no application {name!r}; it has {[a.get('name') for a in apps]}")


def _absolute(path: Any, base: Path) -> Any:
    if not isinstance(path, str) or not path:
        return path
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def resolve_config(
    cfg: dict[str, Any],
    *,
    base_dir: str | Path = ".",
    host: str | None = None,
    port: int | None = None,
    indices: str | dict[str, str] | None = None,
    checkpoint: str | None = None,
    app_name: str | None = None,
    haproxy: bool | None = None,
) -> dict[str, Any]:
    """A copy of ``cfg`` ready to deploy from anywhere: overrides applied, every path in the app's
    ``args`` (indices, data roots, checkpoint, classifier checkpoints, the API key file) made absolute
    against ``base_dir``. ``haproxy`` False (default: :func:`raylens.serve.ray_apps.fast_ingress_enabled`,
    False without an HAProxy binary or with ``RAYLENS_SERVE_HAPROXY=0``) drops the controller's
    fast-ingress settings (:data:`raylens.serve.ray_apps.FAST_INGRESS_ENV`), so Serve starts its Python
    proxy instead of failing to find HAProxy."""
    from raylens.serve.ray_apps import FAST_INGRESS_ENV, fast_ingress_enabled

    if port is not None and not 1 <= int(port) <= 65535:
        raise ValueError(f"port must be in 1..65535, got {port}")
    out = copy.deepcopy(cfg)
    base = Path(base_dir).resolve()
    http = dict(out.get("http_options") or {})
    if host is not None:
        http["host"] = host
    if port is not None:
        http["port"] = int(port)
    out["http_options"] = http
    env = ((out.get("controller_options") or {}).get("runtime_env") or {}).get("env_vars")
    if env and not (fast_ingress_enabled() if haproxy is None else haproxy):
        for name in FAST_INGRESS_ENV:
            env.pop(name, None)
    app = search_app(out, app_name)
    args = app["args"] = dict(app.get("args") or {})
    if indices is not None:
        if isinstance(indices, str):
            pairs = [p.strip().partition("=") for p in indices.split(",") if p.strip()]
            indices = {(n if sep else "default"): (v if sep else n) for n, sep, v in pairs}
        args["indices"] = dict(indices)
    if checkpoint is not None:
        args["checkpoint"] = checkpoint
    if isinstance(args.get("indices"), dict):
        args["indices"] = {n: _absolute(p, base) for n, p in args["indices"].items()}
    elif isinstance(args.get("indices"), str):
        args["indices"] = {"default": _absolute(args["indices"], base)}
    if args.get("checkpoint"):
        args["checkpoint"] = _absolute(args["checkpoint"], base)
    if args.get("api_key_file"):
        args["api_key_file"] = _absolute(args["api_key_file"], base)
    if isinstance(args.get("data_roots"), dict):
        args["data_roots"] = {
            n: [_absolute(d, base) for d in ([r] if isinstance(r, str) else r)] for n, r in args["data_roots"].items()
        }
    for version in (args.get("classifiers") or {}).values():
        if isinstance(version, dict) and version.get("checkpoint"):
            version["checkpoint"] = _absolute(version["checkpoint"], base)
    return out
