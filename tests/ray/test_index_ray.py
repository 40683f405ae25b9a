"""The Ray Data build path: train on a sample, add shards in parallel actors, merge, tune."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from raylens.index import VectorIndex, recall_at_k
from raylens.index.synthetic import clustered_vectors

pytestmark = pytest.mark.ray

D = 32


def _dataset(ray, n, *, with_ids=False, seed=0):
    x, labels = clustered_vectors(n, D, n_clusters=40, latent_dim=8, seed=seed)
    rows = [{"embedding": x[i], "label": int(labels[i]), "path": f"{i}.png"} for i in range(n)]
    if with_ids:
        for i, r in enumerate(rows):
            r["item_id"] = 1_000 + 3 * i
    return ray.data.from_items(rows, override_num_blocks=4), x, labels


def test_sharded_ivf_build_merges_every_shard(ray_session, tmp_path):
    from raylens.index.ray_build import build_index_from_dataset

    ds, x, labels = _dataset(ray_session, 6000)
    idx = build_index_from_dataset(
        ds,
        model="m",
        checkpoint_hash="h",
        index_factory="IVF32,Flat",
        shard_rows=1500,
        num_workers=2,
        tune_queries=200,
        threads=1,
    )
    figures = idx.manifest.build["figures"]
    assert figures["path"] == "ray-sharded" and figures["shards"] >= 4
    assert len(idx) == 6000 and sorted(idx.ids.tolist()) == list(range(6000))
    # ids follow merge order; the metadata travelled with each vector
    hits = idx.search(x[:50], k=1)
    assert all(h[0].path == f"{i}.png" for i, h in enumerate(hits))
    assert all(h[0].metadata["label"] == labels[i] for i, h in enumerate(hits))
    # tuned against the exact top-k merged from the shards
    assert idx.manifest.tuning["reached"] and "nprobe" in idx.manifest.search_params
    q, _ = clustered_vectors(200, D, n_clusters=40, latent_dim=8, part=1)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    _, truth_pos = faiss.knn(qn, xn.astype(np.float32), 10, metric=faiss.METRIC_INNER_PRODUCT)
    paths = {int(i): int(r["path"].split(".")[0]) for i, r in zip(idx.ids, idx.metadata(idx.ids))}
    _, found = idx.search_arrays(q, k=10)
    found_pos = np.vectorize(lambda i: paths.get(int(i), -1))(found)
    assert recall_at_k(found_pos, truth_pos, 10) >= 0.9
    # the result is an ordinary index: filters, save, load
    assert all(h.metadata["label"] == 3 for h in idx.search(x[0], k=5, filters={"label": 3})[0])
    back = VectorIndex.load(idx.save(tmp_path / "ray_idx"))
    assert len(back) == 6000


def test_small_flat_build_gathers_on_the_driver(ray_session):
    from raylens.index.ray_build import build_index_from_dataset

    ds, x, _ = _dataset(ray_session, 400)
    idx = build_index_from_dataset(ds, model="m", checkpoint_hash="h")
    assert idx.manifest.index_factory == "Flat" and len(idx) == 400
    assert idx.search(x[7], k=1)[0][0].path == "7.png"


def test_bad_vectors_fail_clearly(ray_session):
    from raylens.index.ray_build import build_index_from_dataset

    x, _ = clustered_vectors(2000, D, n_clusters=10, latent_dim=4)
    x[1500, 0] = np.nan
    ds = ray_session.data.from_items([{"embedding": v} for v in x], override_num_blocks=4)
    with pytest.raises(Exception, match="NaN"):
        build_index_from_dataset(ds, model="m", index_factory="IVF8,Flat", shard_rows=500, num_workers=1, tune=False)
    with pytest.raises(ValueError, match="vector_column"):
        build_index_from_dataset(ds, model="m", vector_column="emb")


def test_refined_pq_is_merged_shard_by_shard(ray_session):
    from raylens.index.ray_build import build_index_from_dataset

    ds, x, _ = _dataset(ray_session, 3000, with_ids=True, seed=2)
    idx = build_index_from_dataset(
        ds,
        model="m",
        index_factory="IVF16,PQ16x4fs,Refine(SQ8)",
        id_column="item_id",
        shard_rows=1000,
        num_workers=2,
        tune_queries=100,
        threads=1,
    )
    assert idx.manifest.build["figures"]["path"] == "ray-sharded"
    assert sorted(idx.ids.tolist()) == [1_000 + 3 * i for i in range(3000)]  # the dataset's own ids
    assert "item_id" not in idx.columns
    hit = idx.search(x[42], k=1)[0][0]
    assert hit.id == 1_000 + 3 * 42 and hit.path == "42.png"
    assert idx.delete([hit.id]) == 1 and idx.manifest.tombstones == 1
