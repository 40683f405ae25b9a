"""``raylens cluster env`` (the client side of Ray's token auth) and ``raylens status``'s output, without a cluster.

A live cluster (token auth on, a custom resource, a job) is in tests/ray/test_cluster_status.py.
"""

from __future__ import annotations

import io
import socket
import subprocess

import pytest
from rich.console import Console
from typer.testing import CliRunner

from raylens.cli_cluster import cluster_app, render_status
from raylens.cluster import (
    AuthTokenError,
    ClusterStatus,
    DeploymentStatus,
    JobStatus,
    NodeStatus,
    ServeAppStatus,
    client_env,
    dashboard_url,
    read_auth_token,
)

TOKEN = "9f2c4e8a1b7d4c3e8f6a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e"
runner = CliRunner()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A HOME of our own, with no Ray token variables from the machine running the tests."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN", "RAY_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def _write_token(home, text=TOKEN):
    path = home / ".ray" / "auth_token"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_env_prints_mode_and_the_heads_token_from_the_default_file(home):
    path = _write_token(home, TOKEN + "\n")  # `ray get-auth-token` output ends with a newline
    result = runner.invoke(cluster_app, ["env"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("#") and str(path) in lines[0]
    assert lines[1:] == ["export RAY_AUTH_MODE=token", f"export RAY_AUTH_TOKEN={TOKEN}"]


def test_env_output_is_shell_ready(home):
    """What `eval "$(raylens cluster env --address ...)"` leaves in a real shell."""
    _write_token(home, "tok'en$with`odd\"chars")  # one word, but every quoting trap a shell has
    result = runner.invoke(cluster_app, ["env", "--address", "head.internal"])
    assert result.exit_code == 0, result.output
    shell = subprocess.run(
        [
            "bash",
            "-c",
            'eval "$EXPORTS"; printf "%s|%s|%s|%s" "$RAY_AUTH_MODE" "$RAY_AUTH_TOKEN" '
            '"$RAY_API_SERVER_ADDRESS" "$RAY_DASHBOARD_ADDRESS"',
        ],
        env={"EXPORTS": result.stdout, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    url = "http://head.internal:8265"
    assert shell.stdout == f"token|tok'en$with`odd\"chars|{url}|{url}"


def test_env_token_file_option_and_ray_auth_token_path(home, monkeypatch):
    other = home / "head_token"
    other.write_text("from-option")
    by_env = home / "env_token"
    by_env.write_text("from-env")
    _write_token(home, "from-default")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(by_env))
    assert "RAY_AUTH_TOKEN=from-env" in runner.invoke(cluster_app, ["env"]).stdout  # Ray's own order
    result = runner.invoke(cluster_app, ["env", "--token-file", str(other)])
    assert "RAY_AUTH_TOKEN=from-option" in result.stdout and str(other) in result.stdout


def test_env_missing_token_file_names_the_file_and_the_fix(home):
    result = runner.invoke(cluster_app, ["env"])
    assert result.exit_code == 1
    assert result.stdout == ""  # nothing for `eval` to run
    message = " ".join(result.stderr.split())
    assert str(home / ".ray" / "auth_token") in message
    assert "ray get-auth-token --generate" in message and "ray start --head" in message
    assert "ray exec cluster.yaml 'cat ~/.ray/auth_token'" in message
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("content", "said"),
    [("", "is empty"), ("  \n\t\n", "is empty"), ("two words", "more than one word")],
)
def test_env_refuses_an_unusable_token_file(home, content, said):
    _write_token(home, content)
    result = runner.invoke(cluster_app, ["env"])
    assert result.exit_code == 1 and said in " ".join(result.stderr.split())
    assert result.stdout == ""


def test_env_refuses_a_directory_and_a_bad_address(home):
    (home / "tokdir").mkdir()
    result = runner.invoke(cluster_app, ["env", "--token-file", str(home / "tokdir")])
    assert result.exit_code == 1 and "not a regular file" in result.stderr
    _write_token(home)
    result = runner.invoke(cluster_app, ["env", "--address", "ray://head:10001"])
    assert result.exit_code == 2 and "http://HOST:8265" in " ".join(result.output.split())


def test_env_help_teaches_the_token_setup():
    text = " ".join(runner.invoke(cluster_app, ["env", "--help"], terminal_width=200).stdout.split())
    for needed in (
        "RAY_AUTH_MODE=token",
        "eval",
        "--token-file",
        "--address",
        "ray get-auth-token --generate",
        "AuthenticationError",
        "credential",
    ):
        assert needed in text, needed


def test_token_reading_and_env_building_directly(home):
    with pytest.raises(AuthTokenError, match="no Ray auth token file"):
        read_auth_token(home / "nope")
    assert read_auth_token(_write_token(home, f"\n{TOKEN}\n")) == TOKEN
    assert client_env(TOKEN) == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN}
    with pytest.raises(ValueError, match="one non-empty word"):
        client_env("")
    assert dashboard_url("http://10.0.0.7:8265/") == "http://10.0.0.7:8265"
    assert dashboard_url("10.0.0.7:18265") == "http://10.0.0.7:18265"
    for bad in ("", "ray://h:10001", "http://", "h:port"):
        with pytest.raises(ValueError):
            dashboard_url(bad)


def _status() -> ClusterStatus:
    gib = 2.0**30
    return ClusterStatus(
        address="http://127.0.0.1:8265",
        nodes=(
            NodeStatus(
                "b" * 56,
                "10.0.0.2",
                alive=True,
                resources_total={"CPU": 96.0, "GPU": 8.0, "memory": 4 * gib, "node:10.0.0.2": 1.0},
                resources_available={"CPU": 90.0, "GPU": 0.0, "memory": 3 * gib, "node:10.0.0.2": 1.0},
            ),
            NodeStatus(
                "a1b2c3d4" + "0" * 48,
                "10.0.0.1",
                alive=True,
                is_head=True,
                resources_total={"CPU": 8.0, "probe": 1.0, "node:__internal_head__": 1.0},
                resources_available=None,
            ),
            NodeStatus("c" * 56, "10.0.0.3", alive=False, resources_total={"CPU": 8.0}),
        ),
        jobs=(
            JobStatus("raysubmit_abc", "RUNNING", "raylens train clip digits --eval digits " + "--workers 8 " * 8),
            JobStatus("02000000", "SUCCEEDED", "python driver.py", kind="DRIVER"),
        ),
        serve_apps=(
            ServeAppStatus(
                "raylens-search",
                "RUNNING",
                "/",
                (
                    DeploymentStatus("SearchIngress", "HEALTHY", 1, 1),
                    DeploymentStatus("ClipEmbedder", "UPSCALING", 2, 3),
                ),
            ),
        ),
        notes=("free resources unknown: test",),
    )


def test_status_tables_show_nodes_resources_jobs_and_serve_apps():
    out = io.StringIO()
    render_status(_status(), Console(file=out, width=250, color_system=None))
    text = out.getvalue()
    assert "Ray cluster at http://127.0.0.1:8265: 2 alive node(s), 1 dead" in text
    head_row = next(line for line in text.splitlines() if "a1b2c3d4" in line)
    assert "10.0.0.1" in head_row and "head" in head_row and "ALIVE" in head_row
    assert "CPU ?/8, probe ?/1" in head_row  # free amounts the cluster did not give are "?", never guessed
    gpu_row = next(line for line in text.splitlines() if "bbbbbbbb" in line)
    assert "CPU 90/96, GPU 0/8, memory 3.0GiB/4.0GiB" in gpu_row and "worker" in gpu_row
    assert "node:" not in text  # Ray's internal per-node markers are left out
    assert "a1b2c3d40000" not in text  # ids are shortened
    assert "DEAD" in next(line for line in text.splitlines() if "cccccccc" in line)
    assert "cluster total: CPU 104, GPU 8, probe 1, memory 4.0GiB" in text  # alive nodes only
    assert (
        "raysubmit_abc" in text
        and "RUNNING" in text
        and "…" in text
        and "--workers 8 --workers 8 --workers 8 --workers 8 --workers 8" not in text
    )
    assert "02000000" in text and "driver" in text
    assert "raylens-search" in text and "SearchIngress HEALTHY 1/1" in text and "ClipEmbedder UPSCALING 2/3" in text
    assert "note: free resources unknown: test" in text


def test_status_of_an_empty_cluster_says_how_to_add_work():
    out = io.StringIO()
    render_status(ClusterStatus("http://h:8265", nodes=()), Console(file=out, width=200, color_system=None))
    text = out.getvalue()
    assert "Jobs: none" in text and "ray job submit" in text and "Serve applications: none" in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_status_without_a_cluster_says_so_and_how_to_start_one(monkeypatch):
    from raylens.cli import app  # `raylens status` as mounted in the real CLI

    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    result = runner.invoke(app, ["status", "--address", f"http://127.0.0.1:{_free_port()}"])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)  # an exit, not an escaped exception
    message = " ".join(result.stderr.split())
    assert "no Ray cluster answered" in message and "ray start --head" in message and "--address" in message
    assert "Traceback" not in result.output


def test_cluster_and_status_are_mounted_in_raylens():
    from raylens.cli import app

    text = runner.invoke(app, ["--help"], terminal_width=200).stdout
    assert "cluster" in text and "status" in text
    assert runner.invoke(app, ["cluster", "env", "--help"]).exit_code == 0
