"""Choosing an index type from N, dim, a memory budget, a latency target and a build-time target.

The rules follow autofaiss (``get_optimal_index_keys_v2``), with build time made explicit because
this SDK also runs on small machines. In order, the first that fits wins; the reason string says
which rule fired and why the earlier ones did not:

1. ``Flat`` below 1,000 vectors, or when an exact scan is estimated to meet the latency target;
2. ``HNSW{M}`` when the graph fits the memory budget (M = autofaiss's ⌊(budget/(4N) − d)/2⌋,
   capped to 32, at least 8) and inserting N vectors takes under a quarter of the build target;
3. ``IVF{nlist},Flat`` when the raw vectors fit the budget. nlist ≈ 4√N as a power of two, halved
   until k-means training and list assignment fit 40% of the build target on this many cores;
4. ``IVF{nlist},PQ{d/8}x4fs,Refine(SQ{b})``: 4-bit fast-scan PQ codes for the IVF scan, re-ranked
   with a b-bit scalar-quantised copy (b = 8, 6 or 4, the most that fits the budget); without the
   re-ranking stage PQ alone tops out far below recall@10 = 0.95. With 16+ cores an ``OPQ``
   rotation is added (its training is too slow for small machines: minutes per 10k vectors).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

__all__ = ["IndexChoice", "choose_index", "available_memory", "estimate_bytes"]

FLAT_BYTES_PER_S = 5e9
"""Assumed memory bandwidth of an exact scan (single-query latency estimate)."""
FLOPS_PER_CORE = 20e9
"""Assumed sustained float32 GEMM throughput per core (k-means training and list assignment)."""
HNSW_INSERTS_PER_CORE_S = 2_000
"""Assumed HNSW32 insertions per core-second at d=512 (measured ~2.5k on this project's 2-core box)."""
KMEANS_ITERS = 10
MAX_TRAIN = 200_000


@dataclass
class IndexChoice:
    """The chosen FAISS factory string and why."""

    factory: str
    """FAISS factory string."""
    reason: str
    """Human-readable reason for the choice."""
    estimated_bytes: int
    """Estimated index size in memory (0 when not estimated)."""


def available_memory() -> int:
    """Bytes of memory available now (MemAvailable; 8 GiB if unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def ivf_nlist(n: int, dim: int, cores: int, budget_s: float) -> int:
    """≈ 4√N as a power of two, halved while k-means training + list assignment would exceed
    ``budget_s`` on ``cores`` (but not below √N), with >= 39 training points per list, >= 16."""
    p = 2 ** max(4, round(math.log2(4 * math.sqrt(n))))
    floor = 2 ** max(4, round(math.log2(math.sqrt(n))))

    def seconds(k: int) -> float:
        train = min(n, 64 * k, MAX_TRAIN) * k * dim * 2 * KMEANS_ITERS
        assign = n * k * dim * 2
        return (train + assign) / (FLOPS_PER_CORE * cores)

    while p > 16 and (n < 39 * p or (p > floor and seconds(p) > budget_s)):
        p //= 2
    return p


def estimate_bytes(factory: str, n: int, d: int) -> int:
    """Rough memory of ``factory`` holding n vectors of dim d (ids included)."""
    if factory.startswith("Flat"):
        return n * (4 * d + 16)
    if factory.startswith("HNSW"):
        m = int(factory[4:].split(",")[0] or 32)
        return int(n * (4 * d + 8 * m * 1.1 + 16))
    total = 0
    for part in factory.split(","):
        if part.startswith("IVF"):
            total += int(part[3:].split("_")[0]) * d * 4 + n * 8
        elif part.startswith("PQ"):
            spec = part[2:].replace("fs", "").replace("np", "")
            m, bits = (spec.split("x") + ["8"])[:2]
            total += n * int(m) * int(bits) // 8
        elif part == "Flat":
            total += n * 4 * d
        elif part.startswith("Refine(SQ"):
            total += n * d * int(part[len("Refine(SQ") :].rstrip(")")) // 8 + n * 8
        elif part.startswith("OPQ"):
            total += d * d * 4
    return total


def choose_index(
    n: int,
    dim: int,
    *,
    memory_budget: int | None = None,
    latency_target_ms: float = 10.0,
    build_time_target_s: float = 300.0,
    cores: int | None = None,
) -> IndexChoice:
    """Pick an index for ``n`` vectors of ``dim`` (see the module docstring for the rules)."""
    if n < 1 or dim < 1:
        raise ValueError(f"`n` and `dim` must be >= 1 to choose an index, got n={n}, dim={dim}")
    budget = memory_budget or available_memory() // 2
    cores = cores or os.cpu_count() or 1
    gib = lambda b: f"{b / 2**30:.3g} GiB"  # noqa: E731
    flat = estimate_bytes("Flat", n, dim)
    flat_ms = n * dim * 4 / FLAT_BYTES_PER_S * 1e3
    if flat <= budget and (n < 1000 or flat_ms <= latency_target_ms):
        why = (
            f"{n} vectors (< 1,000)"
            if n < 1000
            else f"an exact scan is ~{flat_ms:.1f} ms/query <= the {latency_target_ms:g} ms target"
        )
        return IndexChoice(
            "Flat", f"Flat: {why}; exact search needs no training and {gib(flat)} fits the {gib(budget)} budget", flat
        )
    slow = f"an exact scan of {n}x{dim} is ~{flat_ms:.0f} ms/query (> {latency_target_ms:g} ms target)"
    if flat > budget:
        slow = f"raw vectors ({gib(flat)}) exceed the {gib(budget)} budget"

    m = min(32, int((budget / (4 * n) - dim) / 2))
    hnsw_s = n / (HNSW_INSERTS_PER_CORE_S * cores) * (dim / 512) * (max(m, 8) / 32)
    if m >= 8 and hnsw_s <= build_time_target_s / 4:
        f = f"HNSW{m}"
        return IndexChoice(
            f,
            f"{f}: {slow}; the graph fits the {gib(budget)} budget (M={m}) and inserting {n} vectors takes "
            f"~{hnsw_s:.0f} s on {cores} cores. Deletes are tombstoned (HNSW cannot remove)",
            estimate_bytes(f, n, dim),
        )
    no_hnsw = (
        f"HNSW would take ~{hnsw_s:.0f} s to insert {n} vectors on {cores} cores "
        f"(> 1/4 of the {build_time_target_s:g} s build target)"
        if m >= 8
        else f"HNSW does not fit the {gib(budget)} budget"
    )
    nl = ivf_nlist(n, dim, cores, 0.4 * build_time_target_s)
    nl_why = f"nlist={nl} ≈ 4·sqrt(N), capped so k-means fits the build target on {cores} cores"
    f = f"IVF{nl},Flat"
    size = estimate_bytes(f, n, dim)
    if size <= budget:
        return IndexChoice(f, f"{f}: {slow}; {no_hnsw}; raw vectors fit the budget ({gib(size)}); {nl_why}", size)

    pq_m = max(1, dim // 8)
    while dim % pq_m:
        pq_m -= 1
    opq = f"OPQ{pq_m}_{dim}," if cores >= 16 else ""
    for refine in ("SQ8", "SQ6", "SQ4", None):
        f = f"{opq}IVF{nl},PQ{pq_m}x4fs" + (f",Refine({refine})" if refine else "")
        size = estimate_bytes(f, n, dim)
        if size <= budget:
            how = f"re-ranked with a {refine} copy" if refine else "without re-ranking (recall@10 will be low)"
            return IndexChoice(
                f,
                f"{f}: raw vectors ({gib(estimate_bytes(f'IVF{nl},Flat', n, dim))}) exceed the {gib(budget)} budget, so "
                f"the IVF scan uses {pq_m} 4-bit PQ codes (fast-scan), {how}: {gib(size)} = {size / flat:.2f}x flat; "
                f"{nl_why}" + ("; OPQ rotation added (16+ cores make its training affordable)" if opq else ""),
                size,
            )
    raise ValueError(
        f"no index of {n}x{dim} vectors fits memory_budget={budget} bytes (4-bit PQ alone needs "
        f"{estimate_bytes(f'IVF{nl},PQ{pq_m}x4fs', n, dim)}); raise memory_budget or shard the data"
    )
