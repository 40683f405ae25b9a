"""Names and buckets of the raylens service metrics (exported with Serve's own through Ray's Prometheus
endpoint), kept in one place so dashboards, tests and services agree.

Ray prefixes custom metrics with ``ray_`` on export, and counters gain ``_total``: the search latency
histogram below is scraped as ``ray_raylens_search_latency_ms_bucket`` and friends.
"""

from __future__ import annotations

__all__ = [
    "SEARCH_LATENCY_MS",
    "INDEX_VECTORS",
    "REQUESTS",
    "MODEL_LATENCY_MS",
    "EMBED_BATCH_SIZE",
    "LATENCY_BOUNDARIES_MS",
    "BATCH_BOUNDARIES",
    "exported_name",
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
