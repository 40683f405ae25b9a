"""Index lifetime: stable ids through add/delete, filters inside the search, dedup, pagination."""

from __future__ import annotations

import numpy as np
import pytest

from raylens.index import VectorIndex
from raylens.index.synthetic import clustered_vectors

D = 32


def _data(n, seed=0, part=0):
    x, labels = clustered_vectors(n, D, n_clusters=20, latent_dim=8, seed=seed, part=part)
    meta = {
        "label": labels,
        "split": np.where(np.arange(n) % 10 == 0, "val", "train"),
        "modality": np.where(labels % 2 == 0, "CT", "MR"),
        "path": [f"{i}.png" for i in range(n)],
    }
    return x, meta


@pytest.fixture(params=["Flat", "IVF64,Flat", "HNSW16", "IVF64,PQ16x4fs,Refine(SQ8)"])
def built(request):
    x, meta = _data(4000)
    # threads=1: PQ training is many tiny parallel steps, slow on a busy test machine
    idx = VectorIndex.build(x, meta, model="m", checkpoint_hash="h", index_factory=request.param, tune=False, threads=1)
    return idx, x, meta


def test_add_assigns_new_stable_ids(built):
    idx, x, meta = built
    y, ymeta = _data(50, part=1)
    ids = idx.add(y, ymeta)
    assert ids.tolist() == list(range(4000, 4050))
    assert len(idx) == 4050
    hit = idx.search(y[7], k=1)[0][0]
    assert hit.id == 4007 and hit.path == "7.png"
    with pytest.raises(ValueError, match="already used"):
        idx.add(y[:2], ids=[4000, 9999])
    assert len(idx) == 4050


def test_delete_keeps_other_ids_and_never_reuses(built):
    idx, x, _ = built
    assert idx.delete([5, 6, 7]) == 3
    assert len(idx) == 3997
    hits = idx.search(x[5:8], k=10)
    assert all(h.id not in (5, 6, 7) for row in hits for h in row)
    assert 100 in [h.id for h in idx.search(x[100], k=5)[0]]  # untouched ids still resolve
    assert idx.add(x[:1]).tolist() == [4000]  # deleted ids are not reused
    with pytest.raises(ValueError, match="unknown id"):
        idx.delete([5])
    assert idx.delete([5], missing_ok=True) == 0


def test_filters_equality_and_in(built):
    idx, x, meta = built
    hits = idx.search(x[:20], k=10, filters={"modality": "CT", "split": ["val"]})
    for row in hits:
        assert len(row) == 10
        for h in row:
            assert h.metadata["modality"] == "CT" and h.metadata["split"] == "val"
    hits = idx.search(x[:5], k=5, filters={"label": {"in": [1, 3]}})
    assert all(h.metadata["label"] in (1, 3) for row in hits for h in row)
    hits = idx.search(x[:5], k=5, filters={"label": {"not_in": [1, 3]}, "modality": {"ne": "MR"}})
    assert all(h.metadata["label"] not in (1, 3) and h.metadata["modality"] == "CT" for row in hits for h in row)


def test_selective_filter_still_returns_k(built):
    idx, x, meta = built
    # 12 rows allowed out of 4000 (0.3%): an IVF probe or HNSW walk alone would miss most of them
    wanted = [f"{i}.png" for i in range(0, 4000, 337)]
    hits = idx.search(x[:8], k=10, filters={"path": wanted})
    for row in hits:
        assert len(row) == 10 and {h.path for h in row} <= set(wanted)
    # fewer matches than k: all of them, no padding
    hits = idx.search(x[:2], k=10, filters={"path": wanted[:3]})
    assert [len(r) for r in hits] == [3, 3]
    assert idx.search(x[:1], k=5, filters={"label": -1}) == [[]]


def test_filter_errors(built):
    idx, x, _ = built
    with pytest.raises(ValueError, match="unknown metadata column 'colour'.*label"):
        idx.search(x[0], k=3, filters={"colour": "red"})
    with pytest.raises(ValueError, match="op"):
        idx.search(x[0], k=3, filters={"label": {"gt": 3}})
    with pytest.raises(ValueError, match="column type"):
        idx.search(x[0], k=3, filters={"label": "three"})


def test_pagination_matches_one_long_page():
    x, meta = _data(3000)
    idx = VectorIndex.build(x, meta, model="m", checkpoint_hash="h")
    full = [h.id for h in idx.search(x[0], k=60)[0]]
    pages = [h.id for p in range(3) for h in idx.search(x[0], k=20, offset=20 * p)[0]]
    assert pages == full
    with pytest.raises(ValueError, match="offset"):
        idx.search(x[0], k=5, offset=-1)
    with pytest.raises(ValueError, match="10000"):
        idx.search(x[0], k=2000, offset=9000)


def test_large_k_on_ivf_is_complete():
    x, meta = _data(6000)
    idx = VectorIndex.build(x, meta, model="m", checkpoint_hash="h", index_factory="IVF128,Flat", tune=False)
    hits = idx.search(x[:2], k=5000)
    assert [len(r) for r in hits] == [5000, 5000]
    assert len({h.id for h in hits[0]}) == 5000


def test_dedup_at_build_and_on_results():
    base, _ = clustered_vectors(500, D, n_clusters=10, latent_dim=8, seed=3)
    rng = np.random.default_rng(0)
    dups = base[:50] + 1e-4 * rng.standard_normal((50, D)).astype(np.float32)
    x = np.concatenate([base, dups])
    meta = {"path": [f"{i}" for i in range(550)]}
    idx = VectorIndex.build(x, meta, model="m", checkpoint_hash="h", dedup_threshold=0.999)
    assert len(idx) == 500
    figures = idx.manifest.build["figures"]
    assert figures["duplicates_dropped"] == 50 and figures["duplicate_of"][510] == 10

    plain = VectorIndex.build(x, meta, model="m", checkpoint_hash="h")
    raw = plain.search(x[3], k=4)[0]
    assert {h.id for h in raw[:2]} == {3, 503}
    folded = plain.search(x[3], k=4, dedup=0.999)[0]
    assert len(folded) == 4 and folded[0].id in (3, 503) and folded[0].duplicates in ([503], [3])
    assert len({h.id for h in folded} & {3, 503}) == 1


def test_hnsw_tombstones_and_compact():
    x, meta = _data(3000)
    idx = VectorIndex.build(x, meta, model="m", checkpoint_hash="h", index_factory="HNSW16", tune=False)
    idx.delete(np.arange(0, 3000, 2))
    assert len(idx) == 1500 and idx.manifest.tombstones == 1500
    assert all(h.id % 2 == 1 for h in idx.search(x[:10], k=20)[0])
    idx.compact()
    assert idx.manifest.tombstones == 0 and idx.faiss_index.ntotal == 1500
    assert idx.search(x[11], k=1)[0][0].id == 11


def test_add_bad_input_changes_nothing(built):
    idx, x, _ = built
    before = (len(idx), idx.faiss_index.ntotal, idx.manifest.next_id)
    bad = x[:3].copy()
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        idx.add(bad)
    with pytest.raises(ValueError, match="dim"):
        idx.add(np.ones((2, D + 1), np.float32))
    with pytest.raises(ValueError, match="metadata"):
        idx.add(x[:2], {"label": ["not", "ints"]})
    assert (len(idx), idx.faiss_index.ntotal, idx.manifest.next_id) == before
