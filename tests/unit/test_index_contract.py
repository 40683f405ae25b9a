"""The VectorIndex contract the rest of raylens calls: build, search, save, load, errors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from raylens.errors import IndexMismatchError, IndexNotFoundError, RaylensError
from raylens.index import IndexManifest, SearchHit, VectorIndex
from raylens.index.synthetic import clustered_vectors

N, D = 600, 32


@pytest.fixture(scope="module")
def data():
    x, labels = clustered_vectors(N, D, n_clusters=12, latent_dim=8, seed=1)
    meta = {
        "path": [f"img/{i}.png" for i in range(N)],
        "caption": [f"caption {i}" for i in range(N)],
        "label": labels,
        "split": ["train" if i % 4 else "val" for i in range(N)],
    }
    return x, meta


@pytest.fixture(scope="module")
def index(data):
    x, meta = data
    return VectorIndex.build(x, meta, model="clip-tiny", checkpoint_hash="abc123", checkpoint="/ckpt/clip")


def test_build_and_search_returns_hits(index, data):
    x, _ = data
    hits = index.search(x[:3], k=5)
    assert len(hits) == 3 and all(len(h) == 5 for h in hits)
    first = hits[0][0]
    assert isinstance(first, SearchHit)
    assert first.id == 0 and first.path == "img/0.png" and first.caption == "caption 0"
    assert first.metadata == {"label": int(data[1]["label"][0]), "split": "val"}
    assert abs(first.score - 1.0) < 1e-4  # normalised inner product with itself
    scores = [h.score for h in hits[1]]
    assert scores == sorted(scores, reverse=True)


def test_single_vector_query_and_properties(index, data):
    hits = index.search(data[0][7], k=1)
    assert len(hits) == 1 and hits[0][0].id == 7
    assert len(index) == N and index.dim == D


def test_manifest_fields(index):
    m = index.manifest
    assert isinstance(m, IndexManifest)
    assert (m.model, m.checkpoint_hash, m.checkpoint) == ("clip-tiny", "abc123", "/ckpt/clip")
    assert (m.dim, m.metric, m.normalize, m.count) == (D, "ip", True, N)
    assert m.index_factory == "Flat" and "Flat" in m.choice_reason
    assert m.created_at[:4].isdigit()


@pytest.mark.parametrize("kind", ["table", "dict", "rows", "none"])
def test_metadata_forms(data, kind):
    x, meta = data
    n = 50
    sub = {k: list(v[:n]) for k, v in meta.items()}
    md = {
        "table": pa.table(sub),
        "dict": sub,
        "rows": [dict(zip(sub, vals)) for vals in zip(*sub.values())],
        "none": None,
    }[kind]
    idx = VectorIndex.build(x[:n], md, model="m", checkpoint_hash="h")
    hit = idx.search(x[3], k=1)[0][0]
    assert hit.id == 3
    assert hit.path == (None if kind == "none" else "img/3.png")


def test_save_load_roundtrip(index, data, tmp_path):
    d = tmp_path / "idx"
    index.save(d)
    assert {p.name for p in d.iterdir()} == {"index.faiss", "metadata.parquet", "manifest.json"}
    manifest = json.loads((d / "manifest.json").read_text())
    assert set(manifest["checksums"]) == {"index.faiss", "metadata.parquet"}
    loaded = VectorIndex.load(d, expect_model="clip-tiny", expect_checkpoint_hash="abc123")
    assert len(loaded) == N and loaded.dim == D and loaded.manifest.checkpoint == "/ckpt/clip"
    a = index.search(data[0][:4], k=5)
    b = loaded.search(data[0][:4], k=5)
    assert [[h.id for h in r] for r in a] == [[h.id for h in r] for r in b]
    assert b[0][0].metadata == a[0][0].metadata


def test_load_errors(index, tmp_path):
    with pytest.raises(IndexNotFoundError):
        VectorIndex.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexNotFoundError):
        VectorIndex.load(tmp_path / "empty")
    index.save(tmp_path / "idx")
    with pytest.raises(IndexMismatchError, match="clip-tiny"):
        VectorIndex.load(tmp_path / "idx", expect_model="clip-base")
    with pytest.raises(IndexMismatchError, match="abc123"):
        VectorIndex.load(tmp_path / "idx", expect_checkpoint_hash="zzz")
    assert issubclass(IndexMismatchError, RaylensError)


@pytest.mark.parametrize(
    "queries, k, match",
    [
        (np.zeros((0, D), np.float32), 5, "empty"),
        (np.ones((2, D + 1), np.float32), 5, "dim"),
        (np.full((1, D), np.nan, np.float32), 5, "NaN"),
        (np.ones((1, D), np.float32), 0, "`k`"),
        (np.ones((1, D), np.float32), N + 1, "`k`"),
    ],
)
def test_bad_queries(index, queries, k, match):
    with pytest.raises(ValueError, match=match):
        index.search(queries, k=k)


def test_k_over_10000_rejected():
    x, _ = clustered_vectors(10_050, 8, n_clusters=4, latent_dim=4)
    idx = VectorIndex.build(x, None, model="m", checkpoint_hash="h", index_factory="Flat")
    with pytest.raises(ValueError, match="10000"):
        idx.search(x[0], k=10_001)
    assert len(idx.search(x[0], k=10_000)[0]) == 10_000


def test_bad_build_inputs(data):
    x, meta = data
    with pytest.raises(ValueError, match="NaN"):
        bad = x.copy()
        bad[5, 3] = np.inf
        VectorIndex.build(bad, None, model="m", checkpoint_hash="h")
    with pytest.raises(ValueError, match="rows"):
        VectorIndex.build(x[:10], {"path": ["a"] * 9}, model="m", checkpoint_hash="h")
    with pytest.raises(TypeError, match="float"):
        VectorIndex.build(np.ones((4, 3), np.int64), None, model="m", checkpoint_hash="h")
    with pytest.raises(ValueError, match="metric"):
        VectorIndex.build(x, None, model="m", checkpoint_hash="h", metric="cos")
