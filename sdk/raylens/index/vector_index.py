"""``VectorIndex``: a FAISS index, its metadata and its manifest, built, searched, changed and saved as one.

>>> import numpy as np
>>> vectors = np.random.default_rng(0).normal(size=(100, 16)).astype("float32")
>>> meta = {"path": [f"{i}.png" for i in range(100)], "label": [i % 3 for i in range(100)]}
>>> idx = VectorIndex.build(vectors, meta, model="clip-tiny", checkpoint_hash="abc123")
>>> idx.manifest.index_factory, len(idx)  # chosen from N, dim and the memory budget
('Flat', 100)
>>> idx.search(vectors[7], k=3)[0][0].id
7
>>> {h.metadata["label"] for h in idx.search(vectors[7], k=5, filters={"label": [1, 2]})[0]} <= {1, 2}
True
>>> ids = idx.add(vectors[:5], {"path": ["new.png"] * 5, "label": [0] * 5})
>>> idx.delete(ids[:3]), len(idx)  # stable ids, no rebuild
(3, 102)
>>> len(VectorIndex.load(idx.save("runs/demo/index")))  # one directory, atomic, sha256-checked
102
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from raylens.index import _faiss_utils as fu
from raylens.index._validate import MAX_K, as_ids, as_matrix, check_k, normalize_rows
from raylens.index.choose import IndexChoice, choose_index
from raylens.index.config import BuildOptions
from raylens.index.dedup import duplicate_groups, fold_duplicates
from raylens.index.errors import IndexCorruptError, IndexMismatchError, IndexReadOnlyError
from raylens.index.filters import FilterCache, check_filter_types, matching_ids, normalize_filters
from raylens.index.hits import SearchHit
from raylens.index.manifest import MANIFEST_NAME, IndexManifest, normalize_data_roots, utc_now
from raylens.index.metadata import MetadataStore, to_table
from raylens.index.store import open_version, read_manifest, write_directory
from raylens.index.tune import TuneResult, autotune

__all__ = ["VectorIndex", "INDEX_FILE", "METADATA_FILE", "TOMBSTONES_FILE", "FILTER_CACHE_BYTES"]

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
METADATA_FILE = "metadata.parquet"
TOMBSTONES_FILE = "tombstones.npy"
ADD_CHUNK = 65_536
FILTER_CACHE_BYTES = 64 * 2**20
"""Default memory bound of the filter cache (the ids each recent filter allows), per index."""
EXACT_FALLBACK_MAX = 200_000
"""A filtered search that the ANN structure cannot fill falls back to exact search over at most this many vectors."""


def new_faiss_index(factory: str, dim: int, metric: str) -> faiss.Index:
    """An empty index for ``factory`` that takes ``add_with_ids`` (IVF natively, others inside IDMap2)."""
    mt = fu.metric_type(metric)
    try:
        index = faiss.index_factory(dim, factory, mt)
    except RuntimeError as e:
        raise ValueError(f"`index_factory` {factory!r} is not a valid FAISS factory string for dim {dim}: {e}") from e
    if not (factory.startswith("IDMap") or (fu.family(index) == "ivf" and not fu.has_refine(index))):
        index = faiss.index_factory(dim, "IDMap2," + factory, mt)
    fu.configure_training(index)
    return index


def train_size(index: faiss.Index, n: int, requested: int | None) -> int:
    """Training sample size: as asked, else ~64 points per IVF list, at least 16,384 (PQ codebooks
    want ~40+ points per centroid) and at most 200,000."""
    if requested:
        return min(n, requested)
    lists = fu.nlist(index) or 0
    return min(n, max(64 * lists, 16_384), 200_000)


class VectorIndex:
    """A searchable, updatable set of vectors with stable ids and per-id metadata.

    Build with :meth:`build`, open with :meth:`load`. Methods are thread-safe (one lock).
    """

    def __init__(
        self,
        index: faiss.Index,
        metadata: MetadataStore,
        manifest: IndexManifest,
        tombstones: np.ndarray | None = None,
        *,
        read_only: bool = False,
        device: str = "cpu",
        filter_cache_bytes: int = FILTER_CACHE_BYTES,
    ):
        self._index = index
        self._meta = metadata
        self.manifest = manifest
        self._tomb = np.asarray(tombstones if tombstones is not None else [], dtype=np.int64)
        self._read_only = read_only
        self._lock = threading.RLock()
        self._filter_cache = FilterCache(filter_cache_bytes)
        self._device = fu.resolve_device(device)
        self._gpu_index: faiss.Index | None = None
        self.last_tune: TuneResult | None = None

    # ---- building ---------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        metadata: Any = None,
        model: str = "unknown",
        checkpoint_hash: str = "",
        checkpoint: str | None = None,
        metric: str = "ip",
        normalize: bool = True,
        index_factory: str | None = None,
        *,
        ids: np.ndarray | None = None,
        data_roots: list[str | Path] | None = None,
        options: BuildOptions | None = None,
        **option_overrides: Any,
    ) -> VectorIndex:
        """Build an index over ``vectors`` (N, D) with one metadata row per vector.

        ``index_factory=None`` chooses the index from N, D, ``memory_budget`` and
        ``latency_target_ms`` (see :mod:`raylens.index.choose`); the reason is logged and kept in
        ``manifest.choice_reason``. Further :class:`BuildOptions` fields may be passed as keywords
        (``memory_budget="2G"``, ``recall_target=0.95``, ``dedup_threshold=0.97``, ``tune=False``...),
        or a whole ``options=BuildOptions(...)`` (which then wins over ``metric``/``normalize``/
        ``index_factory``). Ids default to 0..N-1. ``data_roots``: the directories the ``path``
        metadata lives under (see :meth:`set_data_roots`). Invalid input raises before anything is built.
        """
        t0 = time.perf_counter()
        if options is None:
            options = BuildOptions(metric=metric, normalize=normalize, index_factory=index_factory, **option_overrides)
        elif option_overrides:
            options = BuildOptions.from_dict({**options.to_dict(), **option_overrides})
        if not isinstance(model, str) or not model:
            raise ValueError(f"`model` must be the name of the model that made the vectors, got {model!r}")
        if not isinstance(checkpoint_hash, str):
            raise ValueError(f"`checkpoint_hash` must be a string ('' if unknown), got {checkpoint_hash!r}")
        roots = normalize_data_roots(data_roots)
        x = as_matrix(vectors, name="vectors", dim=None)
        n, dim = x.shape
        table = to_table(metadata, n)
        ids = np.arange(n, dtype=np.int64) if ids is None else as_ids(ids, n=n)
        if options.normalize:
            x = normalize_rows(x, name="vectors")
        figures: dict[str, Any] = {"input_vectors": n}

        if options.dedup_threshold is not None:
            rep = duplicate_groups(x, float(options.dedup_threshold), options.metric)
            keep = rep == np.arange(n)
            figures["duplicates_dropped"] = int(n - keep.sum())
            figures["duplicate_of"] = {int(ids[i]): int(ids[rep[i]]) for i in np.flatnonzero(~keep)[:10_000]}
            if not keep.all():
                x, ids = x[keep], ids[keep]
                table = table.filter(keep) if table.num_columns else table
                log.info("dedup: dropped %d near-duplicates (threshold %s)", n - keep.sum(), options.dedup_threshold)
            n = len(x)

        device = fu.resolve_device(options.device)
        if options.index_factory:
            choice = IndexChoice(options.index_factory, f"{options.index_factory}: given explicitly", 0)
        else:
            choice = choose_index(
                n,
                dim,
                memory_budget=options.memory_budget,
                latency_target_ms=options.latency_target_ms,
                build_time_target_s=options.build_time_target_s,
            )
        log.info("index choice for %dx%d: %s", n, dim, choice.reason)

        with fu.omp_threads(options.threads):
            obj = cls._build_index(
                x,
                ids,
                table,
                choice,
                options,
                device,
                figures,
                t0,
                model=model,
                checkpoint_hash=checkpoint_hash,
                checkpoint=checkpoint,
            )
        obj.manifest.data_roots = roots
        return obj

    @classmethod
    def _build_index(cls, x, ids, table, choice, options, device, figures, t0, *, model, checkpoint_hash, checkpoint):
        n, dim = x.shape
        index = new_faiss_index(choice.factory, dim, options.metric)
        t_train = time.perf_counter()
        untrained_rows = None
        if not index.is_trained:
            rng = np.random.default_rng(options.seed)
            m = train_size(index, n, options.train_size)
            rows = np.arange(n) if m >= n else np.sort(rng.choice(n, m, replace=False))
            sample = x[rows]
            untrained_rows = np.setdiff1d(np.arange(n), rows)
            if device == "cuda":  # pragma: no cover - needs faiss-gpu
                fu.train_on_gpu(index, sample)
            else:
                index.train(sample)
            figures["train_vectors"] = int(len(sample))
        figures["train_s"] = round(time.perf_counter() - t_train, 3)
        fu.prepare_ids(index)
        t_add = time.perf_counter()
        for s in range(0, n, ADD_CHUNK):
            index.add_with_ids(x[s : s + ADD_CHUNK], ids[s : s + ADD_CHUNK])
        figures["add_s"] = round(time.perf_counter() - t_add, 3)

        manifest = IndexManifest(
            model=model,
            checkpoint_hash=checkpoint_hash,
            checkpoint=None if checkpoint is None else str(checkpoint),
            dim=dim,
            metric=options.metric,
            normalize=options.normalize,
            count=n,
            index_factory=choice.factory,
            choice_reason=choice.reason,
            search_params=fu.default_params(index),
            next_id=int(ids.max()) + 1 if n else 0,
            build={"options": options.to_dict(), "figures": figures},
            faiss_version=faiss.__version__,
        )
        obj = cls(index, MetadataStore().append(ids, table), manifest, device=device)
        if options.tune and fu.tunable_params(index):
            # tuning queries come from rows the training did not see, when there are enough of them
            pool = (
                untrained_rows if untrained_rows is not None and len(untrained_rows) >= options.tune_queries else None
            )
            obj.tune(
                x,
                ids,
                recall_target=options.recall_target,
                n_queries=options.tune_queries,
                seed=options.seed,
                query_pool=pool,
            )
        figures["build_s"] = round(time.perf_counter() - t0, 3)
        figures["index_bytes"] = obj.nbytes
        return obj

    # ---- properties -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.manifest.count

    def __repr__(self) -> str:
        m = self.manifest
        return f"VectorIndex({m.index_factory!r}, count={m.count}, dim={m.dim}, metric={m.metric!r}, model={m.model!r})"

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def metric(self) -> str:
        return self.manifest.metric

    @property
    def ids(self) -> np.ndarray:
        """Live ids, sorted."""
        return self._meta.ids.copy()

    @property
    def columns(self) -> list[str]:
        """Metadata columns (``id`` included), usable in filters."""
        return self._meta.columns

    @property
    def column_types(self) -> dict[str, str]:
        """``{column: Arrow type name}`` of the metadata (``id`` included), e.g. ``{"id": "int64"}``."""
        return {f.name: str(f.type) for f in self._meta.table.schema}

    @property
    def faiss_index(self) -> faiss.Index:
        """The underlying FAISS index (read it; change it through this class)."""
        return self._index

    @property
    def nbytes(self) -> int:
        """Memory the FAISS index takes (its serialized size)."""
        return fu.index_nbytes(self._index)

    @property
    def read_only(self) -> bool:
        return self._read_only

    @property
    def filter_cache_bytes(self) -> int:
        """The memory bound of the filter cache (the ids recent filters allow); set it to resize (0: off)."""
        return self._filter_cache.max_bytes

    @filter_cache_bytes.setter
    def filter_cache_bytes(self, max_bytes: int) -> None:
        self._filter_cache = FilterCache(max_bytes)

    def set_data_roots(self, roots: list[str | Path] | str | Path | None) -> None:
        """Declare the directories the files of the ``path`` metadata live under (saved in the manifest
        by the next :meth:`save`); the search service serves an item's file only from inside them."""
        self.manifest.data_roots = normalize_data_roots(roots)

    def contains(self, item_id: int) -> bool:
        """Whether ``item_id`` is a live id (a binary search over the sorted ids: no copy, no scan)."""
        if isinstance(item_id, bool) or not isinstance(item_id, (int, np.integer)) or not 0 <= item_id < 2**63:
            return False
        return bool(self._meta.contains(np.asarray([item_id], dtype=np.int64))[0])

    def metadata(self, ids) -> list[dict[str, Any]]:
        """Metadata rows of ``ids`` (unknown ids raise)."""
        ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        self._check_known(ids)
        return self._meta.rows(ids)

    def reconstruct(self, ids) -> np.ndarray:
        """Stored vectors of ``ids`` (approximate for PQ indices), e.g. for image-to-image by id."""
        ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        self._check_known(ids)
        with self._lock:
            return self._stored_vectors(ids)

    # ---- searching --------------------------------------------------------------------------------

    def _prepare_queries(self, queries) -> np.ndarray:
        q = as_matrix(queries, name="queries", dim=self.dim, allow_1d=True)
        return normalize_rows(q, name="queries") if self.manifest.normalize else q

    def _allowed(self, filters: dict | None) -> np.ndarray | None:
        spec = normalize_filters(filters, self._meta.columns)
        check_filter_types(filters, self._meta.table.schema)
        if not spec:
            return None
        allowed = self._filter_cache.get(spec)
        if allowed is None:
            allowed = matching_ids(self._meta.table, spec)
            self._filter_cache.put(spec, allowed)
        return allowed

    def _raw_search(self, x: np.ndarray, k: int, allowed: np.ndarray | None, params: dict[str, int]):
        """(scores, ids) with -1 ids for missing results; fills k results whenever k vectors qualify."""
        if allowed is not None:
            sel = fu.selector_for(allowed) if len(allowed) else None
            available = len(allowed)
        elif len(self._tomb):
            sel, available = fu.selector_for(self._tomb, exclude=True), self.manifest.count
        else:
            sel, available = None, self.manifest.count
        if available == 0:
            return np.full((len(x), k), np.nan, np.float32), np.full((len(x), k), -1, np.int64)
        if sel is None and self._device == "cuda" and self._gpu() is not None:  # pragma: no cover - needs faiss-gpu
            D, I = fu.gpu_search(self._gpu_index, x, k, params)
        else:  # filters (id selectors) run on the CPU index: FAISS GPU indices do not take them
            p, keep = fu.search_params(self._index, params, sel, k=k)
            D, I = self._index.search(x, k, params=p)
            del keep
        need = min(k, available)
        short = np.flatnonzero((I >= 0).sum(1) < need)
        if short.size:
            self._fill_short(x, k, allowed, params, sel, need, D, I, short)
        return D, I

    def _gpu(self) -> faiss.Index | None:  # pragma: no cover - needs faiss-gpu
        """The GPU clone of the index (made on first use after each change), or None if unsupported."""
        if self._gpu_index is None:
            self._gpu_index = fu.to_gpu(self._index) or False
        return self._gpu_index or None

    def _fill_short(self, x, k, allowed, params, sel, need, D, I, short) -> None:
        """Rows with fewer than ``need`` results (selective filter, small nprobe/efSearch): search wider.

        IVF widens ``nprobe`` up to every list (which is exhaustive); HNSW widens ``efSearch``;
        what is still short falls back to exact search over the allowed vectors.
        """
        wider = dict(params)
        for name, values in fu.tunable_params(self._index).items():
            if name not in ("nprobe", "efSearch"):
                continue
            limit = values[-1] if name == "nprobe" else max(values[-1], k)
            while short.size and wider.get(name, 1) < limit:
                wider[name] = min(limit, max(1, wider.get(name, 1)) * 4)
                p, keep = fu.search_params(self._index, wider, sel, k=k)
                d2, i2 = self._index.search(x[short], k, params=p)
                D[short], I[short] = d2, i2
                short = short[(i2 >= 0).sum(1) < need]
        if not short.size:
            return
        subset = allowed if allowed is not None else self._meta.ids
        if len(subset) > EXACT_FALLBACK_MAX:
            log.warning(
                "%d queries got fewer than %d results and %d vectors are too many for exact fallback",
                short.size,
                need,
                len(subset),
            )
            return
        vecs = self._stored_vectors(subset)
        d2, pos = faiss.knn(x[short], vecs, min(k, len(subset)), metric=fu.metric_type(self.metric))
        D[short], I[short] = np.nan, -1
        D[short, : d2.shape[1]] = d2
        I[short, : d2.shape[1]] = np.where(pos >= 0, subset[np.maximum(pos, 0)], -1)

    def _stored_vectors(self, ids: np.ndarray) -> np.ndarray:
        """Vectors of ``ids`` as the index stores them (decoded for compressed indices)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if not len(ids):
            return np.zeros((0, self.dim), np.float32)
        return np.asarray(self._index.reconstruct_batch(ids), dtype=np.float32).reshape(len(ids), self.dim)

    def search_arrays(
        self, queries, k: int = 10, filters: dict | None = None, *, params: dict[str, int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw batched search: ``(scores, ids)``, each (Q, k), ids -1 where fewer than k qualify."""
        x = self._prepare_queries(queries)
        with self._lock:
            check_k(k, count=self.manifest.count)
            allowed = self._allowed(filters)
            return self._raw_search(x, k, allowed, {**self.manifest.search_params, **(params or {})})

    def search(
        self,
        queries,
        k: int = 5,
        filters: dict | None = None,
        *,
        offset: int = 0,
        dedup: float | None = None,
        params: dict[str, int] | None = None,
    ) -> list[list[SearchHit]]:
        """Batched search: one list of hits per query, best first.

        ``queries`` is (Q, D) or (D,). ``filters`` restricts results by metadata inside the FAISS
        search (``{"label": 3, "split": ["train", "val"]}``). ``offset`` skips that many results
        (pagination: ``k`` results from rank ``offset``). ``dedup`` folds near-duplicate results
        (score past the threshold) into the better-ranked one (listed in ``hit.duplicates``).
        ``params`` overrides the tuned search parameters for this call.
        """
        x = self._prepare_queries(queries)
        with self._lock:
            check_k(k, count=self.manifest.count, offset=offset)
            allowed = self._allowed(filters)
            want = k + offset
            fetch = want if dedup is None else min(self.manifest.count, MAX_K, want * 4)
            if dedup is not None and want > 2_500:
                raise ValueError(f"`dedup` works on at most 2,500 results per query (k + offset), got {want}; lower k")
            D, I = self._raw_search(x, fetch, allowed, {**self.manifest.search_params, **(params or {})})
            groups_per_row = [self._fold(I[r], float(dedup)) for r in range(len(I))] if dedup is not None else None
            live = np.unique(I[I >= 0])
            rows = dict(zip(live.tolist(), self._meta.rows(live))) if live.size else {}
        out = []
        for r in range(len(I)):
            valid = np.flatnonzero(I[r] >= 0)
            groups = groups_per_row[r] if groups_per_row is not None else [[int(j)] for j in valid]
            hits = []
            for g in groups[offset : offset + k]:
                j = g[0]
                row = dict(rows[int(I[r, j])])
                row.pop("id", None)
                hits.append(
                    SearchHit(
                        id=int(I[r, j]),
                        score=float(D[r, j]),
                        path=row.pop("path", None),
                        caption=row.pop("caption", None),
                        metadata=row,
                        duplicates=[int(I[r, i]) for i in g[1:]],
                    )
                )
            out.append(hits)
        return out

    def _fold(self, ids: np.ndarray, threshold: float) -> list[list[int]]:
        valid = np.flatnonzero(ids >= 0)
        vecs = self._stored_vectors(ids[valid])
        return [[int(valid[p]) for p in g] for g in fold_duplicates(vecs, threshold, self.metric)]

    # ---- tuning -----------------------------------------------------------------------------------

    def tune(
        self,
        database: np.ndarray | None = None,
        database_ids: np.ndarray | None = None,
        *,
        queries: np.ndarray | None = None,
        query_ids: np.ndarray | None = None,
        truth: np.ndarray | None = None,
        recall_target: float = 0.95,
        k: int = 10,
        n_queries: int = 1000,
        seed: int = 0,
        query_pool: np.ndarray | None = None,
    ) -> TuneResult | None:
        """Find the cheapest search parameters reaching recall@k >= ``recall_target`` against exact search.

        The exact ground truth comes from ``truth`` (exact top ids of ``queries``), else from
        ``database`` (the indexed vectors, ids in ``database_ids``, default the live ids in
        sorted order), else from the index's stored vectors (exact for Flat/HNSW/IVF-Flat only).
        Default queries are ``n_queries`` database rows (drawn from the row positions in
        ``query_pool`` if given, e.g. rows the training never saw); a query's own id
        (``query_ids`` for given queries) is left out of both result lists, so no query counts
        finding itself.
        The result goes to ``manifest.search_params`` and ``manifest.tuning``.
        """
        knobs = fu.tunable_params(self._index)
        if not knobs:
            return None
        rng = np.random.default_rng(seed)
        with self._lock:
            self_ids = None if query_ids is None else np.asarray(query_ids, dtype=np.int64)
            if truth is not None:
                if queries is None:
                    raise ValueError("`truth` needs the `queries` it belongs to")
                q = self._prepare_queries(queries)
            else:
                live = self._meta.ids
                if database is None:
                    db_ids = live if len(live) <= 1_000_000 else np.sort(rng.choice(live, 1_000_000, replace=False))
                    db = self._stored_vectors(db_ids)
                else:
                    db = as_matrix(database, name="database", dim=self.dim)
                    if self.manifest.normalize:
                        db = normalize_rows(db, name="database")
                    db_ids = live if database_ids is None else np.asarray(database_ids, dtype=np.int64)
                    if len(db_ids) != len(db):
                        raise ValueError(
                            f"`database` has {len(db)} rows but there are {len(db_ids)} ids; pass database_ids="
                        )
                if queries is None:
                    pool = np.arange(len(db)) if query_pool is None else np.asarray(query_pool)
                    pick = rng.choice(pool, min(n_queries, len(pool)), replace=False)
                    q, self_ids = db[pick], db_ids[pick]
                else:
                    q = self._prepare_queries(queries)
                _, pos = faiss.knn(q, db, min(k + 1, len(db)), metric=fu.metric_type(self.metric))
                truth = np.where(pos >= 0, db_ids[np.maximum(pos, 0)], -1)
            truth = self._drop_self(np.asarray(truth, dtype=np.int64), self_ids, k)
            kk = min(k + (self_ids is not None), self.manifest.count)

            def run(params: dict[str, int], _k: int) -> np.ndarray:
                return self._drop_self(self._raw_search(q, kk, None, params)[1], self_ids, k)

            result = autotune(run, truth, knobs, target=recall_target, k=k)
            self.manifest.search_params = {**self.manifest.search_params, **result.params}
            self.manifest.tuning = result.to_dict()
            self.last_tune = result
        log.info("autotune: %s -> recall@%d %.3f at %.3f ms/query", result.params, k, result.recall, result.latency_ms)
        return result

    @staticmethod
    def _drop_self(ids: np.ndarray, self_ids: np.ndarray | None, k: int) -> np.ndarray:
        if self_ids is None:
            return ids[:, :k]
        out = np.full((len(ids), k), -1, np.int64)
        for r, (row, me) in enumerate(zip(ids, self_ids)):
            row = row[row != me][:k]
            out[r, : len(row)] = row
        return out

    # ---- changing ---------------------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._read_only:
            raise IndexReadOnlyError(
                "this index was opened with mmap=True (read-only); load it without mmap to change it"
            )

    def _check_known(self, ids: np.ndarray) -> None:
        known = self._meta.contains(ids)
        if not known.all():
            bad = ids[~known][:5].tolist()
            raise ValueError(f"unknown id(s) {bad} (never added, or deleted); see index.ids for the live ids")

    def add(self, vectors, metadata: Any = None, *, ids=None) -> np.ndarray:
        """Add vectors (and their metadata rows) without rebuilding; returns their new stable ids.

        Ids continue from the largest id ever used unless given; given ids must be new. Nothing
        changes if any input is invalid.
        """
        self._check_writable()
        x = as_matrix(vectors, name="vectors", dim=self.dim)
        if self.manifest.normalize:
            x = normalize_rows(x, name="vectors")
        n = len(x)
        table = to_table(metadata, n)
        with self._lock:
            if ids is None:
                new_ids = np.arange(self.manifest.next_id, self.manifest.next_id + n, dtype=np.int64)
            else:
                new_ids = as_ids(ids, n=n)
                clash = self._meta.contains(new_ids) | np.isin(new_ids, self._tomb)
                if clash.any():
                    raise ValueError(
                        f"`ids` {new_ids[clash][:5].tolist()} are already used; ids are never reused, omit ids= to get new ones"
                    )
            meta = self._meta.append(new_ids, table)  # validates the metadata types first
            for s in range(0, n, ADD_CHUNK):
                self._index.add_with_ids(x[s : s + ADD_CHUNK], new_ids[s : s + ADD_CHUNK])
            self._meta = meta
            self._changed(count=self.manifest.count + n, next_id=max(self.manifest.next_id, int(new_ids.max()) + 1))
        return new_ids

    def delete(self, ids, *, missing_ok: bool = False) -> int:
        """Delete vectors by id without rebuilding; returns how many were deleted.

        Flat and IVF indices remove them; HNSW and refined indices keep tombstones that every
        search excludes (``compact()`` rebuilds without them).
        """
        self._check_writable()
        ids = np.unique(np.atleast_1d(np.asarray(ids)))
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"`ids` must be integers, got dtype {ids.dtype}")
        ids = ids.astype(np.int64)
        with self._lock:
            known = self._meta.contains(ids)
            if not known.all() and not missing_ok:
                raise ValueError(f"unknown id(s) {ids[~known][:5].tolist()}; pass missing_ok=True to ignore them")
            ids = ids[known]
            if not ids.size:
                return 0
            if fu.supports_remove(self._index):
                removed = self._index.remove_ids(faiss.IDSelectorArray(ids))
                assert removed == ids.size, (removed, ids.size)
            else:
                self._tomb = np.union1d(self._tomb, ids)
            self._meta = self._meta.drop(ids)
            self._changed(count=self.manifest.count - ids.size)
        return int(ids.size)

    def compact(self) -> None:
        """Rebuild the index structure without tombstoned vectors (HNSW/refined indices after many deletes).

        Uses the stored vectors, so for compressed indices it re-encodes decoded vectors.
        """
        self._check_writable()
        with self._lock:
            if not len(self._tomb):
                return
            live = self._meta.ids
            vecs = self._stored_vectors(live)
            fresh = faiss.clone_index(self._index)
            fresh.reset()
            fu.prepare_ids(fresh)
            for s in range(0, len(live), ADD_CHUNK):
                fresh.add_with_ids(vecs[s : s + ADD_CHUNK], live[s : s + ADD_CHUNK])
            self._index, self._tomb = fresh, np.zeros(0, np.int64)
            self._changed(count=len(live))

    def _changed(self, **fields: Any) -> None:
        for name, value in fields.items():
            setattr(self.manifest, name, value)
        self.manifest.tombstones = int(len(self._tomb))
        self._filter_cache.clear()
        self._gpu_index = None

    # ---- persistence ------------------------------------------------------------------------------

    def save(self, directory: str | Path, *, overwrite: bool = False) -> Path:
        """Write the index as one directory (``index.faiss``, ``metadata.parquet``, ``manifest.json``), atomically.

        Replacing a directory that holds an index of another model or dim needs ``overwrite=True``;
        a non-empty directory that is not an index is never replaced.
        """
        directory = Path(directory).absolute()
        if directory.exists():
            if not directory.is_dir():
                raise ValueError(f"{str(directory)!r} is a file; save() needs a directory path")
            if (directory / MANIFEST_NAME).is_file():
                try:
                    old = read_manifest(directory)
                except IndexCorruptError:
                    old = None
                if (
                    old is not None
                    and not overwrite
                    and (old.model, old.dim, old.checkpoint_hash)
                    != (self.manifest.model, self.dim, self.manifest.checkpoint_hash)
                ):
                    raise IndexMismatchError(
                        f"{str(directory)!r} holds an index of model {old.model!r} (checkpoint {old.checkpoint_hash!r}, "
                        f"dim {old.dim}); this one is {self.manifest.model!r} ({self.manifest.checkpoint_hash!r}, dim "
                        f"{self.dim}). Save elsewhere or pass overwrite=True"
                    )
            elif any(directory.iterdir()):
                raise ValueError(
                    f"{str(directory)!r} is a non-empty directory without an index manifest; save to a new or empty directory"
                )
        with self._lock:
            manifest = IndexManifest.from_dict(self.manifest.to_dict())
            manifest.updated_at = utc_now()
            manifest.faiss_version = faiss.__version__

            def write_files(tmp: Path) -> IndexManifest:
                faiss.write_index(self._index, str(tmp / INDEX_FILE))
                self._meta.save(tmp / METADATA_FILE)
                if len(self._tomb):
                    np.save(tmp / TOMBSTONES_FILE, self._tomb)
                return manifest

            self.manifest = write_directory(directory, write_files)
        return directory

    @classmethod
    def load(
        cls,
        directory: str | Path,
        expect_model: str | None = None,
        expect_checkpoint_hash: str | None = None,
        *,
        mmap: bool = False,
        verify: bool = True,
        device: str = "cpu",
        filter_cache_bytes: int = FILTER_CACHE_BYTES,
    ) -> VectorIndex:
        """Open an index directory written by :meth:`save`.

        ``expect_model``/``expect_checkpoint_hash`` guard against querying with another model
        (IndexMismatchError). ``verify`` checks every file's sha256 (IndexCorruptError).
        ``mmap=True`` memory-maps the index and metadata (for indices bigger than RAM; read-only).
        The load reads one pinned version of the directory (:func:`raylens.index.store.open_version`):
        a save running meanwhile never makes it see a half-written, mixed or deleted version.
        """
        with open_version(directory) as v:  # every file from one pinned version, whatever saves run meanwhile
            manifest = v.manifest
            if expect_model is not None and manifest.model != expect_model:
                raise IndexMismatchError(
                    f"index {str(directory)!r} was built with model {manifest.model!r}, not {expect_model!r}; "
                    "query it with the model it was built with, or rebuild it with this one"
                )
            if expect_checkpoint_hash is not None and manifest.checkpoint_hash != expect_checkpoint_hash:
                raise IndexMismatchError(
                    f"index {str(directory)!r} was built from checkpoint {manifest.checkpoint_hash!r}, not "
                    f"{expect_checkpoint_hash!r}; re-embed and rebuild the index with this checkpoint"
                )
            if verify:
                v.verify()
            flags = 0
            if mmap:  # IVF: map the inverted lists; flat storage (Flat, HNSW): map the codes
                flags = faiss.IO_FLAG_READ_ONLY | (
                    faiss.IO_FLAG_MMAP if "IVF" in manifest.index_factory else faiss.IO_FLAG_MMAP_IFC
                )
            try:
                index = faiss.read_index(str(v.path(INDEX_FILE)), flags)
                meta = MetadataStore.load(v.path(METADATA_FILE), memory_map=mmap)
                tomb = np.load(v.path(TOMBSTONES_FILE)) if v.exists(TOMBSTONES_FILE) else None
            except (RuntimeError, OSError, ValueError) as e:
                raise IndexCorruptError(
                    f"index {str(directory)!r} cannot be read ({e}); restore it or rebuild the index"
                ) from e
        n_tomb = 0 if tomb is None else len(tomb)
        if index.d != manifest.dim or index.ntotal - n_tomb != manifest.count or len(meta) != manifest.count:
            raise IndexCorruptError(
                f"index {str(directory)!r} is inconsistent: dim {index.d} vs manifest {manifest.dim}, "
                f"{index.ntotal - n_tomb} vectors and {len(meta)} metadata rows vs manifest count {manifest.count}; rebuild it"
            )
        if not mmap:
            fu.prepare_ids(index)
        return cls(index, meta, manifest, tomb, read_only=mmap, device=device, filter_cache_bytes=filter_cache_bytes)
