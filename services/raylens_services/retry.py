"""Retrying idempotent calls to another deployment when the replica that took them dies.

A replica that dies (its process killed, its node lost) fails every call it holds with Ray's
``ActorDiedError`` (or ``ActorUnavailableError`` while its death is not yet known, or Serve's
``ReplicaUnavailableError``). Serve's router then stops routing to it, so the same call sent again
lands on a live replica, or waits for the replacement Serve starts. The search service's calls
(search, embed, describe, an item's file) read and never write, so sending them again is safe: the
ingress retries its calls to the index deployment, and the index deployment its calls to the
embedder, up to ``RAYLENS_SERVE_RETRIES`` times (default 2; 0 turns retrying off).

Only a replica's death is retried: an error the call itself raised (a bad query, an unknown index)
is the answer and goes back to the caller at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

__all__ = ["RETRIES_ENV", "DEFAULT_RETRIES", "replica_died", "retries", "call_async", "call_sync"]

RETRIES_ENV = "RAYLENS_SERVE_RETRIES"
DEFAULT_RETRIES = 2
BACKOFF_S = (0.05, 0.25)
"""Pause before the first and later retries: long enough for the router to hear of the death."""
log = logging.getLogger("ray.serve")
T = TypeVar("T")


def _death_types() -> tuple[type[BaseException], ...]:
    from ray.exceptions import ActorDiedError, ActorUnavailableError
    from ray.serve.exceptions import ReplicaUnavailableError

    return (ActorDiedError, ActorUnavailableError, ReplicaUnavailableError)


def replica_died(exc: BaseException) -> bool:
    """True when ``exc`` says the replica that ran the call died (directly, or as the ``cause`` of the
    ``RayTaskError`` a deployment re-raised, or as the ``__cause__`` of a Serve error)."""
    types = _death_types()
    seen = 0
    while exc is not None and seen < 4:
        if isinstance(exc, types):
            return True
        exc = getattr(exc, "cause", None) or exc.__cause__
        seen += 1
    return False


def retries() -> int:
    """How many times a call is sent again after its replica died (``RAYLENS_SERVE_RETRIES``)."""
    raw = os.environ.get(RETRIES_ENV, "").strip()
    if not raw:
        return DEFAULT_RETRIES
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"{RETRIES_ENV} must be a whole number of retries (e.g. 2), got {raw!r}") from None
    if n < 0:
        raise ValueError(f"{RETRIES_ENV} must be 0 or more, got {n}")
    return n


async def call_async(make_call: Callable[[], Awaitable[T]], what: str) -> T:
    """``await make_call()``, sent again (a fresh call each time) when the replica that ran it died."""
    attempts = retries() + 1
    for attempt in range(attempts):
        try:
            return await make_call()
        except Exception as exc:
            if attempt + 1 >= attempts or not replica_died(exc):
                raise
            log.warning("%s: the replica died (%s); retrying on a live one", what, type(exc).__name__)
            await asyncio.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
    raise AssertionError("unreachable")  # pragma: no cover


def call_sync(make_call: Callable[[], Any], what: str) -> Any:
    """:func:`call_async` for blocking callers (a worker thread waiting on ``.result()``)."""
    attempts = retries() + 1
    for attempt in range(attempts):
        try:
            return make_call()
        except Exception as exc:
            if attempt + 1 >= attempts or not replica_died(exc):
                raise
            log.warning("%s: the replica died (%s); retrying on a live one", what, type(exc).__name__)
            time.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
    raise AssertionError("unreachable")  # pragma: no cover
