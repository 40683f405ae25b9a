"""Building an index from a Ray dataset of embeddings (the only module of ``raylens.index`` that imports ray).

For IVF-family indices (IVF-Flat, IVF-PQ, OPQ...), the work is spread like autofaiss's
distributed build:

1. the driver trains the coarse quantizer (and OPQ/PQ) on a random sample of the dataset;
2. ``map_batches`` actors each receive the trained, empty index, add one shard of vectors to it
   (local ids 0..n-1) and return the shard serialized, with its metadata and the exact top-k of a
   few held-out queries against its own vectors (for tuning without gathering every vector);
3. the driver merges the shards with ``merge_from`` (offsetting ids, so ids are 0..N-1 in merge
   order, or the dataset's ``id_column``), then tunes ``nprobe`` against the merged exact top-k.

Refined indices (``...,Refine(SQ8)``) are merged part by part (IVF lists, then the refinement
codes). Flat and HNSW indices cannot be merged shard by shard, so for them (and for builds with
near-duplicate removal) the vectors are gathered and :meth:`VectorIndex.build` runs on the driver.
"""

from __future__ import annotations

import io
import logging
import time
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import ray

from raylens.index import _faiss_utils as fu
from raylens.index._validate import as_ids, as_matrix, normalize_rows
from raylens.index.choose import IndexChoice, choose_index
from raylens.index.config import BuildOptions
from raylens.index.manifest import IndexManifest
from raylens.index.metadata import MetadataStore
from raylens.index.vector_index import VectorIndex, new_faiss_index, train_size

__all__ = ["build_index_from_dataset", "AddShard"]

log = logging.getLogger(__name__)


def _table_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue()


def _table_from_bytes(b: bytes) -> pa.Table:
    return pa.ipc.open_stream(io.BytesIO(b)).read_all()


def _batch_vectors(batch: dict[str, np.ndarray], column: str, dim: int | None, normalize: bool) -> np.ndarray:
    if column not in batch:
        raise ValueError(f"the dataset has no {column!r} column (columns: {sorted(batch)}); pass vector_column=")
    col = batch[column]
    if col.dtype == object:  # ragged/list column
        col = np.stack(list(col))
    x = as_matrix(col, name=f"dataset column {column!r}", dim=dim)
    return normalize_rows(x, name=f"dataset column {column!r}") if normalize else x


class AddShard:
    """``map_batches`` UDF: adds one shard of vectors to a copy of the trained index.

    ``with_ids=False`` is for indices without ``add_with_ids`` (Refine): they number vectors
    0..n-1 and the driver maps those to ids. Returns one row per batch: the serialized shard index, its metadata (Arrow IPC bytes), its
    row count, and (npz bytes) its ids and the exact top-k scores/ids of the tuning queries
    against this shard.
    """

    def __init__(
        self,
        trained: bytes,
        vector_column: str,
        id_column: str | None,
        normalize: bool,
        metric: str,
        queries: np.ndarray | None,
        k: int,
        with_ids: bool = True,
    ):
        self.trained = np.frombuffer(trained, dtype=np.uint8)
        self.with_ids = with_ids
        self.vector_column, self.id_column = vector_column, id_column
        self.normalize, self.metric = normalize, metric
        self.queries, self.k = queries, k

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        index = faiss.deserialize_index(self.trained)
        x = _batch_vectors(batch, self.vector_column, index.d, self.normalize)
        n = len(x)
        ids = (
            as_ids(batch[self.id_column], n=n, name=f"dataset column {self.id_column!r}")
            if self.id_column
            else np.arange(n, dtype=np.int64)
        )
        if self.with_ids:
            index.add_with_ids(x, ids)
        else:  # an index that numbers vectors itself (Refine): local 0..n-1, mapped on the driver
            index.add(x)
        meta = {k: v for k, v in batch.items() if k not in (self.vector_column, self.id_column)}
        table = (
            pa.table({k: list(v) if isinstance(v, np.ndarray) and v.ndim > 1 else v for k, v in meta.items()})
            if meta
            else pa.table({})
        )
        arrays = {"ids": ids}
        if self.queries is not None:
            kk = min(self.k, n)
            gd, gi = faiss.knn(self.queries, x, kk, metric=fu.metric_type(self.metric))
            arrays.update(gt_scores=gd, gt_ids=np.where(gi >= 0, ids[np.maximum(gi, 0)], -1))
        return {
            "shard": np.array([faiss.serialize_index(index).tobytes()], dtype=object),
            "meta": np.array([_table_bytes(table)], dtype=object),
            "arrays": np.array([_npz_bytes(arrays)], dtype=object),
            "n": np.array([n]),
        }


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _npz_load(b: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(b), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _sample(ds: ray.data.Dataset, n: int, m: int, column: str, normalize: bool, seed: int) -> np.ndarray:
    frac = min(1.0, 1.2 * m / n)
    rows = ds.random_sample(frac, seed=seed).select_columns([column]) if frac < 1 else ds.select_columns([column])
    parts = [
        _batch_vectors(b, column, None, normalize) for b in rows.iter_batches(batch_size=65_536, batch_format="numpy")
    ]
    x = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
    if len(x) > m:
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), m, replace=False))]
    return x


def build_index_from_dataset(
    ds: ray.data.Dataset,
    *,
    model: str,
    checkpoint_hash: str = "",
    checkpoint: str | None = None,
    vector_column: str = "embedding",
    id_column: str | None = None,
    shard_rows: int = 100_000,
    num_workers: int | None = None,
    options: BuildOptions | None = None,
    **option_overrides: Any,
) -> VectorIndex:
    """Build a :class:`VectorIndex` from a dataset with a ``vector_column`` and any metadata columns.

    ``shard_rows`` vectors go to each ``map_batches`` call; ``num_workers`` actors add shards in
    parallel (default: the cluster's CPUs, at most 8). Other keywords are :class:`BuildOptions`.
    """
    t0 = time.perf_counter()
    opts = options or BuildOptions(**option_overrides)
    if options is not None and option_overrides:
        opts = BuildOptions.from_dict({**options.to_dict(), **option_overrides})
    if not isinstance(shard_rows, int) or shard_rows < 1:
        raise ValueError(f"`shard_rows` must be a positive int, got {shard_rows!r}")
    if vector_column not in ds.columns():
        raise ValueError(f"the dataset has no {vector_column!r} column (columns: {ds.columns()}); pass vector_column=")
    n = ds.count()
    if n == 0:
        raise ValueError("the dataset is empty; there is nothing to index")
    first = next(iter(ds.select_columns([vector_column]).iter_batches(batch_size=1, batch_format="numpy")))
    dim = _batch_vectors(first, vector_column, None, False).shape[1]

    if opts.index_factory:
        choice = IndexChoice(opts.index_factory, f"{opts.index_factory}: given explicitly", 0)
    else:
        choice = choose_index(
            n,
            dim,
            memory_budget=opts.memory_budget,
            latency_target_ms=opts.latency_target_ms,
            build_time_target_s=opts.build_time_target_s,
        )
    empty = new_faiss_index(choice.factory, dim, opts.metric)
    if fu.family(empty) != "ivf" or opts.dedup_threshold is not None:
        return _build_on_driver(ds, opts, model, checkpoint_hash, checkpoint, vector_column, id_column)
    # IVF takes ids itself; Refine comes wrapped in IDMap2: shards fill the inner index
    wrapped = isinstance(faiss.downcast_index(empty), (faiss.IndexIDMap, faiss.IndexIDMap2))
    target = faiss.downcast_index(empty.index) if wrapped else empty

    log.info("index choice for %dx%d: %s", n, dim, choice.reason)
    figures: dict[str, Any] = {"input_vectors": n, "path": "ray-sharded"}
    t = time.perf_counter()
    m = train_size(empty, n, opts.train_size)
    n_tq = min(opts.tune_queries, n // 2) if opts.tune else 0
    sample = _sample(ds, n, m + n_tq, vector_column, opts.normalize, opts.seed)
    rng = np.random.default_rng(opts.seed)
    sample = sample[rng.permutation(len(sample))]
    tq = sample[:n_tq] if n_tq else None  # tuning queries: dataset rows the training does not see
    train = sample[n_tq:] if len(sample) - n_tq >= min(m, 1000) else sample
    if fu.resolve_device(opts.device) == "cuda":  # pragma: no cover - needs faiss-gpu
        fu.train_on_gpu(empty, train)
    else:
        with fu.omp_threads(opts.threads):
            empty.train(train)
    figures.update(train_vectors=len(train), train_s=round(time.perf_counter() - t, 3))
    k_gt = 11

    workers = num_workers or max(1, min(8, int(ray.cluster_resources().get("CPU", 1))))
    t = time.perf_counter()
    out = ds.map_batches(
        AddShard,
        fn_constructor_kwargs=dict(
            trained=faiss.serialize_index(target).tobytes(),
            vector_column=vector_column,
            id_column=id_column,
            normalize=opts.normalize,
            metric=opts.metric,
            queries=tq,
            k=k_gt,
            with_ids=not wrapped,
        ),
        batch_size=shard_rows,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
    )
    tables, id_parts, gt = [], [], []
    offset = 0
    for row in out.iter_rows():
        shard = faiss.deserialize_index(np.frombuffer(row["shard"], dtype=np.uint8))
        arrays = _npz_load(row["arrays"])
        # positions inside the shard start at 0: shift them by the rows merged so far, unless the
        # shard holds the dataset's own ids (id_column into an index that takes ids)
        _merge_into(target, shard, add_id=0 if (id_column and not wrapped) else offset)
        ids = arrays["ids"] + (0 if id_column else offset)
        tables.append(_table_from_bytes(row["meta"]))
        id_parts.append(ids)
        if tq is not None:
            gt_ids = arrays["gt_ids"]
            gt.append((arrays["gt_scores"], np.where(gt_ids >= 0, gt_ids + (0 if id_column else offset), -1)))
        offset += int(row["n"])
    figures.update(add_s=round(time.perf_counter() - t, 3), shards=len(tables), workers=workers)
    all_ids = np.concatenate(id_parts)
    as_ids(all_ids, n=len(all_ids), name=f"dataset column {id_column!r}" if id_column else "ids")
    if wrapped:  # tell IDMap2 which id each internal position 0..N-1 has
        faiss.copy_array_to_vector(all_ids, empty.id_map)
        empty.ntotal = target.ntotal
        empty.construct_rev_map()
    index = empty
    fu.prepare_ids(index)
    table = pa.concat_tables(tables, promote_options="permissive") if tables and tables[0].num_columns else pa.table({})
    meta = MetadataStore().append(all_ids, table)
    manifest = IndexManifest(
        model=model,
        checkpoint_hash=checkpoint_hash,
        checkpoint=None if checkpoint is None else str(checkpoint),
        dim=dim,
        metric=opts.metric,
        normalize=opts.normalize,
        count=len(all_ids),
        index_factory=choice.factory,
        choice_reason=choice.reason,
        search_params=fu.default_params(index),
        next_id=int(all_ids.max()) + 1,
        build={"options": opts.to_dict(), "figures": figures},
        faiss_version=faiss.__version__,
    )
    idx = VectorIndex(index, meta, manifest, device=opts.device)
    if tq is not None:
        truth = _merge_topk(gt, k_gt, opts.metric)
        query_ids = truth[:, 0]  # each tuning query is a dataset row: its own nearest neighbour
        idx.tune(queries=tq, query_ids=query_ids, truth=truth, recall_target=opts.recall_target)
    figures.update(build_s=round(time.perf_counter() - t0, 3), index_bytes=idx.nbytes)
    return idx


def _merge_into(dst: faiss.Index, src: faiss.Index, *, add_id: int) -> None:
    """Append shard ``src`` to ``dst`` (same trained index), shifting its ids by ``add_id``."""
    d, s = faiss.downcast_index(dst), faiss.downcast_index(src)
    if isinstance(d, faiss.IndexRefine):  # base and refinement codes are merged side by side
        faiss.downcast_index(d.base_index).merge_from(faiss.downcast_index(s.base_index), add_id)
        faiss.downcast_index(d.refine_index).merge_from(faiss.downcast_index(s.refine_index))
        d.ntotal += s.ntotal
    else:
        d.merge_from(s, add_id)


def _merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int, metric: str) -> np.ndarray:
    """Global exact top-k ids from per-shard top-k lists."""
    scores = np.concatenate([s for s, _ in parts], axis=1)
    ids = np.concatenate([i for _, i in parts], axis=1)
    order = np.argsort(-scores if metric == "ip" else scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ids, order, axis=1)


def _build_on_driver(ds, opts, model, checkpoint_hash, checkpoint, vector_column, id_column) -> VectorIndex:
    """Gather vectors and metadata and build in-process (Flat and HNSW cannot merge; dedup needs all)."""
    log.info(
        "this index (Flat/HNSW, or a dedup build) is not built shard by shard; gathering the vectors on the driver"
    )
    xs, tables, ids = [], [], []
    for b in ds.iter_batches(batch_size=65_536, batch_format="numpy"):
        xs.append(_batch_vectors(b, vector_column, None, False))
        if id_column:
            ids.append(np.asarray(b[id_column]))
        meta = {k: (list(v) if v.ndim > 1 else v) for k, v in b.items() if k not in (vector_column, id_column)}
        if meta:
            tables.append(pa.table(meta))
    metadata = pa.concat_tables(tables, promote_options="permissive") if tables else None
    return VectorIndex.build(
        np.concatenate(xs),
        metadata,
        model=model,
        checkpoint_hash=checkpoint_hash,
        checkpoint=checkpoint,
        ids=np.concatenate(ids) if id_column else None,
        options=opts,
    )
