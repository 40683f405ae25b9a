"""hnswlib on the benchmark's vectors: build, sweep ef to the lowest reaching the recall target, then
answer timing requests (the caller alternates them with its own timed rounds).

Run by ``raylens bench index`` with the python of the ``hnswlib`` bench env::

    python hnswlib_index.py --x x.npy --q q.npy --truth truth.npy --k 10 --target 0.95 \
        --threads 2 --m 16 --ef-construction 100 --workdir DIR

The ef sweep runs on the measured queries themselves (the rival's best case). Protocol on stdout:
see ``ann_common.serve``; the ids at the chosen ef are saved as ``DIR/hnswlib_ids.npy``.
"""

from __future__ import annotations

import argparse
import os
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

EF_GRID = (10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 320, 384, 512, 768, 1024)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    for a in ("--x", "--q", "--truth", "--workdir"):
        ap.add_argument(a, required=True)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=100)
    args = ap.parse_args(argv)
    protocol_stdout()

    import hnswlib

    x = np.load(args.x)
    q = np.load(args.q)
    truth = np.load(args.truth)
    n, d = x.shape
    t0 = time.perf_counter()
    index = hnswlib.Index(space="ip", dim=d)
    index.init_index(max_elements=n, ef_construction=args.ef_construction, M=args.m, random_seed=100)
    index.set_num_threads(args.threads)
    index.add_items(x, np.arange(n), num_threads=args.threads)
    build_s = time.perf_counter() - t0
    del x
    path = os.path.join(args.workdir, "hnswlib.bin")
    index.save_index(path)
    index_bytes = os.path.getsize(path)
    os.unlink(path)

    def search(ef: int) -> np.ndarray:
        index.set_ef(max(ef, args.k))
        ids, _ = index.knn_query(q, k=args.k, num_threads=args.threads)
        return ids.astype(np.int64)

    grid = [e for e in EF_GRID if e >= args.k]
    ef, sweep = sweep_lowest(grid, search, truth, args.k, args.target)
    ready = {
        "version": version("hnswlib"),
        "numpy": np.__version__,
        "params": {"M": args.m, "ef_construction": args.ef_construction, "space": "ip", "threads": args.threads},
        "build_s": round(build_s, 2),
        "index_bytes": index_bytes,
        "sweep": sweep,
        "recall_definition": RECALL_DEFINITION,
        "target": args.target,
        "ef": ef,
    }
    if ef is None:
        ready["note"] = f"no ef up to {grid[-1]} reaches recall {args.target}"
    else:
        ids = search(ef)
        ready["recall_at_10"] = round(recall_at_k(ids, truth, args.k), 4)
        np.save(os.path.join(args.workdir, "hnswlib_ids.npy"), ids)
    serve(ready, None if ef is None else (lambda: search(ef)), lambda: {"peak_rss_bytes": peak_rss_bytes()})


if __name__ == "__main__":
    main()
