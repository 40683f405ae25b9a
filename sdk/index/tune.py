"""Search-parameter autotuning: the cheapest ``nprobe``/``efSearch``/``k_factor`` that reaches a recall target.

Recall is recall@k against exact search on held-out queries: the fraction of the exact top-k ids
that the index returns in its own top-k. A setting passes when the lower end of its ~95% interval
(recall − z·√(r(1−r)/(queries·k)), z = 2) reaches the target, so the target holds on new queries
too, not only on the tuning sample. Recall grows with each knob, so for every value of the
secondary knob (``k_factor``) a binary search finds the smallest primary value (``nprobe`` or
``efSearch``) reaching the target; the candidate with the lowest measured latency wins.
"""

from __future__ import annotations

import itertools
import math
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

__all__ = ["TuneResult", "autotune", "recall_at_k"]

log = logging.getLogger(__name__)


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Mean over queries of |found[:k] ∩ truth[:k]| / |truth[:k] valid|."""
    hits, total = 0, 0
    for f, t in zip(found, truth):
        t = t[:k][t[:k] >= 0]
        hits += np.intersect1d(f[:k], t).size
        total += t.size
    return hits / total if total else 1.0


@dataclass
class TuneResult:
    """The chosen search parameters and the evidence."""

    params: dict[str, int]
    """The chosen knobs."""
    recall: float
    """Recall@k they reach on the held-out queries."""
    latency_ms: float
    """Batched search time per query (ms) with them."""
    target: float
    """The recall target."""
    reached: bool
    """Whether the target was reached (else: the highest-recall setting is kept)."""
    k: int = 10
    """The k of recall@k."""
    queries: int = 0
    """Number of held-out queries."""
    table: list[dict[str, Any]] = field(default_factory=list)
    """Every setting tried: params, recall, latency."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def autotune(
    search: Callable[[dict[str, int], int], np.ndarray],
    truth: np.ndarray,
    knobs: dict[str, list[int]],
    *,
    target: float = 0.95,
    k: int = 10,
    z: float = 2.0,
) -> TuneResult:
    """Tune ``knobs`` (name → candidate values, cheapest first) for ``search(params, k) -> ids``.

    ``truth`` holds the exact top-k ids of the same queries. The primary knob is the first of
    ``nprobe``/``efSearch``; a ``k_factor`` knob is a secondary grid.
    """
    primary = next((n for n in ("nprobe", "efSearch") if n in knobs), None)
    secondary = [n for n in knobs if n != primary]
    table: list[dict[str, Any]] = []
    cache: dict[tuple, tuple[float, float]] = {}
    trials = max(1, len(truth) * k)

    def passes(recall: float) -> bool:
        return recall - z * math.sqrt(recall * (1 - recall) / trials) >= target

    def measure(params: dict[str, int]) -> tuple[float, float]:
        key = tuple(sorted(params.items()))
        if key not in cache:
            search(params, k)  # warm-up (page in, thread pool)
            t0 = time.perf_counter()
            found = search(params, k)
            dt = (time.perf_counter() - t0) / len(truth) * 1e3
            cache[key] = (recall_at_k(found, truth, k), dt)
            table.append({**params, "recall": round(cache[key][0], 4), "latency_ms": round(dt, 4)})
        return cache[key]

    candidates = []
    for combo in itertools.product(*[knobs[s] for s in secondary]) if secondary else [()]:
        fixed = dict(zip(secondary, combo))
        if primary is None:
            candidates.append(fixed)
            continue
        values = knobs[primary]
        lo, hi = 0, len(values) - 1
        if not passes(measure({**fixed, primary: values[hi]})[0]):
            candidates.append({**fixed, primary: values[hi]})
            continue
        while lo < hi:  # smallest value reaching the target
            mid = (lo + hi) // 2
            if passes(measure({**fixed, primary: values[mid]})[0]):
                hi = mid
            else:
                lo = mid + 1
        candidates.append({**fixed, primary: values[lo]})
    scored = [(p, *measure(p)) for p in candidates]
    ok = [s for s in scored if passes(s[1])]
    if ok:
        best = min(ok, key=lambda s: s[2])
    else:
        best = max(scored, key=lambda s: (s[1], -s[2]))
        log.warning("autotune: no setting reached recall@%d >= %.2f; best is %s at %.3f", k, target, best[0], best[1])
    return TuneResult(
        params=best[0], recall=round(best[1], 4), latency_ms=round(best[2], 4), target=target,
        reached=bool(ok), k=k, queries=len(truth), table=table,
    )
