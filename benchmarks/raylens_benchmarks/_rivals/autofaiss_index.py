"""autofaiss on the benchmark's vectors: its own build under the memory budget, then the lowest nprobe
reaching the recall target, timed.

Run by ``raylens bench index`` with the python of the ``autofaiss`` bench env::

    python autofaiss_index.py --x x.npy --q q.npy --truth truth.npy --k 10 --target 0.95 \
        --threads 2 --memory-budget BYTES --workdir DIR

autofaiss chooses the index (``index_key``) and its search parameters for its own query-time goal;
those are measured as they are (``own_params``), then ``nprobe`` is swept on the measured queries (the
rival's best case) to the lowest value reaching the recall target; then the script answers timing
requests (``ann_common.serve``), which the caller alternates with its own timed rounds. A build that
does not finish is the caller's timeout to report.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from importlib.metadata import version

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ann_common import (  # noqa: E402
    RECALL_DEFINITION,
    peak_rss_bytes,
    protocol_stdout,
    recall_at_k,
    serve,
    sweep_lowest,
)

NPROBE_GRID = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048, 4096)


def search_params(own: str, nprobe: int) -> str:
    """autofaiss' parameter string with ``nprobe`` replaced (an HNSW coarse quantizer's efSearch kept
    at least 2 x nprobe, so that it can return that many lists)."""
    parts = dict(p.split("=", 1) for p in own.split(",") if "=" in p)
    parts["nprobe"] = str(nprobe)
    if "efSearch" in parts:
        parts["efSearch"] = str(max(int(parts["efSearch"]), 2 * nprobe))
    return ",".join(f"{k}={v}" for k, v in parts.items())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    for a in ("--x", "--q", "--truth", "--workdir"):
        ap.add_argument(a, required=True)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory-budget", type=int, required=True)
    ap.add_argument("--memory-available", default="8G")
    args = ap.parse_args(argv)
    protocol_stdout()

    import faiss
    from autofaiss import build_index

    faiss.omp_set_num_threads(args.threads)
    x = np.load(args.x)
    q = np.load(args.q)
    truth = np.load(args.truth)
    index_path = os.path.join(args.workdir, "autofaiss.index")
    t0 = time.perf_counter()
    index, infos = build_index(
        embeddings=x,
        index_path=index_path,
        index_infos_path=os.path.join(args.workdir, "autofaiss_infos.json"),
        save_on_disk=True,
        max_index_memory_usage=f"{args.memory_budget}B",
        current_memory_available=args.memory_available,
        min_nearest_neighbors_to_retrieve=args.k,
        metric_type="ip",
        nb_cores=args.threads,
        verbose=logging.INFO,
    )
    build_s = time.perf_counter() - t0
    del x
    if index is None:
        raise SystemExit(f"autofaiss built no index: {infos}")
    index_bytes = os.path.getsize(index_path)
    infos = infos or {}
    key = str(infos.get("index_key", ""))
    own = str(infos.get("index_param", ""))
    params = faiss.ParameterSpace()

    def search(nprobe: int | None) -> np.ndarray:
        params.set_index_parameters(index, own if nprobe is None else search_params(own, nprobe))
        return index.search(q, args.k)[1].astype(np.int64)

    t0 = time.perf_counter()
    own_ids = search(None)
    own_s = time.perf_counter() - t0
    m = re.search(r"IVF(\d+)", key)
    nlist = int(m.group(1)) if m else 0
    grid = [p for p in NPROBE_GRID if p <= nlist]
    chosen, sweep = sweep_lowest(grid, search, truth, args.k, args.target) if grid else (None, [])
    ready = {
        "version": version("autofaiss"),
        "faiss_version": faiss.__version__,
        "numpy": np.__version__,
        "index_key": key,
        "own_params": own,
        "own_params_recall_at_10": round(recall_at_k(own_ids, truth, args.k), 4),
        "own_params_qps_one_run": round(len(q) / own_s, 1),
        "infos": {k: str(v) for k, v in infos.items()},
        "build_s": round(build_s, 2),
        "index_bytes": index_bytes,
        "memory_budget_bytes": args.memory_budget,
        "recall_definition": RECALL_DEFINITION,
        "target": args.target,
        "sweep": sweep,
        "nprobe": chosen,
    }
    if chosen is None:
        ready["note"] = f"no nprobe up to {grid[-1] if grid else '-'} reaches recall {args.target} ({key})"
    else:
        ids = search(chosen)
        ready["recall_at_10"] = round(recall_at_k(ids, truth, args.k), 4)
        np.save(os.path.join(args.workdir, "autofaiss_ids.npy"), ids)
    timed = None if chosen is None else (lambda: search(chosen))
    serve(ready, timed, lambda: {"peak_rss_bytes": peak_rss_bytes()})


if __name__ == "__main__":
    main()
