"""``raylens cluster env`` + ``raylens status`` against a real head started with ``ray start --head`` and token auth.

The head is a :class:`tests.local_cluster.LocalCluster`: its own process group, HOME, temp dir and
ports, so it never meets the session's Ray (``ray_session``) or another cluster on the machine, and it
is stopped by signalling that group (never a global ``ray stop``), even when the test fails.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.local_cluster import BIN, RAY_VARS, LocalCluster

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _raylens(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BIN / "raylens", *args], env=env | {"COLUMNS": "200"}, capture_output=True, text=True, timeout=300, cwd=cwd
    )


def test_status_and_env_against_a_head_with_token_auth():
    with LocalCluster([{"num_cpus": 1, "resources": {"probe": 1}}]) as cluster:
        (node,) = cluster.alive_nodes()
        address = cluster.dashboard.removeprefix("http://")
        token = cluster.token
        # the head's own shell: the token file in HOME, but no RAY_AUTH_MODE (a user who has not read the README)
        bare = {k: v for k, v in os.environ.items() if k not in RAY_VARS} | {"HOME": str(cluster.home)}

        # without the token the cluster refuses, and raylens says how to get it (no traceback)
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://{address}/api/jobs/", timeout=10)
        refused = _raylens(["status", "--address", address], bare, cluster.root)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "raylens cluster env" in refused.stderr and "Traceback" not in refused.stderr

        # `raylens cluster env` prints the token of this HOME, ready for a shell
        printed = _raylens(["cluster", "env", "--address", address], bare, cluster.root)
        assert printed.returncode == 0, printed.stderr
        assert f"export RAY_AUTH_TOKEN={token}" in printed.stdout
        exports = dict(
            line.removeprefix("export ").split("=", 1)
            for line in printed.stdout.splitlines()
            if line.startswith("export ")
        )
        assert exports["RAY_AUTH_MODE"] == "token" and exports["RAY_API_SERVER_ADDRESS"] == f"http://{address}"

        # a job, so the jobs table has a row; then status with only what `cluster env` printed (no --address)
        client = {k: v for k, v in os.environ.items() if k not in RAY_VARS} | {"HOME": str(cluster.root)} | exports
        submitted = subprocess.run(
            [BIN / "ray", "job", "submit", "--submission-id", "raylens-probe-job", "--", "echo", "hello"],
            env=client, capture_output=True, text=True, timeout=300, cwd=cluster.root,
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        shown = _raylens(["status"], client, cluster.root)
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
