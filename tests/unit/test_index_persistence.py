"""Persistence: one directory, atomic saves, checksums, crash safety, mismatches, mmap, catalogs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from raylens.errors import IndexMismatchError, IndexNotFoundError
from raylens.index import IndexCatalog, IndexCorruptError, IndexReadOnlyError, VectorIndex
from raylens.index.synthetic import clustered_vectors

D = 16


def _build(n=300, model="clip-tiny", factory=None, seed=0):
    x, labels = clustered_vectors(n, D, n_clusters=6, latent_dim=4, seed=seed)
    return VectorIndex.build(
        x, {"label": labels}, model=model, checkpoint_hash="h1", index_factory=factory, tune=False
    ), x


def _snapshot(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_save_replaces_previous_version_and_leaves_no_debris(tmp_path):
    idx, x = _build()
    d = tmp_path / "idx"
    idx.save(d)
    idx.add(x[:5])
    idx.save(d)
    assert len(VectorIndex.load(d)) == 305
    assert sorted(p.name for p in tmp_path.iterdir()) == [".idx.lock", "idx"]


def test_corrupt_index_file_is_detected(tmp_path):
    idx, _ = _build()
    d = idx.save(tmp_path / "idx")
    raw = bytearray((d / "index.faiss").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (d / "index.faiss").write_bytes(bytes(raw))
    before = _snapshot(d)
    with pytest.raises(IndexCorruptError, match="corrupt"):
        VectorIndex.load(d)
    assert _snapshot(d) == before  # loading never repairs or rewrites


def test_truncated_file_without_verification_still_fails_clearly(tmp_path):
    idx, _ = _build()
    d = idx.save(tmp_path / "idx")
    (d / "index.faiss").write_bytes((d / "index.faiss").read_bytes()[:100])
    with pytest.raises(IndexCorruptError):
        VectorIndex.load(d, verify=False)


def test_garbage_manifest(tmp_path):
    idx, _ = _build()
    d = idx.save(tmp_path / "idx")
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(IndexCorruptError, match="manifest"):
        VectorIndex.load(d)


def test_manifest_from_another_model_changes_nothing(tmp_path):
    idx, _ = _build(model="clip-tiny")
    d = idx.save(tmp_path / "idx")
    before = _snapshot(d)
    with pytest.raises(IndexMismatchError, match="clip-tiny"):
        VectorIndex.load(d, expect_model="clip-base")
    other, _ = _build(model="clip-base")
    with pytest.raises(IndexMismatchError, match="overwrite=True"):
        other.save(d)
    assert _snapshot(d) == before
    other.save(d, overwrite=True)
    assert VectorIndex.load(d).manifest.model == "clip-base"


def test_refuses_to_replace_a_non_index_directory(tmp_path):
    idx, _ = _build()
    d = tmp_path / "photos"
    d.mkdir()
    (d / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(ValueError, match="without an index manifest"):
        idx.save(d)
    assert (d / "cat.jpg").read_bytes() == b"meow"


_CRASH = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from raylens.index import VectorIndex
    from raylens.index import store, metadata
    where, d = sys.argv[1], sys.argv[2]
    idx = VectorIndex.load(d)
    idx.add(np.ones((3, idx.dim), np.float32))
    if where == "mid-write":       # killed after the index file, while writing the metadata
        def die(self, path):
            open(path, "wb").write(b"PAR1 half a file")
            os._exit(9)
        metadata.MetadataStore.save = die
    elif where == "before-swap":   # killed with the new version complete but not swapped in
        store._swap_in = lambda tmp, directory: os._exit(9)
    elif where == "between-renames":  # no atomic exchange: killed between the two renames
        store._exchange = lambda a, b: False
        real = os.rename
        calls = []
        def rename(a, b):
            calls.append(a)
            real(a, b)
            if len(calls) == 1:
                os._exit(9)
        os.rename = rename
    idx.save(d)
    os._exit(0)
    """
)


@pytest.mark.parametrize("where", ["mid-write", "before-swap", "between-renames"])
def test_save_killed_midway_leaves_old_version_loadable(tmp_path, where):
    idx, x = _build()
    d = idx.save(tmp_path / "idx")
    proc = subprocess.run([sys.executable, "-c", _CRASH, where, str(d)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    old = VectorIndex.load(d)  # verifies checksums too
    assert len(old) == 300
    assert old.search(x[4], k=1)[0][0].id == 4
    # the next save cleans up after the crashed one
    old.add(x[:2])
    old.save(d)
    assert len(VectorIndex.load(d)) == 302
    assert sorted(p.name for p in tmp_path.iterdir()) == [".idx.lock", "idx"]


def test_mmap_load_is_read_only_and_searchable(tmp_path):
    for factory in ("Flat", "IVF16,Flat"):
        idx, x = _build(factory=factory)
        d = idx.save(tmp_path / factory.replace(",", "_"))
        m = VectorIndex.load(d, mmap=True)
        assert m.read_only
        assert m.search(x[9], k=1, filters={"label": int(m.metadata(9)[0]["label"])})[0][0].id == 9
        with pytest.raises(IndexReadOnlyError, match="mmap"):
            m.add(x[:1])
        with pytest.raises(IndexReadOnlyError):
            m.delete([1])


def test_tombstones_survive_save_load(tmp_path):
    idx, x = _build(factory="HNSW8")
    idx.delete([1, 2, 3])
    d = idx.save(tmp_path / "h")
    assert (d / "tombstones.npy").exists()
    back = VectorIndex.load(d)
    assert len(back) == 297 and back.manifest.tombstones == 3
    assert {h.id for h in back.search(x[2], k=10)[0]}.isdisjoint({1, 2, 3})


def test_manifest_records_checksums_and_build(tmp_path):
    idx, _ = _build(n=2000, factory="IVF32,Flat")
    d = idx.save(tmp_path / "i")
    m = json.loads((d / "manifest.json").read_text())
    assert set(m["checksums"]) == {"index.faiss", "metadata.parquet"}
    assert m["build"]["options"]["index_factory"] == "IVF32,Flat"
    assert m["search_params"]["nprobe"] >= 1 and m["faiss_version"]


def test_catalog_holds_several_named_indices(tmp_path):
    cat = IndexCatalog()
    xs = {}
    for i, name in enumerate(["natural", "medical", "multiview"]):
        idx, xs[name] = _build(n=200 + i, model=f"model-{name}", seed=i)
        idx.save(tmp_path / name)
        cat.open(name, tmp_path / name, expect_model=f"model-{name}")
    assert cat.names() == ["medical", "multiview", "natural"] and len(cat) == 3
    assert cat.search("medical", xs["medical"][5], k=1)[0][0].id == 5
    assert cat.describe()["multiview"]["count"] == 202
    with pytest.raises(KeyError, match="natural"):
        cat.get("dental")
    with pytest.raises(IndexMismatchError):
        cat.open("natural2", tmp_path / "natural", expect_model="model-medical")
    with pytest.raises(IndexNotFoundError):
        cat.open("x", tmp_path / "missing")
    cat.close("natural")
    assert "natural" not in cat
