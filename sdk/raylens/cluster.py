"""What a client needs to reach a Ray cluster, and what ``raylens status`` shows of one: plain code, no Ray.

Ray 2.60 protects the dashboard's job API (port 8265) and the GCS with one static token when
``RAY_AUTH_MODE=token``. A head started with ``ray start --head`` turns it on by itself when it finds
a token (``RAY_AUTH_TOKEN``, the file named by ``RAY_AUTH_TOKEN_PATH``, or ``~/.ray/auth_token``; a
local ``ray.init()`` writes one there), and then every client (``ray job submit``, ``serve deploy``,
``raylens status``) must send it: the client needs ``RAY_AUTH_MODE=token`` *and* the token, or it gets
``AuthenticationError: Missing authentication token``. :func:`client_env` builds those variables from
the head's token file; ``raylens cluster env`` prints them for a shell.

>>> env = client_env("0" * 64, address="head.example:8265")
>>> print(format_exports(env))
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN=0000000000000000000000000000000000000000000000000000000000000000
export RAY_API_SERVER_ADDRESS=http://head.example:8265
export RAY_DASHBOARD_ADDRESS=http://head.example:8265

The status side (:class:`ClusterStatus`, its nodes, jobs and Serve applications) is filled in by
:func:`raylens.ray_cluster.gather_status` and printed by ``raylens status``.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from raylens.errors import RaylensError

__all__ = [
    "AUTH_MODE_ENV",
    "AUTH_TOKEN_ENV",
    "AUTH_TOKEN_PATH_ENV",
    "API_SERVER_ADDRESS_ENV",
    "DASHBOARD_ADDRESS_ENV",
    "DEFAULT_TOKEN_FILE",
    "DASHBOARD_PORT",
    "AuthTokenError",
    "ClusterUnreachableError",
    "token_file",
    "read_auth_token",
    "dashboard_url",
    "client_env",
    "format_exports",
    "NodeStatus",
    "JobStatus",
    "DeploymentStatus",
    "ServeAppStatus",
    "ClusterStatus",
    "parse_resource_usage",
    "format_quantity",
]

AUTH_MODE_ENV = "RAY_AUTH_MODE"
"""``token`` turns Ray's token authentication on in this process (Ray reads it from the environment only)."""
AUTH_TOKEN_ENV = "RAY_AUTH_TOKEN"
"""The token itself; it wins over any token file."""
AUTH_TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
"""A file holding the token; it wins over ``~/.ray/auth_token``."""
API_SERVER_ADDRESS_ENV = "RAY_API_SERVER_ADDRESS"
"""Where ``ray job ...`` (and ``raylens status``) send requests; before ``RAY_ADDRESS``."""
DASHBOARD_ADDRESS_ENV = "RAY_DASHBOARD_ADDRESS"
"""Where ``serve deploy`` / ``serve status`` send requests."""
DEFAULT_TOKEN_FILE = Path("~/.ray/auth_token")
"""Where ``ray get-auth-token --generate`` and a local ``ray.init()`` write the token."""
DASHBOARD_PORT = 8265

_TOKEN_FIX = (
    "On the head, `ray get-auth-token --generate` writes one to ~/.ray/auth_token before `ray start --head` "
    "(a head started with a token turns token auth on); from your machine, copy the head's: "
    "`ray exec cluster.yaml 'cat ~/.ray/auth_token' | tail -n 1 > head_token` and pass --token-file head_token"
)


class AuthTokenError(RaylensError):
    """No usable Ray auth token where one was expected (missing, unreadable or empty file)."""


class ClusterUnreachableError(RaylensError):
    """No Ray cluster answered at the address, or it refused the request (a missing or wrong token)."""


def token_file(path: str | os.PathLike | None = None, *, environ: Mapping[str, str] | None = None) -> Path:
    """The token file to read: ``path``, else ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token`` (Ray's own order).

    >>> token_file("/etc/ray/token").as_posix()
    '/etc/ray/token'
    >>> token_file(environ={}).name
    'auth_token'
    """
    env = os.environ if environ is None else environ
    chosen = path if path is not None else (env.get(AUTH_TOKEN_PATH_ENV) or DEFAULT_TOKEN_FILE)
    return Path(chosen).expanduser()


def read_auth_token(path: str | os.PathLike | None = None, *, environ: Mapping[str, str] | None = None) -> str:
    """The Ray auth token in the head's token file (see :func:`token_file`), stripped of whitespace.

    Raises :class:`AuthTokenError` naming the file and the fix when it is missing, not a regular
    file, unreadable, empty, or holds more than one word (Ray tokens are a single word).
    """
    file = token_file(path, environ=environ)
    if not file.exists():
        raise AuthTokenError(f"no Ray auth token file at {file}. {_TOKEN_FIX}")
    if not file.is_file():
        raise AuthTokenError(f"{file} is not a regular file, so it holds no Ray auth token. {_TOKEN_FIX}")
    try:
        text = file.read_text(encoding="utf-8", errors="strict")
    except (OSError, UnicodeDecodeError) as e:
        raise AuthTokenError(f"cannot read the Ray auth token file {file}: {e}") from None
    token = text.strip()
    if not token:
        raise AuthTokenError(f"the Ray auth token file {file} is empty. {_TOKEN_FIX}")
    if len(token.split()) != 1:
        raise AuthTokenError(
            f"the Ray auth token file {file} holds more than one word; it must hold only the token "
            "(`ray get-auth-token` prints it)"
        )
    return token


def dashboard_url(address: str) -> str:
    """The dashboard (job API) URL for ``address``: ``HOST``, ``HOST:PORT`` or ``http(s)://HOST[:PORT]``.

    >>> dashboard_url("10.0.0.5"), dashboard_url("localhost:18265"), dashboard_url("https://ray.example/")
    ('http://10.0.0.5:8265', 'http://localhost:18265', 'https://ray.example')
    """
    text = address.strip()
    if not text:
        raise ValueError("the address is empty: give the head's dashboard, e.g. http://HEAD:8265")
    bare = "://" not in text
    parts = urlsplit(f"http://{text}" if bare else text)
    if parts.scheme not in ("http", "https"):
        raise ValueError(
            f"{address!r} is not a dashboard address: give http://HOST:8265 (the dashboard / job API), "
            f"not a {parts.scheme}:// address"
        )
    if not parts.hostname:
        raise ValueError(f"{address!r} has no host: give the head's dashboard, e.g. http://HEAD:8265")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{address!r} has a port that is not a number") from None
    netloc = f"{parts.netloc}:{DASHBOARD_PORT}" if bare and port is None else parts.netloc
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


def client_env(token: str, *, address: str | None = None) -> dict[str, str]:
    """The environment a ``ray job submit`` / ``serve deploy`` / ``raylens status`` client needs for a cluster
    with token auth; with ``address``, also where its dashboard is (``RAY_API_SERVER_ADDRESS`` for the
    jobs CLI, ``RAY_DASHBOARD_ADDRESS`` for Serve's CLI; ``RAY_ADDRESS`` is left alone because
    ``ray.init()`` reads it too and cannot take an http:// address)."""
    if not token or len(token.split()) != 1:
        raise ValueError("token must be one non-empty word (the content of the head's ~/.ray/auth_token)")
    env = {AUTH_MODE_ENV: "token", AUTH_TOKEN_ENV: token}
    if address is not None:
        url = dashboard_url(address)
        env[API_SERVER_ADDRESS_ENV] = url
        env[DASHBOARD_ADDRESS_ENV] = url
    return env


def format_exports(env: Mapping[str, str]) -> str:
    """``export NAME=value`` lines, each value quoted for a POSIX shell where it needs it."""
    return "\n".join(f"export {name}={shlex.quote(value)}" for name, value in env.items())


# --------------------------------------------------------------------------------------------- status


@dataclass(frozen=True)
class NodeStatus:
    """One Ray node as ``raylens status`` shows it."""

    node_id: str
    """The full node id (hex)."""
    ip: str
    """The node's IP address."""
    alive: bool
    """``True`` while the node is up (Ray's ``ALIVE``)."""
    is_head: bool = False
    """Whether this is the head node."""
    resources_total: dict[str, float] = field(default_factory=dict)
    """Every logical resource the node has: ``CPU``, ``GPU``, ``memory``, custom ones (``probe``)."""
    resources_available: dict[str, float] | None = None
    """What is free now, per resource; ``None`` when the cluster did not say."""
    labels: dict[str, str] = field(default_factory=dict)
    """The node's labels (``ray.io/node-id`` and any given at ``ray start --labels``)."""

    @property
    def short_id(self) -> str:
        """The first 8 hex digits of the id (enough to tell nodes apart in a table)."""
        return self.node_id[:8]


@dataclass(frozen=True)
class JobStatus:
    """One job the cluster knows of (submitted with ``ray job submit`` or a driver that connected)."""

    job_id: str
    """The submission id (``raysubmit_...``) of a submitted job, else the driver's job id."""
    status: str
    """``PENDING``, ``RUNNING``, ``STOPPED``, ``SUCCEEDED`` or ``FAILED``."""
    entrypoint: str = ""
    """The command it runs."""
    kind: str = "SUBMISSION"
    """``SUBMISSION`` (``ray job submit``) or ``DRIVER`` (a script that called ``ray.init``)."""
    message: str = ""
    """Ray's last word on it (e.g. why it failed)."""

    def short_entrypoint(self, width: int = 60) -> str:
        """The entrypoint on one line, cut to ``width`` characters with an ellipsis.

        >>> JobStatus("j", "RUNNING", "raylens train clip digits " + "--steps 10 " * 9).short_entrypoint(30)
        'raylens train clip digits --s…'
        """
        text = " ".join(self.entrypoint.split())
        return text if len(text) <= width else text[: width - 1] + "…"


@dataclass(frozen=True)
class DeploymentStatus:
    """One Serve deployment of an application."""

    name: str
    status: str
    """``HEALTHY``, ``UPDATING``, ``UPSCALING``, ``DOWNSCALING`` or ``UNHEALTHY``."""
    running_replicas: int
    """Replicas in the RUNNING state."""
    target_replicas: int
    """How many replicas Serve is aiming for now."""


@dataclass(frozen=True)
class ServeAppStatus:
    """One Serve application."""

    name: str
    status: str
    """``RUNNING``, ``DEPLOYING``, ``DEPLOY_FAILED``, ``UNHEALTHY``, ``DELETING`` or ``NOT_STARTED``."""
    route_prefix: str | None
    """Its HTTP route (``None``: no HTTP ingress)."""
    deployments: tuple[DeploymentStatus, ...] = ()
    message: str = ""


@dataclass(frozen=True)
class ClusterStatus:
    """What ``raylens status`` found at ``address``."""

    address: str
    """The dashboard URL it asked."""
    nodes: tuple[NodeStatus, ...]
    jobs: tuple[JobStatus, ...] = ()
    serve_apps: tuple[ServeAppStatus, ...] = ()
    notes: tuple[str, ...] = ()
    """What could not be read (e.g. Serve's state), said instead of failing the whole status."""

    @property
    def alive_nodes(self) -> tuple[NodeStatus, ...]:
        return tuple(n for n in self.nodes if n.alive)

    def totals(self) -> dict[str, float]:
        """Each resource summed over the alive nodes."""
        out: dict[str, float] = {}
        for node in self.alive_nodes:
            for name, value in node.resources_total.items():
                out[name] = out.get(name, 0.0) + value
        return out


_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "PiB": 2**50}
_QUANTITY = re.compile(r"^([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)(B|KiB|MiB|GiB|TiB|PiB)?$")


def _quantity(text: str) -> float | None:
    match = _QUANTITY.match(text)
    if match is None:
        return None
    return float(match.group(1)) * _UNITS.get(match.group(2) or "", 1)


def parse_resource_usage(text: str) -> dict[str, tuple[float, float]]:
    """``{resource: (used, total)}`` from the dashboard's per-node usage lines (``0.0/1.0 CPU``,
    ``0B/15.83GiB memory``); a line in another shape is left out, so a changed format shows less, never wrong figures.

    >>> parse_resource_usage("0.5/1.0 CPU\\n0B/2.00GiB memory\\n1.0/1.0 probe\\n(no usage)")
    {'CPU': (0.5, 1.0), 'memory': (0.0, 2147483648.0), 'probe': (1.0, 1.0)}
    """
    out: dict[str, tuple[float, float]] = {}
    for line in text.splitlines():
        figures, _, name = line.strip().partition(" ")
        used_text, slash, total_text = figures.partition("/")
        name = name.strip()
        if not slash or not name or " " in name:
            continue
        used, total = _quantity(used_text), _quantity(total_text)
        if used is not None and total is not None:
            out[name] = (used, total)
    return out


_MEMORY = {"memory", "object_store_memory"}


def format_quantity(name: str, value: float) -> str:
    """A resource amount as people read it: memory in GiB, counts without a needless ``.0``.

    >>> format_quantity("CPU", 8.0), format_quantity("GPU", 0.5), format_quantity("memory", 16 * 2**30)
    ('8', '0.5', '16.0GiB')
    """
    if name in _MEMORY:
        return f"{value / 2**30:.1f}GiB"
    return f"{value:g}"
