"""Automatic index choice, build options, and search-parameter autotuning (recall on clustered data)."""

from __future__ import annotations

import logging

import faiss
import numpy as np
import pytest

from raylens.index import BuildOptions, VectorIndex, choose_index, recall_at_k
from raylens.index.choose import estimate_bytes
from raylens.index.synthetic import clustered_vectors

GiB = 2**30


@pytest.mark.parametrize(
    "n, budget, family",
    [
        (500, None, "Flat"),
        (20_000, None, "Flat"),
        (100_000, 16 * GiB, "HNSW"),
        (1_000_000, 16 * GiB, "IVF"),
        (1_000_000, GiB // 2, "PQ"),
    ],
)
def test_choice_follows_the_rules(n, budget, family):
    c = choose_index(n, 512, memory_budget=budget, cores=2)
    assert c.factory.split(",")[0].startswith(family) or family in c.factory
    assert c.reason.startswith(c.factory) and len(c.reason) > 40
    if budget:
        assert c.estimated_bytes <= budget


def test_compressed_choice_fits_a_quarter_of_flat():
    n, d = 1_000_000, 512
    c = choose_index(n, d, memory_budget=int(0.25 * n * d * 4), cores=2)
    assert "PQ" in c.factory and "Refine" in c.factory
    assert estimate_bytes(c.factory, n, d) <= 0.25 * n * d * 4


def test_more_cores_buy_more_lists_and_opq():
    small = choose_index(5_000_000, 512, memory_budget=4 * GiB, cores=2)
    big = choose_index(5_000_000, 512, memory_budget=4 * GiB, cores=32)
    nl = lambda f: int(f.split("IVF")[1].split(",")[0])  # noqa: E731
    assert nl(big.factory) > nl(small.factory)
    assert big.factory.startswith("OPQ") and not small.factory.startswith("OPQ")


def test_impossible_budget_says_how_to_fix():
    with pytest.raises(ValueError, match="memory_budget"):
        choose_index(1_000_000, 512, memory_budget=1_000_000)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"metric": "cosine"}, "metric"),
        ({"memory_budget": "lots"}, "memory_budget"),
        ({"recall_target": 1.5}, "recall_target"),
        ({"device": "tpu"}, "device"),
        ({"index_factory": ""}, "index_factory"),
        ({"tune_queries": 3}, "tune_queries"),
    ],
)
def test_build_options_validation_names_the_field(kwargs, field):
    with pytest.raises((ValueError, TypeError), match=f"`{field}`"):
        BuildOptions(**kwargs)


def test_memory_budget_strings():
    assert BuildOptions(memory_budget="1.5G").memory_budget == int(1.5 * GiB)
    assert BuildOptions(memory_budget="512M").memory_budget == 512 * 2**20


def test_choice_reason_is_logged_and_stored(caplog):
    x, _ = clustered_vectors(300, 8, n_clusters=3, latent_dim=4)
    with caplog.at_level(logging.INFO, logger="raylens.index"):
        idx = VectorIndex.build(x, None, model="m", checkpoint_hash="h")
    assert "Flat" in idx.manifest.choice_reason
    assert any("index choice" in r.message and "Flat" in r.message for r in caplog.records)
    explicit = VectorIndex.build(x, None, model="m", checkpoint_hash="h", index_factory="HNSW8", tune=False)
    assert explicit.manifest.choice_reason == "HNSW8: given explicitly"
    with pytest.raises(ValueError, match="index_factory"):
        VectorIndex.build(x, None, model="m", checkpoint_hash="h", index_factory="Bogus42")


@pytest.fixture(scope="module")
def clustered():
    kw = dict(n_clusters=200, latent_dim=16, cluster_spread=0.8, noise=0.1, seed=4)
    x, _ = clustered_vectors(20_000, 64, **kw)
    q, _ = clustered_vectors(300, 64, **kw, part=1)
    xn, qn = x / np.linalg.norm(x, axis=1, keepdims=True), q / np.linalg.norm(q, axis=1, keepdims=True)
    _, truth = faiss.knn(qn.astype(np.float32), xn.astype(np.float32), 10, metric=faiss.METRIC_INNER_PRODUCT)
    return x, q, truth


@pytest.mark.parametrize(
    "factory, knob", [("IVF256,Flat", "nprobe"), ("HNSW16", "efSearch"), ("IVF256,PQ32x4fs,Refine(SQ8)", "nprobe")]
)
def test_autotune_reaches_recall_on_held_out_queries(clustered, factory, knob):
    x, q, truth = clustered
    idx = VectorIndex.build(x, None, model="m", checkpoint_hash="h", index_factory=factory, tune_queries=300, threads=1)
    t = idx.manifest.tuning
    assert t["reached"] and t["recall"] >= 0.95 and t["target"] == 0.95
    assert knob in idx.manifest.search_params and idx.manifest.search_params[knob] == t["params"][knob]
    if knob == "nprobe":
        assert idx.manifest.search_params["nprobe"] < 256  # cheaper than scanning every list
    _, found = idx.search_arrays(q, k=10)
    assert recall_at_k(found, truth, 10) >= 0.93  # held-out queries: new points, same distribution
    # and an untuned, minimal setting is measurably worse (the tuning matters)
    low = {"nprobe": 1} if knob == "nprobe" else {"efSearch": 10}
    _, found_low = idx.search_arrays(q, k=10, params=low)
    assert recall_at_k(found_low, truth, 10) < recall_at_k(found, truth, 10)


def test_retune_for_a_higher_target(clustered):
    x, _, _ = clustered
    idx = VectorIndex.build(x, None, model="m", checkpoint_hash="h", index_factory="IVF256,Flat", tune=False)
    loose = idx.tune(x, recall_target=0.8, n_queries=200)
    strict = idx.tune(x, recall_target=0.99, n_queries=200)
    assert loose.params["nprobe"] <= strict.params["nprobe"]
    assert idx.manifest.tuning["target"] == 0.99 and len(strict.table) >= 2
