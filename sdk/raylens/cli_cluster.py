"""``raylens cluster env`` and ``raylens status``: reaching a Ray cluster with token auth, and seeing what runs on it.

    eval "$(raylens cluster env)"                                  on the head: its token, for this shell
    eval "$(raylens cluster env --token-file head_token --address http://localhost:8265)"
    raylens status [--address http://HEAD:8265]                    nodes, resources, jobs, Serve apps

The plain parts (reading the token, the status dataclasses) live in :mod:`raylens.cluster`; the
reading of a live cluster in :mod:`raylens.ray_cluster`.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from raylens.cluster import (
    AuthTokenError,
    ClusterStatus,
    ClusterUnreachableError,
    client_env,
    format_exports,
    format_quantity,
    read_auth_token,
    token_file,
)

__all__ = ["cluster_app", "cluster", "cluster_env", "status", "render_status"]

cluster_app = typer.Typer(
    help="Working with a Ray cluster: what a `ray job submit` client needs (token auth, address).\n\n"
    "`raylens status` shows the cluster's nodes, jobs and Serve applications.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)


@cluster_app.callback()
def cluster() -> None:
    """Working with a Ray cluster: `raylens cluster env` prints what a `ray job submit` client needs."""


@cluster_app.command("env")
def cluster_env(
    token_file_: Path | None = typer.Option(
        None,
        "--token-file",
        metavar="PATH",
        help="The head's token file (default: RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token). Off the head, a copy: "
        "`ray exec cluster.yaml 'cat ~/.ray/auth_token' | tail -n 1 > head_token`.",
    ),
    address: str | None = typer.Option(
        None,
        "--address",
        metavar="URL",
        help="Also export the head's dashboard (job API) as RAY_API_SERVER_ADDRESS (ray job ..., raylens status) "
        "and RAY_DASHBOARD_ADDRESS (serve deploy): http://HOST:8265, or HOST / HOST:PORT.",
    ),
):
    """Print the shell lines a `ray job submit` client needs for a cluster with Ray's token auth.

    Ray 2.60 protects the dashboard's job API and the GCS with one token when RAY_AUTH_MODE=token. A head
    started with `ray start --head` turns this on by itself when it finds a token (~/.ray/auth_token,
    written by `ray get-auth-token --generate` or a local `ray.init()`), and then a client answers
    `AuthenticationError: Missing authentication token` until it has both RAY_AUTH_MODE=token and the
    token. This prints them, ready for `eval`:

      eval "$(raylens cluster env)"        (on the head, or where the head's token file is)

      eval "$(raylens cluster env --token-file head_token --address http://localhost:8265)"

      ray job submit --working-dir . -- raylens train clip digits --eval digits

    The output holds the token: it is a credential, keep it out of logs and shared shells.
    """
    try:
        token = read_auth_token(token_file_)
    except AuthTokenError as e:
        typer.echo(f"Error: {e}", err=True)
        raise typer.Exit(1) from None
    try:
        env = client_env(token, address=address)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--address") from None
    typer.echo(
        f"# Ray token auth for ray job submit / serve deploy / raylens status; token from {token_file(token_file_)}"
    )
    typer.echo(format_exports(env))


def status(
    address: str | None = typer.Option(
        None,
        "--address",
        metavar="URL",
        help="The head's dashboard (job API), e.g. http://HEAD:8265 (or ray://HOST:10001, HOST:6379, auto). "
        "Default: RAY_API_SERVER_ADDRESS, then RAY_ADDRESS, then a cluster started on this machine.",
    ),
):
    """Show a running Ray cluster: its nodes and their resources (free/total, custom ones too), its jobs and
    its Serve applications.

    It reads everything through the head's dashboard (port 8265, the same door as `ray job submit`), so
    an SSH tunnel to 8265 is enough: `ray dashboard cluster.yaml`, then `raylens status --address
    http://localhost:8265`. A cluster with token auth needs `eval "$(raylens cluster env)"` first.
    """
    from raylens.ray_cluster import gather_status

    console = Console()
    try:
        found = gather_status(address)
    except (ClusterUnreachableError, ValueError) as e:
        Console(stderr=True).print(f"[bold red]Error:[/bold red] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    render_status(found, console)


def _resources(total: dict[str, float], available: dict[str, float] | None, *, free: bool = True) -> str:
    """``CPU 1/2, probe 1/1, memory 3.1GiB/4.0GiB``: free/total (``?`` where the cluster did not say), or
    totals alone; CPU and GPU first, memory last, Ray's internal ``node:*`` markers left out."""
    parts = []
    for name in sorted(total, key=lambda n: (n not in ("CPU", "GPU"), n in ("memory", "object_store_memory"), n)):
        if name.startswith("node:"):
            continue
        amount = format_quantity(name, total[name])
        if free:
            left = "?" if available is None or name not in available else format_quantity(name, available[name])
            amount = f"{left}/{amount}"
        parts.append(f"{name} {amount}")
    return ", ".join(parts)


def render_status(found: ClusterStatus, console: Console) -> None:
    """Print a :class:`~raylens.cluster.ClusterStatus` as three tables (nodes, jobs, Serve applications)."""
    alive = found.alive_nodes
    console.print(
        f"[bold]Ray cluster at {found.address}[/bold]: {len(alive)} alive node(s)"
        + (f", {len(found.nodes) - len(alive)} dead" if len(found.nodes) > len(alive) else ""),
        highlight=False,
    )
    nodes = Table(title="Nodes (resources: free/total)", title_justify="left")
    for col in ("node", "ip", "role", "state", "resources"):
        nodes.add_column(col, overflow="fold")
    for n in found.nodes:
        nodes.add_row(
            n.short_id,
            n.ip,
            "head" if n.is_head else "worker",
            "ALIVE" if n.alive else "DEAD",
            _resources(n.resources_total, n.resources_available) if n.alive else "",
        )
    console.print(nodes)
    console.print(f"cluster total: {_resources(found.totals(), None, free=False)}", highlight=False)

    if found.jobs:
        jobs = Table(title="Jobs", title_justify="left")
        for col in ("id", "type", "status", "entrypoint"):
            jobs.add_column(col, overflow="fold")
        for j in found.jobs:
            jobs.add_row(j.job_id, j.kind.lower(), j.status, j.short_entrypoint())
        console.print(jobs)
    else:
        console.print("Jobs: none (submit one with `ray job submit --working-dir . -- raylens train ...`)")

    if found.serve_apps:
        apps = Table(title="Serve applications (replicas: running/target)", title_justify="left")
        for col in ("application", "status", "route", "deployments"):
            apps.add_column(col, overflow="fold")
        for a in found.serve_apps:
            deps = "\n".join(f"{d.name} {d.status} {d.running_replicas}/{d.target_replicas}" for d in a.deployments)
            apps.add_row(a.name, a.status, a.route_prefix or "-", deps or "-")
        console.print(apps)
    else:
        console.print("Serve applications: none (`serve deploy services/raylens_services/search.yaml` starts search)")
    for note in found.notes:
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False)
