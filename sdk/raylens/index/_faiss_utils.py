"""Small FAISS helpers: metrics, walking wrapper chains, per-search parameters, GPU cloning.

FAISS indices nest (``IDMap2`` → ``PreTransform`` (OPQ) → ``IVF`` → quantizer, or ``Refine`` around a
base). Search parameters must mirror that nesting, so :func:`search_params` walks the chain.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import faiss
import numpy as np

log = logging.getLogger(__name__)

METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}


def metric_type(metric: str) -> int:
    return METRICS[metric]


def unwrap(index: faiss.Index) -> list[faiss.Index]:
    """The chain of (downcast) indices from the outermost wrapper to the innermost searcher."""
    chain = []
    cur = faiss.downcast_index(index)
    while True:
        chain.append(cur)
        if isinstance(cur, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexPreTransform)):
            cur = faiss.downcast_index(cur.index)
        elif isinstance(cur, faiss.IndexRefine):
            cur = faiss.downcast_index(cur.base_index)
        else:
            return chain


def family(index: faiss.Index) -> str:
    """``flat``, ``hnsw``, ``ivf`` or ``other`` for the innermost searcher of ``index``."""
    inner = unwrap(index)[-1]
    if isinstance(inner, faiss.IndexIVF):
        return "ivf"
    if isinstance(inner, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(inner, faiss.IndexFlat):
        return "flat"
    return "other"


def has_refine(index: faiss.Index) -> bool:
    return any(isinstance(i, faiss.IndexRefine) for i in unwrap(index))


def supports_remove(index: faiss.Index) -> bool:
    """Whether ``remove_ids`` works (Flat and IVF do; HNSW and Refine do not: those get tombstones)."""
    return family(index) in ("flat", "ivf") and not has_refine(index)


def prepare_ids(index: faiss.Index) -> None:
    """Make an IVF index reconstruct by id and remove by id (a hash-table direct map)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and ivf.direct_map.type != faiss.DirectMap.Hashtable:
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)


@contextlib.contextmanager
def omp_threads(n: int | None) -> Iterator[None]:
    """Run FAISS with ``n`` OpenMP threads inside the block (None: leave as is)."""
    if n is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def configure_training(index: faiss.Index, niter: int = 10) -> None:
    """Cheaper training: ``niter`` k-means iterations for IVF, no polysemous training for IVF-PQ
    (FAISS's factory turns it on; it costs minutes and only helps polysemous search, unused here)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return
    ivf = faiss.downcast_index(ivf)
    ivf.cp.niter = niter
    if hasattr(ivf, "do_polysemous_training"):
        ivf.do_polysemous_training = False


def drop_direct_map(index: faiss.Index) -> None:
    """Remove the direct map (FAISS's ``merge_from`` refuses IVF indices that carry one)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and ivf.direct_map.type != faiss.DirectMap.NoMap:
        ivf.set_direct_map_type(faiss.DirectMap.NoMap)


def nlist(index: faiss.Index) -> int | None:
    ivf = faiss.try_extract_index_ivf(index)
    return int(ivf.nlist) if ivf is not None else None


def tunable_params(index: faiss.Index) -> dict[str, list[int]]:
    """The search knobs of ``index`` and the values worth trying, cheapest first."""
    fam = family(index)
    out: dict[str, list[int]] = {}
    if fam == "ivf":
        n = nlist(index)
        out["nprobe"] = [
            p for p in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024, 2048, 4096) if p <= n
        ]
        if out["nprobe"][-1] != n:
            out["nprobe"].append(n)
    elif fam == "hnsw":
        out["efSearch"] = [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024]
    if has_refine(index):
        out["k_factor"] = [1, 2, 4, 8, 16]
    return out


def default_params(index: faiss.Index) -> dict[str, int]:
    """Reasonable untuned settings (what a search uses before autotuning)."""
    fam = family(index)
    out: dict[str, int] = {}
    if fam == "ivf":
        out["nprobe"] = min(nlist(index), max(1, nlist(index) // 16))
    elif fam == "hnsw":
        out["efSearch"] = 64
    if has_refine(index):
        out["k_factor"] = 4
    return out


def search_params(
    index: faiss.Index, params: dict[str, Any], sel: faiss.IDSelector | None, *, k: int
) -> tuple[Any, list]:
    """FAISS ``SearchParameters`` for ``index`` carrying ``sel`` and the tuned knobs.

    Returns the parameters object and a list of the Python objects it points to (keep it alive
    for the duration of the search: SWIG does not own them).
    """
    keep: list = [sel]
    chain = unwrap(index)

    def build(i: int):
        cur = chain[i]
        if isinstance(cur, (faiss.IndexIDMap, faiss.IndexIDMap2)):
            return build(i + 1)  # IDMap translates the selector to internal ids itself
        if isinstance(cur, faiss.IndexPreTransform):
            p = faiss.SearchParametersPreTransform()
            p.index_params = inner = build(i + 1)
            keep.append(inner)
            return p
        if isinstance(cur, faiss.IndexRefine):
            p = faiss.IndexRefineSearchParameters()
            p.k_factor = float(params.get("k_factor", cur.k_factor))
            p.base_index_params = inner = build(i + 1)
            keep.append(inner)
            return p
        if isinstance(cur, faiss.IndexIVF):
            p = faiss.SearchParametersIVF()
            p.nprobe = int(params.get("nprobe", cur.nprobe))
            q = faiss.downcast_index(cur.quantizer)
            if isinstance(q, faiss.IndexHNSW):
                qp = faiss.SearchParametersHNSW()
                qp.efSearch = max(int(params.get("quantizer_efSearch", 64)), p.nprobe)
                p.quantizer_params = qp
                keep.append(qp)
        elif isinstance(cur, faiss.IndexHNSW):
            p = faiss.SearchParametersHNSW()
            p.efSearch = max(int(params.get("efSearch", cur.hnsw.efSearch)), k)
        else:
            p = faiss.SearchParameters()
        if sel is not None:
            p.sel = sel
        return p

    top = build(0)
    keep.append(top)
    return top, keep


def selector_for(ids: np.ndarray, *, exclude: bool = False) -> faiss.IDSelector:
    """An id selector over ``ids``: a bitmap when ids are small and dense, else a hash set."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    hi = int(ids.max()) + 1 if ids.size else 1
    if hi <= max(1 << 16, 64 * ids.size):
        bits = np.zeros((hi + 7) // 8, dtype=np.uint8)
        np.bitwise_or.at(bits, ids >> 3, (1 << (ids & 7)).astype(np.uint8))
        sel = faiss.IDSelectorBitmap(bits)
        sel._bits = bits  # the selector points into this buffer
    else:
        sel = faiss.IDSelectorBatch(ids)
    if exclude:
        inner = sel
        sel = faiss.IDSelectorNot(inner)
        sel._inner = inner
    return sel


def index_nbytes(index: faiss.Index) -> int:
    """Bytes the index occupies (its serialized size, which is what it holds in RAM)."""
    return int(faiss.serialize_index(index).nbytes)


# ---- GPU (faiss-gpu), used when present through the same API -------------------------------------


def gpu_count() -> int:
    """GPUs FAISS can use here (0 with faiss-cpu)."""
    try:
        return int(faiss.get_num_gpus()) if hasattr(faiss, "StandardGpuResources") else 0
    except Exception:  # pragma: no cover - broken driver
        return 0


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when faiss-gpu sees a GPU, else ``cpu``; ``cuda`` without one raises."""
    if device == "auto":
        return "cuda" if gpu_count() else "cpu"
    if device == "cuda" and not gpu_count():
        raise ValueError(
            "device='cuda' but FAISS sees no GPU (faiss-cpu is installed or no CUDA device); "
            "install it with pip install 'raylens[gpu]' or use device='auto'"
        )
    return device


def to_gpu(index: faiss.Index) -> faiss.Index | None:  # pragma: no cover - needs faiss-gpu
    """A GPU copy of ``index`` for searching, or None when this index type has no GPU version."""
    try:
        co = faiss.GpuMultipleClonerOptions()
        co.useFloat16 = True
        return faiss.index_cpu_to_all_gpus(index, co=co)
    except Exception as e:
        log.info("no GPU clone for this index (%s); searching on CPU", e)
        return None


def gpu_search(gpu_index: faiss.Index, x: np.ndarray, k: int, params: dict[str, Any]):  # pragma: no cover
    """Search a GPU clone: GPU indices take ``nprobe`` as an attribute (no per-call parameter objects)."""
    space = faiss.GpuParameterSpace()
    space.initialize(gpu_index)
    for name, value in params.items():
        if name == "nprobe":
            space.set_index_parameter(gpu_index, name, float(value))
    return gpu_index.search(x, k)


def train_on_gpu(index: faiss.Index, x: np.ndarray) -> None:  # pragma: no cover - needs faiss-gpu
    """Train ``index``'s IVF clustering on the GPU (the trained index stays a CPU index)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        index.train(x)
        return
    ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlat(ivf.d, ivf.metric_type))
    index.train(x)
    ivf.clustering_index = None
