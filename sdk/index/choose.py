"""Choosing an index type from N, dim, a memory budget and a latency target (autofaiss-style rules).

The rules, in order (the first that fits wins; the reason string says which and why):

1. ``Flat`` below 1,000 vectors, or when exact search is estimated to meet the latency target;
2. ``HNSW{M}`` when the graph fits the memory budget and N is small enough to insert in minutes
   on this machine's cores (M = autofaiss's ⌊(budget/(4N) − d)/2⌋, capped to 32, at least 8);
3. ``IVF{nlist},Flat`` when the raw vectors fit the budget (nlist ≈ 4√N, a power of two);
4. ``OPQ{m}_{d'},IVF{nlist},PQ{m}`` with the most PQ bytes per vector that fit the budget, plus a
   scalar-quantised refinement stage when that also fits (it is what takes recall@10 past 0.95).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

__all__ = ["IndexChoice", "choose_index", "available_memory", "estimate_bytes"]

FLAT_BYTES_PER_S = 5e9
"""Assumed memory bandwidth of an exact scan, for the single-query latency estimate."""
HNSW_INSERTS_PER_CORE_S = 2_000
"""Assumed HNSW32 insertions per core-second at d≈512 (keeps HNSW builds to about a minute)."""
HNSW_MAX_BUILD_S = 120.0


@dataclass
class IndexChoice:
    """The chosen FAISS factory string and why."""

    factory: str
    """FAISS factory string."""
    reason: str
    """Human-readable reason for the choice."""
    estimated_bytes: int
    """Estimated index size in memory."""


def available_memory() -> int:
    """Bytes of memory available to this process now (MemAvailable; 8 GiB if unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def _nlist(n: int) -> int:
    """≈ 4√N rounded to a power of two, at least 16, with at least 39 training points per list."""
    target = 4 * math.sqrt(n)
    p = 2 ** max(4, round(math.log2(max(target, 1))))
    while p > 16 and n < 39 * p:
        p //= 2
    return p


def estimate_bytes(factory: str, n: int, d: int) -> int:
    """Rough memory of ``factory`` holding n vectors of dim d (ids included)."""
    f = factory
    if f.startswith("Flat"):
        return n * (4 * d + 16)
    if f.startswith("HNSW"):
        m = int(f[4:].split(",")[0] or 32)
        return int(n * (4 * d + 8 * m * 1.1 + 16))
    total = 0
    for part in f.split(","):
        if part.startswith("IVF"):
            k = int(part[3:].split("_")[0])
            total += k * d * 4 + n * 8
        elif part.startswith("PQ"):
            m = int(part[2:].split("x")[0].rstrip("fs"))
            bits = int(part.split("x")[1].rstrip("fs")) if "x" in part else 8
            total += n * m * bits // 8
        elif part == "Flat":
            total += n * 4 * d
        elif part.startswith("Refine(SQ"):
            bits = int(part[len("Refine(SQ"):].rstrip(")"))
            total += n * d * bits // 8 + n * 16
        elif part.startswith("OPQ"):
            total += d * d * 4
    return total


def choose_index(
    n: int,
    dim: int,
    *,
    memory_budget: int | None = None,
    latency_target_ms: float = 10.0,
    cores: int | None = None,
) -> IndexChoice:
    """Pick an index for ``n`` vectors of ``dim`` under a memory budget (bytes) and a latency target."""
    if n < 1:
        raise ValueError(f"`n` must be >= 1 to choose an index, got {n}")
    budget = memory_budget or available_memory() // 2
    cores = cores or os.cpu_count() or 1
    gib = lambda b: f"{b / 2**30:.2f} GiB"  # noqa: E731
    flat = estimate_bytes("Flat", n, dim)
    flat_ms = n * dim * 4 / FLAT_BYTES_PER_S * 1e3
    if n < 1000 and flat <= budget:
        return IndexChoice("Flat", f"Flat: {n} vectors (< 1,000): exact search is cheapest and exact", flat)
    if flat_ms <= latency_target_ms and flat <= budget:
        return IndexChoice(
            "Flat",
            f"Flat: an exact scan of {n}x{dim} is estimated at {flat_ms:.1f} ms/query <= the {latency_target_ms:g} ms target "
            f"and takes {gib(flat)} <= the {gib(budget)} budget",
            flat,
        )
    m = min(32, int((budget / (4 * n) - dim) / 2))
    hnsw_build_s = n / (HNSW_INSERTS_PER_CORE_S * cores) * (dim / 512)
    if m >= 8 and hnsw_build_s <= HNSW_MAX_BUILD_S:
        f = f"HNSW{m}"
        return IndexChoice(
            f,
            f"{f}: exact search of {n}x{dim} (~{flat_ms:.0f} ms/query) misses the {latency_target_ms:g} ms target; "
            f"the graph fits the {gib(budget)} budget (M={m}) and inserting {n} vectors takes ~{hnsw_build_s:.0f} s on "
            f"{cores} cores. Deletes are tombstoned (HNSW cannot remove)",
            estimate_bytes(f, n, dim),
        )
    nl = _nlist(n)
    why_not_hnsw = (
        f"HNSW would need ~{hnsw_build_s:.0f} s to insert {n} vectors on {cores} cores"
        if m >= 8
        else f"HNSW does not fit the {gib(budget)} budget"
    )
    f = f"IVF{nl},Flat"
    ivf = estimate_bytes(f, n, dim)
    if ivf <= budget:
        return IndexChoice(
            f,
            f"{f}: exact search (~{flat_ms:.0f} ms/query) misses the {latency_target_ms:g} ms target, {why_not_hnsw}; "
            f"raw vectors fit the budget ({gib(ivf)} <= {gib(budget)}); nlist={nl} ≈ 4·sqrt(N)",
            ivf,
        )
    for pq_m in (128, 64, 48, 32, 24, 16, 8):
        if pq_m > dim // 2:
            continue
        d_out = min(dim, pq_m * 4) if dim % pq_m else dim
        base = f"OPQ{pq_m}_{d_out},IVF{nl},PQ{pq_m}"
        for refine in ("SQ8", "SQ6", "SQ4", None):
            f = base + (f",Refine({refine})" if refine else "")
            size = estimate_bytes(f, n, dim)
            if size <= budget:
                return IndexChoice(
                    f,
                    f"{f}: raw vectors ({gib(ivf)}) exceed the {gib(budget)} budget, so vectors are compressed to "
                    f"{pq_m} PQ bytes" + (f" plus a {refine} copy for re-ranking" if refine else "")
                    + f" ({gib(size)}, {size / flat:.2f}x flat); nlist={nl} ≈ 4·sqrt(N)",
                    size,
                )
    raise ValueError(
        f"no index of {n}x{dim} vectors fits memory_budget={budget} bytes (even 8-byte PQ needs "
        f"{estimate_bytes(f'IVF{nl},PQ8', n, dim)}); raise memory_budget or shard the data"
    )
