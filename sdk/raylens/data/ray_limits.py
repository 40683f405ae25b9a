"""A workaround for Ray Data 2.60: every execution starts out believing the cluster has no CPUs.

The streaming executor's resource manager asks the cluster autoscaler how big the cluster is; the
autoscaler asks the autoscaling-coordinator actor without waiting, so the first answer is empty, and
the resource manager keeps that answer for ``GLOBAL_LIMITS_UPDATE_INTERVAL_S`` (1 s). Until then
only the executor's liveness rule dispatches, one task at a time: on 2 cores the second core's first
task started 0.9 s after the first core's (Ray's timeline). Warm 20,000-image embeds, alternated in
one driver: 4.5-5.2 s with :func:`ask_again_while_empty`, 5.1-5.5 s without.

:func:`ask_again_while_empty` makes the resource manager ask again at its next call while the answer
has no CPUs, instead of keeping it for a second. :func:`raylens.runtime.init_ray` applies it in the
driver, for Ray 2.60 only (the version it was read against; the pin is ``<2.61``).
"""

from __future__ import annotations

import functools

__all__ = ["ask_again_while_empty"]

_MARK = "_raylens_asks_again"


def ask_again_while_empty() -> bool:
    """Apply the workaround (once per process); True if it is in effect."""
    import ray
    from ray.data._internal.execution.resource_manager import ResourceManager

    upstream = ResourceManager.get_global_limits
    if getattr(upstream, _MARK, False):
        return True
    if not ray.__version__.startswith("2.60.") or not hasattr(ResourceManager, "GLOBAL_LIMITS_UPDATE_INTERVAL_S"):
        return False

    @functools.wraps(upstream)
    def get_global_limits(self):
        limits = upstream(self)
        if not limits.cpu:  # the autoscaler has not answered yet: ask again next time
            self._global_limits_last_update_time = 0
        return limits

    setattr(get_global_limits, _MARK, True)
    ResourceManager.get_global_limits = get_global_limits
    return True
