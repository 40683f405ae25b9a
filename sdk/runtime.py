"""Starting Ray with embedded defaults: local, quiet, no dashboard, CPU unless a GPU is present."""

from __future__ import annotations

import logging
import os

__all__ = ["init_ray", "pick_device"]


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
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "0")
    kwargs = dict(
        ignore_reinit_error=True,
        logging_level=logging.WARNING if quiet else logging.INFO,
        log_to_driver=True,
    )
    if address:
        return ray.init(address=address, **kwargs)
    return ray.init(num_cpus=num_cpus, include_dashboard=False, **kwargs)
