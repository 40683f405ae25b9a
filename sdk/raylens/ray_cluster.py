"""Reading a running cluster's state for ``raylens status``: nodes, jobs and Serve applications.

Everything goes through the head's dashboard (the HTTP job API, port 8265) with Ray's own clients:
the state API for nodes, :class:`~ray.job_submission.JobSubmissionClient` for jobs, Serve's
submission client (what ``serve status`` uses) for applications. Nothing here joins the cluster as a
driver, so ``raylens status`` adds no job of its own and works through an SSH tunnel to 8265 alone.
Token auth is Ray's: with ``RAY_AUTH_MODE=token`` and the token in the environment (``raylens cluster
env``) every request carries it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from raylens.cluster import (
    API_SERVER_ADDRESS_ENV,
    ClusterStatus,
    ClusterUnreachableError,
    DeploymentStatus,
    JobStatus,
    NodeStatus,
    ServeAppStatus,
    dashboard_url,
    parse_resource_usage,
)

__all__ = ["GCS_PORT", "resolve_dashboard", "gather_status"]

GCS_PORT = 6379
"""``ray start --head``'s default GCS port: ``--address HOST:6379`` is a GCS address, any other ``HOST:PORT`` a dashboard."""

_START_HINT = (
    "Start one with `ray start --head` (this machine) or `ray up cluster.yaml`, then pass its dashboard as "
    "--address http://HEAD:8265 or set RAY_API_SERVER_ADDRESS / RAY_ADDRESS (through an SSH tunnel: "
    "`ray dashboard cluster.yaml`, then http://localhost:8265)"
)
_AUTH_HINT = (
    'The cluster uses token auth: `eval "$(raylens cluster env)"` sets RAY_AUTH_MODE=token and the head\'s '
    "RAY_AUTH_TOKEN (use --token-file with a copy of the head's ~/.ray/auth_token when you are not on the head)"
)


def resolve_dashboard(address: str | None = None) -> str:
    """The dashboard URL to ask: ``address`` if given (``http://HOST:8265``, ``HOST:8265``, ``ray://HOST:10001``,
    or ``auto``/a GCS ``HOST:6379`` address, which Ray resolves to its dashboard), else
    ``RAY_API_SERVER_ADDRESS``, then ``RAY_ADDRESS``, then a cluster started on this machine."""
    from ray.dashboard.utils import (
        get_address_for_submission_client,
        ray_address_to_api_server_url,
        ray_client_address_to_api_server_url,
    )

    try:
        if address is None:
            return get_address_for_submission_client(None)  # the env vars, in Ray's own order, then "auto"
        text = address.strip()
        if text.startswith("ray://"):
            return ray_client_address_to_api_server_url(text)
        if text == "auto" or (":" in text and "://" not in text and text.rsplit(":", 1)[1] == str(GCS_PORT)):
            return ray_address_to_api_server_url(text)  # Ray asks the GCS where its dashboard is
        return dashboard_url(text)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError or its own errors here
        from ray.exceptions import AuthenticationError

        if isinstance(e, AuthenticationError):
            raise ClusterUnreachableError(f"the cluster refused the request: {_one_line(e)}. {_AUTH_HINT}") from None
        where = address or os.environ.get(API_SERVER_ADDRESS_ENV) or os.environ.get("RAY_ADDRESS") or "this machine"
        raise ClusterUnreachableError(f"no Ray cluster found at {where} ({_one_line(e)}). {_START_HINT}") from None


def gather_status(address: str | None = None, *, timeout_s: float = 30.0) -> ClusterStatus:
    """Nodes (with total and free resources), jobs and Serve applications of the cluster at ``address``.

    Raises :class:`~raylens.cluster.ClusterUnreachableError` when nothing answers there or the cluster
    refuses the request (token auth without the token); the message says how to fix it. A part that
    cannot be read while the rest can (Serve not started, an older dashboard) becomes a note.
    """

    url = resolve_dashboard(address)
    with _api_server(url):
        return _gather(url, timeout_s)


@contextmanager
def _api_server(url: str) -> Iterator[None]:
    """Point Ray's clients at ``url`` for a while: they take RAY_API_SERVER_ADDRESS / RAY_ADDRESS over the
    address they are given, which would make ``--address`` lose to a stale variable."""
    saved = os.environ.get(API_SERVER_ADDRESS_ENV)
    os.environ[API_SERVER_ADDRESS_ENV] = url
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(API_SERVER_ADDRESS_ENV, None)
        else:
            os.environ[API_SERVER_ADDRESS_ENV] = saved


def _gather(url: str, timeout_s: float) -> ClusterStatus:
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        client = JobSubmissionClient(url)
    except AuthenticationError as e:
        raise ClusterUnreachableError(
            f"the cluster at {url} refused the request: {_one_line(e)}. {_AUTH_HINT}"
        ) from None
    except Exception as e:  # noqa: BLE001 - ConnectionError, an HTTP error, a version mismatch
        raise ClusterUnreachableError(f"no Ray cluster answered at {url} ({_one_line(e)}). {_START_HINT}") from None
    notes: list[str] = []
    try:
        nodes = _nodes(url, client, timeout_s, notes)
        jobs = _jobs(client)
    except AuthenticationError as e:
        raise ClusterUnreachableError(
            f"the cluster at {url} refused the request: {_one_line(e)}. {_AUTH_HINT}"
        ) from None
    serve_apps = _serve_apps(url, notes)
    return ClusterStatus(address=url, nodes=nodes, jobs=jobs, serve_apps=serve_apps, notes=tuple(notes))


def _nodes(url: str, client: Any, timeout_s: float, notes: list[str]) -> tuple[NodeStatus, ...]:
    from ray.util.state import list_nodes

    states = list_nodes(address=url, limit=10_000, timeout=int(max(1, timeout_s)), raise_on_missing_output=False)
    used = _logical_usage(client, notes)
    nodes = []
    for s in states:
        total = {k: float(v) for k, v in (s.resources_total or {}).items()}
        available = None
        if s.node_id in used:
            usage = used[s.node_id]
            # the usage lines use Ray's display names (object_store_memory, memory, CPU, custom); a resource
            # they leave out is reported as unknown rather than guessed
            available = {k: max(0.0, usage[k][1] - usage[k][0]) for k in total if k in usage}
        nodes.append(
            NodeStatus(
                node_id=s.node_id,
                ip=s.node_ip,
                alive=s.state == "ALIVE",
                is_head=bool(s.is_head_node),
                resources_total=total,
                resources_available=available,
                labels={str(k): str(v) for k, v in (s.labels or {}).items()},
            )
        )
    nodes.sort(key=lambda n: (not n.alive, not n.is_head, n.ip, n.node_id))
    return tuple(nodes)


def _logical_usage(client: Any, notes: list[str]) -> dict[str, dict[str, tuple[float, float]]]:
    """Per node, ``{resource: (used, total)}`` from the dashboard's node summary (the figures its Cluster
    page shows); the state API has only totals."""
    try:
        response = client._do_request("GET", "/nodes?view=summary")
        response.raise_for_status()
        data = response.json().get("data", {})
        per_node = data.get("nodeLogicalResources") or data.get("node_logical_resources") or {}
    except Exception as e:  # noqa: BLE001 - an older or newer dashboard: show totals only
        notes.append(f"free resources unknown: the dashboard's node summary could not be read ({_one_line(e)})")
        return {}
    return {str(node_id): parse_resource_usage(str(text)) for node_id, text in per_node.items()}


def _jobs(client: Any) -> tuple[JobStatus, ...]:
    jobs = []
    for j in client.list_jobs():
        kind = getattr(j.type, "value", j.type)
        jobs.append(
            JobStatus(
                job_id=j.submission_id or j.job_id or "?",
                status=str(getattr(j.status, "value", j.status)),
                entrypoint=j.entrypoint or "",
                kind=str(kind).upper(),
                message=j.message or "",
            )
        )
    order = {"RUNNING": 0, "PENDING": 1}
    jobs.sort(key=lambda j: order.get(j.status, 2))
    return tuple(jobs)


def _serve_apps(url: str, notes: list[str]) -> tuple[ServeAppStatus, ...]:
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    try:
        details = ServeSubmissionClient(url).get_serve_details()
    except Exception as e:  # noqa: BLE001 - Serve's REST API missing or failing must not hide nodes and jobs
        notes.append(f"Serve applications unknown: {_one_line(e)}")
        return ()
    apps = []
    for name, app in (details.get("applications") or {}).items():
        deployments = []
        for dname, d in (app.get("deployments") or {}).items():
            replicas = d.get("replicas") or []
            deployments.append(
                DeploymentStatus(
                    name=dname,
                    status=str(d.get("status", "?")),
                    running_replicas=sum(1 for r in replicas if r.get("state") == "RUNNING"),
                    target_replicas=int(d.get("target_num_replicas") or 0),
                )
            )
        apps.append(
            ServeAppStatus(
                name=name,
                status=str(app.get("status", "?")),
                route_prefix=app.get("route_prefix"),
                deployments=tuple(deployments),
                message=str(app.get("message") or ""),
            )
        )
    return tuple(apps)


def _one_line(e: BaseException) -> str:
    # Ray's AuthenticationError appends a long how-to to its message; ours says what to do instead
    text = " ".join(str(getattr(e, "message", None) or e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:299] + "…"
