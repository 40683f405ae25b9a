"""Rivals run in bench-only environments: a separate venv per rival, never raylens' own.

:func:`ensure_env` creates ``~/.cache/raylens/bench-envs/NAME`` (``RAYLENS_BENCH_ENVS`` moves it) with
``python -m venv`` and installs the rival's pinned requirements with pip, once: a later run whose
requirements are the same reuses it. :func:`run_script` runs a rival script (a standalone file in
``_rivals/``, which imports nothing from raylens) with that venv's python in a subprocess of its own
process group, with a timeout; the script writes its figures as JSON. Whatever goes wrong (the
install, the script, the timeout) raises :class:`RivalFailed` with the exact reason, and
:func:`measure_rival` turns that into a :class:`~raylens.bench.Rival` with ``value=None`` and the
reason as its note: a rival that cannot be installed or cannot finish is a result, never a crash.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from raylens.bench import Rival

__all__ = ["BENCH_ENVS", "RIVAL_SCRIPTS", "RivalFailed", "ensure_env", "measure_rival", "run_script"]

RIVAL_SCRIPTS = Path(__file__).with_name("_rivals")
"""The rival scripts, run with a bench env's python (they import numpy and the rival, not raylens)."""


def bench_envs_root() -> Path:
    return Path(os.environ.get("RAYLENS_BENCH_ENVS") or Path.home() / ".cache" / "raylens" / "bench-envs")


BENCH_ENVS = bench_envs_root()


class RivalFailed(RuntimeError):
    """The rival could not be installed, failed or ran out of time; the message says which and why."""


def _tail(text: str, n: int = 6, width: int = 600) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip() and not ln.startswith("WARNING: Location")]
    out = " | ".join(lines[-n:])
    return out[-width:]


def ensure_env(name: str, requirements: Sequence[str], *, timeout_s: float = 1800.0, root: Path | None = None) -> Path:
    """The python of the bench env ``NAME`` with ``requirements`` installed (created once, then reused).

    Raises :class:`RivalFailed` when the venv cannot be created or pip fails or times out (the env is
    then removed, so the next run tries again from scratch).
    """
    root = Path(root or bench_envs_root())
    env = root / name
    python = env / "bin" / "python"
    stamp = env / ".raylens-requirements"
    want = "\n".join(requirements) + "\n"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two benchmark runs never build the same env at once
        if python.exists() and stamp.exists() and stamp.read_text() == want:
            return python
        shutil.rmtree(env, ignore_errors=True)
        t0 = time.monotonic()
        try:
            subprocess.run(
                [sys.executable, "-m", "venv", str(env)], check=True, capture_output=True, text=True, timeout=300
            )
            left = max(30.0, timeout_s - (time.monotonic() - t0))
            pip = subprocess.run(
                [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *requirements],
                capture_output=True,
                text=True,
                timeout=left,
            )
        except subprocess.TimeoutExpired:
            shutil.rmtree(env, ignore_errors=True)
            raise RivalFailed(
                f"install of {' '.join(requirements)} in a bench env did not finish in {timeout_s:.0f} s"
            ) from None
        except subprocess.CalledProcessError as e:
            shutil.rmtree(env, ignore_errors=True)
            raise RivalFailed(f"python -m venv failed: {_tail(e.stderr or '')}") from None
        if pip.returncode != 0:
            shutil.rmtree(env, ignore_errors=True)
            raise RivalFailed(
                f"pip install {' '.join(requirements)} failed in a bench env (exit {pip.returncode}): "
                f"{_tail(pip.stderr or pip.stdout or '')}"
            )
        stamp.write_text(want)
        return python


def run_script(
    python: Path | str,
    script: str,
    args: Sequence[str],
    *,
    workdir: Path,
    timeout_s: float,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``_rivals/SCRIPT`` with ``python`` (``--out JSON`` added) and return the JSON it wrote.

    The script runs in its own process group; past ``timeout_s`` the whole group is killed and
    :class:`RivalFailed` says so. A non-zero exit raises it with the end of the script's stderr. Its
    output goes to ``workdir/NAME.log``.
    """
    workdir = Path(workdir)
    stem = Path(script).stem
    out = workdir / f"{stem}.result.json"
    log = workdir / f"{stem}.log"
    out.unlink(missing_ok=True)
    cmd = [str(python), str(RIVAL_SCRIPTS / script), "--out", str(out), *args]
    run_env = {**os.environ, "PYTHONNOUSERSITE": "1", **(env or {})}
    run_env.pop("PYTHONPATH", None)  # nothing of raylens' environment leaks into the rival's
    with open(log, "w") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=run_env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise RivalFailed(f"did not finish within the {timeout_s:.0f} s timeout (killed); log: {log}") from None
    if rc != 0:
        reason = f"killed by signal {-rc}" if rc < 0 else f"exited with code {rc}"
        raise RivalFailed(f"{reason}: {_tail(log.read_text(errors='replace'))}")
    try:
        return json.loads(out.read_text())
    except (OSError, ValueError) as e:
        raise RivalFailed(f"wrote no readable result ({type(e).__name__}); log: {log}") from None


def measure_rival(name: str, fn: Callable[[], Rival]) -> Rival:
    """``fn()``, or a :class:`~raylens.bench.Rival` with ``value=None`` and the reason when it fails."""
    t0 = time.perf_counter()
    try:
        return fn()
    except RivalFailed as e:
        return Rival(name, None, end_to_end_s=None, note=str(e))
    except Exception as e:  # a bug in the rival's glue is still the rival's result, not a crash
        return Rival(name, None, end_to_end_s=round(time.perf_counter() - t0, 1), note=f"{type(e).__name__}: {e}")


PROTOCOL = "@@rival "
"""Prefix of the lines a served rival script writes to stdout (anything else there is ignored)."""


class RivalProcess:
    """A rival script that stays up to answer timing requests, so the caller can alternate its timed
    rounds with its own (load from other processes then hurts neither side more than the other).

    The script builds, then writes ``@@rival {json}`` (ready); each ``time`` line on its stdin gets
    ``@@rival {"seconds": s}`` back (one timed run); ``quit`` gets its final JSON and ends it. Past
    ``timeout_s`` before it is ready, or a failure, the whole process group is killed and
    :class:`RivalFailed` says why (with the end of its log).
    """

    def __init__(
        self,
        python: Path | str,
        script: str,
        args: Sequence[str],
        *,
        workdir: Path,
        timeout_s: float,
        env: dict[str, str] | None = None,
    ):
        self.log = Path(workdir) / f"{Path(script).stem}.log"
        self.timeout_s = timeout_s
        run_env = {**os.environ, "PYTHONNOUSERSITE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
        run_env.pop("PYTHONPATH", None)
        self._logf = open(self.log, "w")
        self.proc = subprocess.Popen(
            [str(python), str(RIVAL_SCRIPTS / script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._logf,
            env=run_env,
            start_new_session=True,
        )
        self._buf = b""
        self.ready = self._expect(timeout_s, "building")

    def _expect(self, timeout_s: float, what: str) -> dict[str, Any]:
        import select

        deadline = time.monotonic() + timeout_s
        fd = self.proc.stdout.fileno()
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                text = line.decode(errors="replace")
                if text.startswith(PROTOCOL):
                    return json.loads(text[len(PROTOCOL) :])
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise RivalFailed(
                    f"did not finish {what} within the {timeout_s:.0f} s timeout (killed); log: {self.log}"
                )
            readable, _, _ = select.select([fd], [], [], min(left, 5.0))
            if not readable:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:  # the script ended without answering
                rc = self.proc.wait()
                self._logf.flush()
                reason = f"killed by signal {-rc}" if rc < 0 else f"exited with code {rc}"
                raise RivalFailed(f"{reason} ({what}): {_tail(self.log.read_text(errors='replace'))}")
            self._buf += chunk

    def _send(self, line: str) -> None:
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # _expect reports how it ended

    def time_once(self, timeout_s: float = 600.0) -> float:
        """One timed run in the rival process: its seconds."""
        self._send("time")
        return float(self._expect(timeout_s, "a timed run")["seconds"])

    def close(self, timeout_s: float = 120.0) -> dict[str, Any]:
        """The script's final JSON; the process ends."""
        self._send("quit")
        try:
            return self._expect(timeout_s, "its report")
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self._logf.close()
