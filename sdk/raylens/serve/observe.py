"""Names and buckets of the raylens service metrics (exported with Serve's own through Ray's Prometheus
endpoint), kept in one place so dashboards, tests and services agree; and the log filter that keeps a
client's mistake out of a replica's error log.

Ray prefixes custom metrics with ``ray_`` on export, and counters gain ``_total``: the search latency
histogram below is scraped as ``ray_raylens_search_latency_ms_bucket`` and friends.

Deployments raise a client's mistake (an unknown index, a bad filter) to the deployment that called
them, as the exception it is. Serve's replica logs every exception a request raises as an ERROR with
a traceback (``"Request failed."`` on the ``ray.serve`` logger); :func:`quiet_client_errors` turns
those records into one INFO line when the error maps to a 4xx (:func:`raylens.serve.limits.error_response`),
and leaves real faults (5xx) as they are.
"""

from __future__ import annotations

import logging

from raylens.serve.limits import error_response

__all__ = [
    "ClientErrorLogFilter",
    "quiet_client_errors",
    "SERVE_LOGGER",
    "SEARCH_LATENCY_MS",
    "INDEX_VECTORS",
    "REQUESTS",
    "MODEL_LATENCY_MS",
    "EMBED_BATCH_SIZE",
    "LATENCY_BOUNDARIES_MS",
    "BATCH_BOUNDARIES",
    "exported_name",
    "FailureStreak",
]

SEARCH_LATENCY_MS = "raylens_search_latency_ms"
"""Histogram: end-to-end ``/search`` time in the ingress (encode + search), tags ``index``, ``kind``."""
INDEX_VECTORS = "raylens_index_vectors"
"""Gauge: vectors in each open index, tag ``index``."""
REQUESTS = "raylens_requests"
"""Counter: requests per ``route``, model ``version`` and ``status`` (HTTP code)."""
MODEL_LATENCY_MS = "raylens_model_latency_ms"
"""Histogram: time in a model version, tags ``route``, ``version`` (the A/B comparison)."""
EMBED_BATCH_SIZE = "raylens_embed_batch_size"
"""Histogram: sizes of the batches the embedding deployment ran (dynamic batching at work), tag ``kind``."""

LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128]


def exported_name(name: str, *, counter: bool = False) -> str:
    """The name Prometheus sees for a raylens metric (``ray_`` prefix, ``_total`` for counters)."""
    return f"ray_{name}{'_total' if counter else ''}"


SERVE_LOGGER = "ray.serve"
"""The logger Serve's replicas log failed requests on."""


class ClientErrorLogFilter(logging.Filter):
    """Rewrites a log record whose exception is a client's mistake (a 4xx) into one INFO line without
    a traceback; every other record passes unchanged.

    >>> import sys
    >>> from raylens.serve.limits import ServeError
    >>> f = ClientErrorLogFilter()
    >>> try:
    ...     raise ServeError(404, "unknown_index", "no index named 'x'")
    ... except ServeError:
    ...     record = logging.LogRecord("ray.serve", logging.ERROR, __file__, 1, "Request failed.", (), sys.exc_info())
    >>> f.filter(record), record.levelname, record.getMessage(), record.exc_info
    (True, 'INFO', "Request refused (404 unknown_index): no index named 'x'", None)
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        status, body = error_response(exc)
        if status >= 500:
            return True
        record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        record.msg, record.args = f"Request refused ({status} {body['error']['code']}): {body['error']['message']}", ()
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def quiet_client_errors(logger: str = SERVE_LOGGER) -> ClientErrorLogFilter:
    """Install :class:`ClientErrorLogFilter` on ``logger`` once per process (call it in a deployment's
    ``__init__``); returns the installed filter."""
    log = logging.getLogger(logger)
    for f in log.filters:
        if isinstance(f, ClientErrorLogFilter):
            return f
    f = ClientErrorLogFilter()
    log.addFilter(f)
    return f


class FailureStreak:
    """Consecutive internal failures of a replica's own work, for its ``check_health``.

    A replica records each unit of work (an encode, a search batch) as a success or a failure; a
    client's mistake is neither (it says nothing about the replica). ``limit`` failures in a row with
    no success between make :meth:`check` raise, so Serve replaces the replica.

    >>> streak = FailureStreak(limit=2)
    >>> streak.failed(); streak.check("embedder")
    >>> streak.failed(); streak.check("embedder")
    Traceback (most recent call last):
    ...
    RuntimeError: embedder: 2 internal failures in a row (last: None); restarting the replica may help
    """

    def __init__(self, limit: int = 10):
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"`limit` must be a positive int, got {limit!r}")
        self.limit = limit
        self.count = 0
        self.last: str | None = None

    def ok(self) -> None:
        self.count, self.last = 0, None

    def failed(self, exc: BaseException | None = None) -> None:
        self.count += 1
        self.last = None if exc is None else type(exc).__name__

    def record(self, exc: BaseException) -> None:
        """Count ``exc`` as a failure unless it is a client's mistake (a 4xx) or an overload."""
        status, _ = error_response(exc)
        if status == 500:
            self.failed(exc)

    def check(self, what: str) -> None:
        """Raise ``RuntimeError`` once ``limit`` failures came in a row."""
        if self.count >= self.limit:
            raise RuntimeError(
                f"{what}: {self.count} internal failures in a row (last: {self.last}); restarting the replica may help"
            )
