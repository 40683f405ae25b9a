"""What the ANN rival scripts share: the recall definition, the sweep and the timing.

Standalone (numpy only): these scripts run with a bench env's python, where raylens is not installed.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

RECALL_DEFINITION = (
    "recall@10: the fraction of the exact top-10 (faiss IndexFlatIP on the same vectors) found in the "
    "returned top-10, averaged over the held-out queries (raylens.index.recall_at_k: hits over valid truths)"
)


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Mean over queries of |found[:k] ∩ truth[:k]| / |truth[:k] valid| (as raylens.index.recall_at_k)."""
    hits, total = 0, 0
    for f, t in zip(found, truth, strict=True):
        t = t[:k][t[:k] >= 0]
        hits += np.intersect1d(f[:k], t).size
        total += t.size
    return hits / total if total else 1.0


def sweep_lowest(
    settings: Sequence[int], search: Callable[[int], np.ndarray], truth: np.ndarray, k: int, target: float
) -> tuple[int | None, list[dict]]:
    """Try ``settings`` in ascending order and stop at the first whose recall reaches ``target``.

    ``search(setting)`` returns the ids of every query. Returns ``(chosen or None, points)`` with one
    point ``{"setting", "recall", "seconds"}`` per setting tried.
    """
    points = []
    for s in sorted(settings):
        t0 = time.perf_counter()
        ids = search(s)
        secs = time.perf_counter() - t0
        r = recall_at_k(ids, truth, k)
        points.append({"setting": int(s), "recall": round(r, 4), "seconds": round(secs, 4)})
        if r >= target:
            return int(s), points
    return None, points


def peak_rss_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


PROTOCOL = "@@rival "
_out = None


def protocol_stdout() -> None:
    """Keep stdout for the protocol lines; whatever the libraries print goes to stderr (the log)."""
    global _out
    _out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)


def emit(obj: dict) -> None:
    _out.write(PROTOCOL + json.dumps(obj) + "\n")
    _out.flush()


def serve(ready: dict, timed: Callable[[], None] | None, final: Callable[[], dict]) -> None:
    """Answer the caller (raylens' ``RivalProcess``): ``ready`` now; each ``time`` line one timed call
    of ``timed`` (its seconds); ``quit`` (or the end of stdin) the ``final()`` JSON."""
    emit(ready)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "time" and timed is not None:
            t0 = time.perf_counter()
            timed()
            emit({"seconds": time.perf_counter() - t0})
        elif cmd == "quit":
            break
    emit(final())
