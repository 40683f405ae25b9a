"""The filter cache is bounded by bytes: many distinct filters over a large index never hold more than
the budget, the most recently used stay, and results never depend on what is cached."""

from __future__ import annotations

import numpy as np

from raylens.index import VectorIndex
from raylens.index.filters import FilterCache


def test_the_cache_evicts_least_recently_used_past_its_byte_budget():
    cache = FilterCache(max_bytes=100)
    for i in range(5):
        cache.put((i,), np.arange(5, dtype=np.int64))  # 40 bytes each
    assert cache.nbytes <= 100 and len(cache) == 2 and cache.get((4,)) is not None
    cache.get((3,))  # now the most recent
    cache.put((9,), np.arange(5, dtype=np.int64))
    assert cache.get((4,)) is None and cache.get((3,)) is not None
    cache.put(("huge",), np.arange(100, dtype=np.int64))  # larger than the whole budget: not cached
    assert cache.get(("huge",)) is None and cache.nbytes <= 100


def test_many_distinct_filters_stay_within_the_budget():
    n = 8_000
    x = np.random.default_rng(0).normal(size=(n, 8)).astype("float32")
    meta = {"bucket": [i % 500 for i in range(n)], "half": [i % 2 for i in range(n)]}
    budget = 2048
    idx = VectorIndex.build(x, meta, model="m", index_factory="Flat", tune=False)
    idx.filter_cache_bytes = budget
    for b in range(40):  # each filter allows almost every id (~64 kB): one alone is over the budget
        hits = idx.search(x[b], k=3, filters={"bucket": {"ne": b}})[0]
        assert all(h.metadata["bucket"] != b for h in hits)
    for b in range(100):  # small ones (8 ids, 64 bytes) are cached, as many as the budget holds
        idx.search(x[b], k=1, filters={"bucket": b, "half": b % 2})
    assert idx._filter_cache.nbytes <= budget
    assert len(idx._filter_cache) > 10
