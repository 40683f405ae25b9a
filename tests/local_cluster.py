"""A throwaway multi-node Ray cluster on this machine, for tests: one ``ray start --block`` per node.

Each cluster has its own HOME (so its own ``~/.ray/auth_token``: token authentication is on, as on a
real Ray 2.60 cluster), temp dir and free ports on 127.0.0.1, so it never meets the test session's
Ray or another cluster. It is stopped by signalling each node's own process group, never with a
global ``ray stop`` (which kills every Ray on the machine), even when the test fails.

    with LocalCluster([{"num_cpus": 2, "resources": {"node_a": 1}}, {"num_cpus": 2}]) as cluster:
        job = cluster.submit(["raylens", "train", ...], working_dir=REPO)
        assert job.status == "SUCCEEDED", job.logs
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raylens.runtime import free_ports

BIN = Path(sys.executable).parent
RAY_VARS = (
    "RAY_ADDRESS",
    "RAY_API_SERVER_ADDRESS",
    "RAY_DASHBOARD_ADDRESS",
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN",
    "RAY_AUTH_TOKEN_PATH",
)
"""Variables of the caller's environment a cluster (or its clients) must not inherit."""


def stop_group(proc: subprocess.Popen, grace_s: float = 40.0) -> None:
    """`ray start --block` shuts its node down on SIGTERM; whatever is left of its group is killed after."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


@dataclass
class Job:
    """A finished (or stopped) job: its id, final status and logs."""

    id: str
    status: str
    logs: str


class LocalCluster:
    """Nodes on this machine: the first is the head (dashboard on 127.0.0.1), the others join it.

    Each node spec: ``num_cpus`` (default 1) and ``resources`` (custom resources, default none).
    """

    def __init__(self, nodes: Sequence[Mapping[str, Any]], *, boot_timeout_s: float = 180.0):
        if not nodes:
            raise ValueError("a cluster needs at least one node (the head)")
        self.specs = [dict(n) for n in nodes]
        self.boot_timeout_s = boot_timeout_s
        # short paths: Ray's unix sockets live under the temp dir and must stay under ~107 characters
        self.root = Path(tempfile.mkdtemp(prefix="rl-mn-"))
        self.home = self.root / "home"
        self.home.mkdir()
        self.procs: list[subprocess.Popen] = []
        self.gcs_port, self.dash_port = free_ports(2)

    # -- addresses and environments -------------------------------------------------------------
    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dash_port}"

    @property
    def token(self) -> str:
        return (self.home / ".ray" / "auth_token").read_text().strip()

    def node_env(self) -> dict[str, str]:
        """What every node process runs with: token auth, this HOME, raylens on PATH, and this cluster's
        API server named (Ray Train's placement-group cleaner asks the state API, which would
        otherwise find several Rays on this machine and refuse to pick one)."""
        env = {k: v for k, v in os.environ.items() if k not in RAY_VARS}
        return env | {
            "HOME": str(self.home),
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            "RAY_AUTH_MODE": "token",
            "RAY_API_SERVER_ADDRESS": self.dashboard,
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        }

    def client_env(self) -> dict[str, str]:
        """A client's environment, as the README tells users to set it (not the head's HOME)."""
        env = {k: v for k, v in os.environ.items() if k not in RAY_VARS}
        client_home = self.root / "client"
        client_home.mkdir(exist_ok=True)
        return env | {
            "HOME": str(client_home),
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            "RAY_API_SERVER_ADDRESS": self.dashboard,
            "RAY_DASHBOARD_ADDRESS": self.dashboard,
        }

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        env = self.node_env()
        subprocess.run(
            [BIN / "ray", "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=120
        )
        for i, spec in enumerate(self.specs):
            agent, agent_grpc, metrics, runtime_env = free_ports(4)
            args = [
                str(BIN / "ray"), "start", "--block", f"--num-cpus={spec.get('num_cpus', 1)}", "--num-gpus=0",
                f"--resources={json.dumps(spec.get('resources', {}))}",
                f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
                f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
                "--disable-usage-stats",
            ]  # fmt: skip
            if i == 0:
                (client,) = free_ports(1)
                args += [
                    "--head", f"--port={self.gcs_port}", f"--temp-dir={self.root / 'ray'}",
                    "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dash_port}",
                    f"--ray-client-server-port={client}",
                ]  # fmt: skip
            else:
                args.append(f"--address=127.0.0.1:{self.gcs_port}")
            log = (self.root / f"node{i}.log").open("w")
            self.procs.append(
                subprocess.Popen(
                    args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root
                )
            )
            log.close()
            self.wait_for_nodes(i + 1)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop_group(proc)
        self.procs.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def logs(self) -> str:
        return "\n".join(
            f"--- node{i}.log ---\n{p.read_text()[-3000:]}" for i, p in enumerate(sorted(self.root.glob("node*.log")))
        )

    # -- the dashboard's API -------------------------------------------------------------------
    def get(self, path: str) -> Any:
        request = urllib.request.Request(f"{self.dashboard}{path}", headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.loads(r.read())

    def alive_nodes(self) -> list[dict]:
        """The live nodes as the state API lists them (``node_id``, ``resources_total``, ``is_head_node``)."""
        nodes = self.get("/api/v0/nodes?detail=1&limit=100")["data"]["result"]["result"]
        return [n for n in nodes if n["state"] == "ALIVE"]

    def wait_for_nodes(self, n: int) -> list[dict]:
        deadline = time.monotonic() + self.boot_timeout_s
        while time.monotonic() < deadline:
            for i, proc in enumerate(self.procs):
                if proc.poll() is not None:
                    raise RuntimeError(f"node {i}'s `ray start` exited early:\n{self.logs()}")
            try:
                nodes = self.alive_nodes()
                if len(nodes) >= n:
                    return nodes
            except (urllib.error.URLError, OSError, KeyError, ValueError):
                pass
            time.sleep(1)
        raise RuntimeError(f"the cluster did not list {n} live node(s) in {self.boot_timeout_s} s:\n{self.logs()}")

    def node_of(self, resource: str) -> str:
        """The id of the node that has the custom resource ``resource``."""
        for n in self.alive_nodes():
            if resource in n.get("resources_total", {}):
                return n["node_id"]
        raise KeyError(f"no live node has the resource {resource!r}")

    def actors(self, class_name: str) -> list[dict]:
        """Actors (alive or dead) whose class name contains ``class_name``, with their ``node_id``."""
        out = self.get("/api/v0/actors?detail=1&limit=10000")["data"]["result"]["result"]
        return [a for a in out if class_name in a.get("class_name", "")]

    def tasks(self, name: str) -> list[dict]:
        """Task attempts whose function name contains ``name``, with their ``node_id``."""
        out = self.get("/api/v0/tasks?detail=1&limit=10000")["data"]["result"]["result"]
        return [t for t in out if name in t.get("name", "") or name in t.get("func_or_class_name", "")]

    # -- jobs ------------------------------------------------------------------------------------
    def ray_cli(self, *args: str, timeout: float = 900, cwd: Path | None = None) -> subprocess.CompletedProcess:
        """``ray ARGS`` as a client with the README's token set-up."""
        return subprocess.run(
            [str(BIN / "ray"), *args],
            env=self.client_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd or self.root,
        )

    def submit(
        self,
        entrypoint: Sequence[str],
        *,
        submission_id: str,
        working_dir: Path | None = None,
        wait: bool = True,
        timeout: float = 900,
    ) -> Job | None:
        """``ray job submit`` as the README shows it; with ``wait``, the finished job."""
        args = ["job", "submit", "--submission-id", submission_id]
        if working_dir is not None:
            args += ["--working-dir", str(working_dir)]
        if not wait:
            args.append("--no-wait")
        done = self.ray_cli(*args, "--", *entrypoint, timeout=timeout)
        if not wait:
            if done.returncode != 0:
                raise RuntimeError(f"ray job submit failed:\n{done.stdout}\n{done.stderr}")
            return None
        return self.job(submission_id)

    def stop_job(self, submission_id: str) -> None:
        """What ``ray job stop`` does, through the same HTTP API (without the CLI's seconds of start-up)."""
        request = urllib.request.Request(
            f"{self.dashboard}/api/jobs/{submission_id}/stop",
            method="POST",
            headers={"Authorization": f"Bearer {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=30) as r:
            if not json.loads(r.read()).get("stopped", False):
                raise RuntimeError(f"job {submission_id} was not running, so it was not stopped")

    def job_status(self, submission_id: str) -> str:
        return self.get(f"/api/jobs/{submission_id}")["status"]

    def job(self, submission_id: str) -> Job:
        logs = self.get(f"/api/jobs/{submission_id}/logs")["logs"]
        return Job(submission_id, self.job_status(submission_id), logs)

    def wait_job(self, submission_id: str, timeout_s: float = 900) -> Job:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.job_status(submission_id) in ("SUCCEEDED", "FAILED", "STOPPED"):
                return self.job(submission_id)
            time.sleep(2)
        raise TimeoutError(f"job {submission_id} did not finish in {timeout_s} s")
