"""Starting Ray with embedded defaults: local, quiet, no dashboard, CPU unless a GPU is present."""

from __future__ import annotations

import logging
import os

__all__ = ["init_ray", "pick_device", "cpus_per_replica", "quiet_logs"]


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
    if quiet:
        # Ray Train's controller and Ray Data's split coordinator run their own executions: without
        # this, each epoch of a training shard prints a "Dataset ... execution finished" line.
        kwargs["runtime_env"] = {"env_vars": {"RAY_DATA_DISABLE_PROGRESS_BARS": "1", "RAY_DATA_LOG_LEVEL": "WARNING"}}
    if address:
        ctx = ray.init(address=address, **kwargs)
    else:
        # the dashboard also serves the state API that Ray Train's placement-group cleaner polls
        ctx = ray.init(num_cpus=num_cpus, **kwargs)
    _quiet_progress(quiet)
    return ctx


def quiet_logs() -> None:
    """Keep INFO chatter out of the console, in the driver and in Ray workers: open_clip's tokenizer
    notes, Ray Train's per-report lines, Ray Data's 'progress bars disabled' notice."""
    import warnings

    logging.getLogger().setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*all_gather is deprecated", category=FutureWarning)
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
