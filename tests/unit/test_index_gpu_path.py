"""The GPU code path, exercised on CPU: faiss-gpu's entry points are replaced by CPU stand-ins."""

from __future__ import annotations

import faiss
import pytest

from raylens.index import VectorIndex
from raylens.index import _faiss_utils as fu
from raylens.index.synthetic import clustered_vectors


def test_cuda_without_gpu_says_how_to_fix():
    x, _ = clustered_vectors(200, 8, n_clusters=4, latent_dim=4)
    with pytest.raises(ValueError, match=r"raylens\[gpu\]"):
        VectorIndex.build(x, None, model="m", checkpoint_hash="h", device="cuda")
    assert VectorIndex.build(x, None, model="m", checkpoint_hash="h", device="auto")._device == "cpu"


def test_same_api_with_a_gpu(monkeypatch):
    calls = {"train": 0, "clone": 0, "search": 0}

    def train(index, x):
        calls["train"] += 1
        index.train(x)

    def clone(index):
        calls["clone"] += 1
        return faiss.clone_index(index)

    def search(gpu_index, x, k, params):
        calls["search"] += 1
        faiss.ParameterSpace().set_index_parameter(gpu_index, "nprobe", params["nprobe"])
        return gpu_index.search(x, k)

    monkeypatch.setattr(fu, "gpu_count", lambda: 1)
    monkeypatch.setattr(fu, "train_on_gpu", train)
    monkeypatch.setattr(fu, "to_gpu", clone)
    monkeypatch.setattr(fu, "gpu_search", search)
    x, labels = clustered_vectors(3000, 16, n_clusters=20, latent_dim=4)
    gpu = VectorIndex.build(
        x, {"label": labels}, model="m", checkpoint_hash="h", index_factory="IVF32,Flat", device="cuda"
    )
    cpu = VectorIndex.build(
        x, {"label": labels}, model="m", checkpoint_hash="h", index_factory="IVF32,Flat", device="cpu"
    )
    assert calls["train"] == 1 and calls["clone"] == 1
    assert [h.id for h in gpu.search(x[:5], k=5)[0]] == [h.id for h in cpu.search(x[:5], k=5)[0]]
    assert calls["search"] >= 2
    # filtered searches run on the CPU index (GPU indices take no id selector)
    before = calls["search"]
    assert all(h.metadata["label"] == 3 for h in gpu.search(x[0], k=3, filters={"label": 3})[0])
    assert calls["search"] == before
    # a change drops the GPU clone; the next search makes a fresh one
    gpu.add(x[:2])
    gpu.search(x[0], k=1)
    assert calls["clone"] == 2
