"""Search-parameter autotuning: the cheapest ``nprobe``/``efSearch``/``k_factor`` that reaches a recall target.

Recall is recall@k against exact search on held-out queries: the fraction of the exact top-k ids
that the index returns in its own top-k. A setting passes when the lower end of its ~99.7%
interval, recall − z·√(r(1−r)/(queries·k)) with z = 3, reaches the target, so that the target
holds on new queries too, not only on the tuning sample (the margin also absorbs the optimism of
stopping at the first setting whose estimate crosses the target).

Recall and cost grow with each knob. For every value of the secondary knob (``k_factor``, most
generous first), the primary knob (``nprobe`` or ``efSearch``) is raised from its cheapest value
until the target is reached, recall plateaus (two steps gaining < 0.001), or the search gets
slower than a setting that already passed. The passing setting with the lowest measured latency
wins. Walking up from cheap settings keeps the tuning cost near that of the answer (measuring an
exhaustive ``nprobe`` first would cost more than the whole build).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

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
    z: float = 3.0,
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
            t0 = time.perf_counter()
            found = search(params, k)
            dt = (time.perf_counter() - t0) / len(truth) * 1e3
            cache[key] = (recall_at_k(found, truth, k), dt)
            table.append({**params, "recall": round(cache[key][0], 4), "latency_ms": round(dt, 4)})
        return cache[key]

    combos = list(itertools.product(*[knobs[s] for s in secondary])) if secondary else [()]
    combos.reverse()  # most generous secondary setting first: it passes soonest and bounds the others
    if primary is not None:
        search({primary: knobs[primary][0], **dict(zip(secondary, combos[0]))}, k)  # warm-up
    best_ok: tuple[dict, float, float] | None = None
    fallback: tuple[dict, float, float] | None = None
    for combo in combos:
        fixed = dict(zip(secondary, combo))
        values = knobs[primary] if primary else [None]
        prev, flat_steps = -1.0, 0
        for v in values:
            params = {**fixed, primary: v} if primary else fixed
            recall, ms = measure(params)
            if fallback is None or (recall, -ms) > (fallback[1], -fallback[2]):
                fallback = (params, recall, ms)
            if passes(recall):
                if best_ok is None or ms < best_ok[2]:
                    best_ok = (params, recall, ms)
                break
            # ascending is cheap (cost grows with the knob); stop when slower than a passing
            # setting already found, or when recall has stopped improving (a plateau below target)
            if best_ok is not None and ms > best_ok[2]:
                break
            flat_steps = flat_steps + 1 if recall - prev < 0.001 else 0
            if flat_steps >= 2:
                break
            prev = recall
    if best_ok is not None:
        best, ok = best_ok, True
    else:
        best, ok = fallback, False
        log.warning("autotune: no setting reached recall@%d >= %.2f; best is %s at %.3f", k, target, best[0], best[1])
    return TuneResult(
        params=best[0],
        recall=round(best[1], 4),
        latency_ms=round(best[2], 4),
        target=target,
        reached=ok,
        k=k,
        queries=len(truth),
        table=table,
    )
