"""Starting Ray with embedded defaults: local, quiet, no dashboard, CPU unless a GPU is present."""

from __future__ import annotations

import logging
import os
import re
import socket

__all__ = ["init_ray", "pick_device", "cpus_per_replica", "quiet_logs", "is_ray_noise", "free_port", "free_ports"]

_RAY_NOISE = re.compile(
    "|".join(
        (
            # Ray Train's own PreemptionWatcher actor, logged by the C++ core worker on every run
            r"core_worker\.cc:\d+: Actor with class name: '\w+' .*constructor arguments in the object store",
            r"^Progress bars disabled\. To enable",  # Ray Data, once per process, with bars off on purpose
        )
    )
)


def is_ray_noise(line: str) -> bool:
    """Whether a line a Ray worker printed is Ray's internal chatter a user cannot act on.

    >>> is_ray_noise("[2026-12-01 17:18:56,408 E 1795 1866] core_worker.cc:2465: Actor with class name: "
    ...              "'PreemptionWatcher' and ID: '07a7' has constructor arguments in the object store and ...")
    True
    >>> is_ray_noise("epoch   1/2  loss 1.70"), is_ray_noise("ValueError: bad row")
    (False, False)
    """
    return bool(_RAY_NOISE.search(line))


def pick_device() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"``: the same code path on both."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def init_ray(address: str | None = None, *, num_cpus: int | None = None, quiet: bool = True):
    """Connect to ``address`` (or ``RAY_ADDRESS``) if given, else start a local Ray.

    Local Ray gets the machine's cores (or ``num_cpus``), no dashboard and quiet logs. Calling it
    again while Ray is up does nothing.
    """
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context()
    address = address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    kwargs = dict(
        ignore_reinit_error=True,
        # worker processes (Ray Data's split coordinator, actors) log at WARNING, not INFO
        logging_config=ray.LoggingConfig(log_level="WARNING") if quiet else None,
        logging_level=logging.WARNING if quiet else logging.INFO,
        log_to_driver=True,
    )
    env_vars: dict[str, str] = {}
    if quiet:
        # Ray Train's controller and Ray Data's split coordinator run their own executions: without
        # this, each epoch of a training shard prints a "Dataset ... execution finished" line.
        # Deprecation warnings raised inside Ray's own workers (Ray Data's ExecutionOptions) are Ray's to fix.
        env_vars |= {
            "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
            "RAY_DATA_LOG_LEVEL": "WARNING",
            "PYTHONWARNINGS": "ignore::DeprecationWarning",
        }
    if address:
        if env_vars:
            kwargs["runtime_env"] = {"env_vars": env_vars}
        ctx = ray.init(address=address, **kwargs)
    else:
        # The dashboard serves the state API that Ray Train's placement-group cleaner polls from inside
        # an actor; named here, it finds this Ray even when other Rays run on the machine (otherwise
        # it dies with "Found multiple active Ray instances").
        port = free_port()
        env_vars["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        kwargs["runtime_env"] = {"env_vars": env_vars}
        if quiet:  # a local Ray turns token auth on by itself and says so: nothing for the user to do
            logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        ctx = _start_local(
            lambda: ray.init(num_cpus=num_cpus, dashboard_host="127.0.0.1", dashboard_port=port, **kwargs)
        )
    _quiet_progress(quiet)
    if quiet:
        _filter_worker_logs()
    from raylens.data.ray_limits import ask_again_while_empty

    ask_again_while_empty()
    return ctx


LOCAL_START_TRIES = 3


def _start_local(start):
    """``start()`` (a local ``ray.init``), tried again when the raylet misses Ray's fixed 30 s start-up
    window, which a heavily loaded machine can (Ray's own processes start slowly)."""
    import ray

    for attempt in range(1, LOCAL_START_TRIES + 1):
        try:
            return start()
        except Exception as e:
            if "timed out during startup" not in str(e):
                raise
            ray.shutdown()
            if attempt == LOCAL_START_TRIES:
                raise RuntimeError(
                    f"a local Ray did not start in {LOCAL_START_TRIES} tries of 30 s ({e}); the machine is "
                    "too loaded: stop other jobs, or start Ray yourself (ray start --head) and pass its address"
                ) from e
            logging.getLogger("raylens").warning("Ray's start-up timed out on a loaded machine; trying again")


FREE_PORT_RANGE = (20000, 29999)
"""Where :func:`free_ports` looks: below the kernel's ephemeral range (32768-60999 on Linux), from which
outgoing connections take their source ports (a port the OS hands out there can be taken by one of
Ray's connections before the server binds it), and clear of Ray's worker ports (10002-19999) and
Serve's direct-ingress ports (30000-31000 HTTP)."""


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports nothing listens on right now, in :data:`FREE_PORT_RANGE`.

    >>> a, b = free_ports(2)
    >>> a != b and all(FREE_PORT_RANGE[0] <= p <= FREE_PORT_RANGE[1] for p in (a, b))
    True
    """
    import random

    rng, ports = random.Random(), []  # unseeded: concurrent callers pick differently
    for _ in range(64 * n):
        port = rng.randint(*FREE_PORT_RANGE)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:  # in use (or in TIME_WAIT)
                continue
        if port not in ports:
            ports.append(port)
        if len(ports) == n:
            return ports
    raise OSError(f"no {n} free TCP ports on {host} in {FREE_PORT_RANGE[0]}-{FREE_PORT_RANGE[1]}; free some")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (see :func:`free_ports`)."""
    return free_ports(1, host)[0]


def _filter_worker_logs() -> None:
    """Drop :func:`is_ray_noise` lines from what Ray's workers print to this driver's console (the
    workers' log files keep everything)."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:  # pragma: no cover - other Ray versions: the console stays as Ray prints it
        return
    with dispatcher._lock:
        wrapped = []
        for name, handler in dispatcher.handlers:
            if name == "ray_print_logs" and not getattr(handler, "raylens_filtered", False):
                handler = _without_noise(handler)
            wrapped.append((name, handler))
        dispatcher.handlers = wrapped


def _without_noise(handler):
    def handle(data):
        lines = [line for line in data.get("lines", []) if not is_ray_noise(line)]
        if lines:
            handler({**data, "lines": lines})

    handle.raylens_filtered = True
    return handle


def quiet_logs() -> None:
    """Keep INFO chatter out of the console, in the driver and in Ray workers: open_clip's tokenizer
    notes, Ray Train's per-report lines, Ray Data's 'progress bars disabled' notice."""
    import warnings

    logging.getLogger().setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*all_gather is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\.")  # Ray's internals, Ray's to fix
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    logging.getLogger("ray.data._internal.execution.streaming_executor").setLevel(logging.WARNING)
    try:
        from ray.train.v2._internal.execution import context as _train_ctx

        logging.getLogger(_train_ctx.__file__).setLevel(logging.WARNING)  # Ray names this logger by file
    except ImportError:  # pragma: no cover - other Ray versions
        pass


def _quiet_progress(quiet: bool) -> None:
    """Ray Data's per-operator bars flood logs and non-terminals; raylens shows its own progress."""
    import sys

    from ray.data import DataContext

    ctx = DataContext.get_current()
    if quiet or not sys.stderr.isatty():
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
    if quiet:
        quiet_logs()


def cpus_per_replica(replicas: int, *, reserve_for_data: float = 1.0) -> float:
    """CPUs to give each of ``replicas`` model replicas (train workers, embedding actors) so that
    Ray Data keeps ``reserve_for_data`` CPUs for the reading and decoding that feeds them.

    With every CPU taken by replicas, the streaming ingest feeding them gets none and the run
    stalls. On a 2-core machine with 2 replicas this gives 0.5 CPU each; never more than 1.
    """
    import ray

    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    total = ray.cluster_resources().get("CPU", 1.0)
    return max(0.25, min(1.0, (total - reserve_for_data) / replicas))
