"""``raylens cluster env`` + ``raylens status`` against a real head started with ``ray start --head`` and token auth.

The head runs in its own process group, HOME, temp dir and ports, so it never meets the session's
Ray (``ray_session``) or another cluster on the machine; it is stopped by signalling that group
(never a global ``ray stop``, which would kill every Ray on the machine), even when the test fails.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

BIN = Path(sys.executable).parent
RAY_VARS = (
    "RAY_ADDRESS",
    "RAY_API_SERVER_ADDRESS",
    "RAY_DASHBOARD_ADDRESS",
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN",
    "RAY_AUTH_TOKEN_PATH",
)


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _stop_group(proc: subprocess.Popen, grace_s: float = 40.0) -> None:
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


@contextmanager
def _head(home: Path, tmp: Path):
    """A one-CPU head with a custom resource `probe`, token auth on (a token exists before it starts)."""
    env = {k: v for k, v in os.environ.items() if k not in RAY_VARS} | {"HOME": str(home)}
    subprocess.run([BIN / "ray", "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=120)
    gcs, dash, client, agent, agent_grpc, metrics = _free_ports(6)
    log = (tmp / "head.log").open("w")
    proc = subprocess.Popen(
        [
            BIN / "ray", "start", "--head", "--block", f"--port={gcs}", "--num-cpus=1", "--num-gpus=0",
            '--resources={"probe": 1}', f"--temp-dir={tmp / 'ray'}", "--include-dashboard=true",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
            f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--metrics-export-port={metrics}", "--disable-usage-stats",
        ],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp,
    )  # fmt: skip
    try:
        yield proc, dash, env
    finally:
        _stop_group(proc)
        log.close()


def _get(url: str, token: str | None) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
        return json.loads(r.read())


def _wait_for_node(dash: int, token: str, proc: subprocess.Popen, log: Path, timeout_s: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"ray start exited early:\n{log.read_text()[-3000:]}"
        try:
            nodes = _get(f"http://127.0.0.1:{dash}/api/v0/nodes", token)["data"]["result"]["result"]
            if any(n["state"] == "ALIVE" for n in nodes):
                return next(n for n in nodes if n["state"] == "ALIVE")
        except (urllib.error.URLError, OSError, KeyError, ValueError):
            pass
        time.sleep(1)
    raise AssertionError(f"the head's dashboard did not list a live node in {timeout_s} s:\n{log.read_text()[-3000:]}")


def _raylens(args: list[str], env: dict[str, str], tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BIN / "raylens", *args], env=env | {"COLUMNS": "200"}, capture_output=True, text=True, timeout=300, cwd=tmp
    )


def test_status_and_env_against_a_head_with_token_auth():
    with ExitStack() as stack:
        # short paths: Ray's unix sockets live under --temp-dir and must stay under ~107 characters
        tmp = Path(tempfile.mkdtemp(prefix="rl-cs-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        home = tmp / "home"
        home.mkdir()
        proc, dash, env = stack.enter_context(_head(home, tmp))
        token = (home / ".ray" / "auth_token").read_text().strip()
        node = _wait_for_node(dash, token, proc, tmp / "head.log")
        address = f"127.0.0.1:{dash}"

        # without the token the cluster refuses, and raylens says how to get it (no traceback)
        with pytest.raises(urllib.error.HTTPError):
            _get(f"http://{address}/api/jobs/", None)
        refused = _raylens(["status", "--address", address], env, tmp)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "raylens cluster env" in refused.stderr and "Traceback" not in refused.stderr

        # `raylens cluster env` prints the token of this HOME, ready for a shell
        printed = _raylens(["cluster", "env", "--address", address], env, tmp)
        assert printed.returncode == 0, printed.stderr
        assert f"export RAY_AUTH_TOKEN={token}" in printed.stdout
        exports = dict(
            line.removeprefix("export ").split("=", 1)
            for line in printed.stdout.splitlines()
            if line.startswith("export ")
        )
        assert exports["RAY_AUTH_MODE"] == "token" and exports["RAY_API_SERVER_ADDRESS"] == f"http://{address}"

        # a job, so the jobs table has a row; then status with only what `cluster env` printed (no --address)
        client_env = {k: v for k, v in env.items() if k != "HOME"} | {"HOME": str(tmp)} | exports  # not the head's HOME
        submitted = subprocess.run(
            [BIN / "ray", "job", "submit", "--submission-id", "raylens-probe-job", "--", "echo", "hello"],
            env=client_env, capture_output=True, text=True, timeout=300, cwd=tmp,
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        shown = _raylens(["status"], client_env, tmp)
        assert shown.returncode == 0, shown.stdout + shown.stderr
        out = shown.stdout
        row = next((line for line in out.splitlines() if node["node_id"][:8] in line), None)
        assert row is not None, f"node {node['node_id'][:8]} missing from:\n{out}"
        assert node["node_ip"] in row and "head" in row and "ALIVE" in row
        assert "CPU 1/1" in row and "probe 1/1" in row, row  # the custom resource, free/total
        assert "cluster total: CPU 1, probe 1" in out
        assert "raylens-probe-job" in out and "SUCCEEDED" in out and "echo hello" in out
        assert "Serve applications: none" in out
        print(shlex.join(["raylens", "status"]), "\n", out)
