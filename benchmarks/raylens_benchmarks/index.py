"""``raylens bench index``: our FAISS index against exact search and the ANN libraries users would pick.

On 1M x 512 clustered vectors (``--quick``: 100k), 1,000 held-out queries, k=10, measured in one run
on this machine:

- **raylens**: :class:`~raylens.index.VectorIndex` built with the automatic choice under a memory
  budget of 0.25x the flat index (IVF + 4-bit PQ fast-scan + SQ re-ranking at 1M), search parameters
  tuned by the build itself on its own sample for recall@10 >= 0.95;
- **faiss.IndexFlatIP**: exact search (recall 1 by definition; also the ground truth);
- **hnswlib** (M=16, efConstruction=100): ``ef`` swept on the measured queries to the lowest value
  whose recall@10 reaches 0.95 (the rival's best case);
- **autofaiss**: its own index choice and build under the same memory budget, then ``nprobe`` swept
  the same way; its build has a timeout (5 min quick, 15 min full).

The rivals run in bench-only virtual environments (:mod:`._rival_env`, created once under
``~/.cache/raylens/bench-envs``), in subprocesses, on the same vectors and queries saved as ``.npy``;
an install failure, a crash or a timeout is the rival's result, with the reason as its note.

The metric is batched queries/s at recall@10 >= 0.95 (recall: the fraction of the exact top-10 found
in the returned top-10, averaged over the queries), with 2 threads on every side. Each side also has
its build time and its memory (index bytes, against flat). Windows: steady state = one batched search
of all queries, the index built, timed in alternated rounds (ours, each rival in its own process,
exact; each side keeps its best round, so load from other processes favours none); end to end =
build + one search of all queries. The bound is the FLOP bound of our index's own work per query at
its tuned parameters (coarse quantizer, PQ look-up tables and re-ranking; the scanned codes are
reported as bytes beside it), on this machine's measured peak float32 throughput (numpy sgemm or
the exact search's own rate, whichever is higher).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from raylens.bench import BenchResult, Bound, Rival, Window, register_benchmark
from raylens.index import VectorIndex, recall_at_k
from raylens.index.synthetic import clustered_vectors

from ._rival_env import RivalFailed, RivalProcess, ensure_env, measure_rival

DIM = 512
K = 10
N_QUERIES = 1000
MEMORY_RATIO_BUDGET = 0.25
RECALL_TARGET = 0.95
THREADS = 2
ROUNDS = 5
RECALL_DEFINITION = (
    "recall@10: the fraction of the exact top-10 (faiss IndexFlatIP on the same vectors) found in the "
    "returned top-10, averaged over the 1,000 held-out queries (raylens.index.recall_at_k)"
)
HNSW_M, HNSW_EF_CONSTRUCTION = 16, 100
HNSWLIB_ENV = ("hnswlib", ["hnswlib==0.8.0", f"numpy=={np.__version__}"])
# autofaiss 2.18 pins numpy<2 and breaks on faiss 1.15 (our env's): faiss-cpu 1.8 is the newest it
# runs with; pyarrow >= 21 needs numpy 2, and faiss 1.8 imports packaging without requiring it
HNSWLIB_NAME = f"hnswlib 0.8.0 (M={HNSW_M}, efConstruction={HNSW_EF_CONSTRUCTION}; bench env)"
AUTOFAISS_NAME = "autofaiss 2.18.0 (its own choice under the 0.25x-flat budget; faiss-cpu 1.8; bench env)"
AUTOFAISS_ENV = ("autofaiss", ["autofaiss==2.18.0", "faiss-cpu==1.8.0", "numpy<2", "pyarrow<21", "packaging"])


def _best_of(fn, repeats: int = 3) -> tuple[float, object]:
    """Shortest wall time of ``repeats`` calls (the first one also warms caches up), and the last result."""
    out = None
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def _variant(name: str, x, labels, q, truth, flat_bytes: int, workdir: Path, **build_kwargs):
    """Build one variant and measure it; returns ``(index, figures)``."""
    t = time.perf_counter()
    idx = VectorIndex.build(x, {"label": labels}, model="synthetic-clustered", checkpoint_hash="none", **build_kwargs)
    build_s = time.perf_counter() - t
    secs, (_, ids) = _best_of(lambda: idx.search_arrays(q, k=K))
    api_s, _ = _best_of(lambda: idx.search(q, k=K), repeats=1)
    rare = int(np.bincount(labels).argmin())  # the rarest label: ~0.1% of the rows
    filt_s, filt = _best_of(lambda: idx.search(q[:100], k=K, filters={"label": rare}), repeats=1)
    t = time.perf_counter()
    idx.save(workdir / name)
    save_s = time.perf_counter() - t
    t = time.perf_counter()
    VectorIndex.load(workdir / name)
    load_s = time.perf_counter() - t
    nbytes = idx.nbytes
    return idx, {
        "index_factory": idx.manifest.index_factory,
        "choice_reason": idx.manifest.choice_reason,
        "recall_at_10": round(recall_at_k(ids, truth, K), 4),
        "qps": round(len(q) / secs, 1),
        "search_s": round(secs, 5),
        "api_qps_with_hits": round(len(q) / api_s, 1),
        "filtered_qps_rare_label": round(100 / filt_s, 1),
        "filtered_rows_allowed": int((labels == rare).sum()),
        "filtered_results_per_query_min": int(min(len(r) for r in filt)),
        "memory_bytes": nbytes,
        "memory_ratio_vs_flat": round(nbytes / flat_bytes, 4),
        "build_s": round(build_s, 1),
        "build_figures": {k: v for k, v in idx.manifest.build["figures"].items() if k != "duplicate_of"},
        "tuned_params": idx.manifest.search_params,
        "tuning_recall_at_10": idx.manifest.tuning.get("recall"),
        "save_s": round(save_s, 2),
        "load_s": round(load_s, 2),
    }


# ----------------------------------------------------------------------------------------- the bound


def peak_sgemm_flops(size: int = 2048, repeats: int = 3) -> float:
    """Float32 FLOP/s of a numpy matrix product on this machine (best of ``repeats``)."""
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    b = a.T.copy()
    best = min(_best_of(lambda: a @ b, repeats=1)[0] for _ in range(repeats))
    return 2 * size**3 / best


def copy_bandwidth(nbytes: int = 256 << 20, repeats: int = 3) -> float:
    """Bytes/s of a numpy copy (read + write) of ``nbytes`` (best of ``repeats``): main memory."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    best = min(_best_of(lambda: np.copyto(dst, src), repeats=1)[0] for _ in range(repeats))
    return 2 * nbytes / best


@dataclass
class IndexWork:
    """What one query costs our IVF-PQ(+refine) index at its tuned parameters."""

    flops: float
    """Coarse quantizer (2·d·nlist), PQ look-up tables (2·d·ksub) and re-ranking (2·d·k_factor·k)."""
    code_bytes: float
    """PQ codes scanned (nprobe/nlist of the n codes) plus the re-ranked vectors' codes."""
    detail: str


def index_work(factory: str, params: dict[str, Any], n: int, d: int, k: int) -> IndexWork:
    """The work per query of an ``IVF{nlist},PQ{m}x{bits}[fs][,Refine(...)]`` index (or of an exact
    scan, for any other factory: 2·n·d FLOPs), for the FLOP bound."""
    ivf = re.search(r"IVF(\d+)", factory)
    pq = re.search(r"PQ(\d+)x(\d+)", factory)
    if not (ivf and pq):
        return IndexWork(2.0 * n * d, 4.0 * n * d, f"{factory}: an exact scan (2·n·d FLOPs)")
    nlist, m, bits = int(ivf.group(1)), int(pq.group(1)), int(pq.group(2))
    nprobe = int(params.get("nprobe", 1))
    k_factor = int(params.get("k_factor", 1)) if "Refine" in factory else 0
    ksub = 2**bits
    refine_bits = {"SQ4": 4, "SQ6": 6, "SQ8": 8, "SQfp16": 16, "Flat": 32}
    rb = next((b for name, b in refine_bits.items() if f"Refine({name})" in factory), 32)
    flops = 2.0 * d * nlist + 2.0 * d * ksub + 2.0 * d * k_factor * k
    scanned = min(nprobe, nlist) / nlist * n
    code_bytes = scanned * m * bits / 8 + k_factor * k * d * rb / 8
    return IndexWork(
        flops,
        code_bytes,
        f"{factory} at nprobe={nprobe}, k_factor={k_factor}: coarse 2·{d}·{nlist} + LUT 2·{d}·{ksub} + "
        f"re-rank 2·{d}·{k_factor * k} = {flops / 1e6:.2f} MFLOP/query; ~{scanned:,.0f} codes of {m * bits // 8} B "
        f"scanned ({code_bytes / 1e3:.0f} kB/query with the re-ranked ones)",
    )


def qps_bound(work: IndexWork, peak_flops: float) -> float:
    """Queries/s no implementation of that work can beat on this machine: peak FLOP/s over FLOPs/query.

    The scanned codes are not in it: the whole index fits in the last-level cache here, whose
    bandwidth numpy cannot measure honestly (their DRAM time is reported beside it).
    """
    return peak_flops / work.flops


# ----------------------------------------------------------------------------------------- rivals


def _files(workdir: Path, **arrays: np.ndarray) -> dict[str, str]:
    out = {}
    for name, a in arrays.items():
        p = workdir / f"{name}.npy"
        np.save(p, a)
        out[name] = str(p)
    return out


def _args(files: dict[str, str], workdir: Path) -> list[str]:
    return ["--x", files["x"], "--q", files["q"], "--truth", files["truth"], "--k", str(K)] + [
        "--target",
        str(RECALL_TARGET),
        "--threads",
        str(THREADS),
        "--workdir",
        str(workdir),
    ]


def rival_from_ann(name: str, res: dict, truth: np.ndarray, ids_file: Path, flat_bytes: int, setting: str) -> Rival:
    """A Rival from an ANN script's JSON: the QPS at the chosen setting, or None (with why) when no
    setting reached the recall target. The recall is recomputed here from the ids it returned."""
    mem = res["index_bytes"] / flat_bytes
    base = f"build {res['build_s']:.0f} s, index {res['index_bytes'] / 2**20:,.0f} MiB = {mem:.2f}x flat"
    if res.get(setting) is None:
        best = max((p["recall"] for p in res.get("sweep", [])), default=None)
        return Rival(
            name,
            None,
            end_to_end_s=res["build_s"],
            note=f"{res.get('note', 'no setting reached the target')} (best recall@10 {best}); {base}",
        )
    recall = recall_at_k(np.load(ids_file), truth, K)
    if abs(recall - res["recall_at_10"]) > 1e-6:
        raise RivalFailed(f"recall mismatch: the script says {res['recall_at_10']}, its ids give {recall:.4f}")
    if recall < RECALL_TARGET:
        return Rival(name, None, end_to_end_s=res["build_s"], note=f"recall@10 {recall:.4f} < {RECALL_TARGET}; {base}")
    return Rival(
        name,
        res["qps"],
        end_to_end_s=round(res["build_s"] + res["search_s"], 2),
        note=f"{setting}={res[setting]}, recall@10 {recall:.4f}; {base}",
    )


@dataclass
class LiveRival:
    """A rival built in its own process, waiting for timed rounds (or its reason for not being there)."""

    name: str
    setting: str
    ids_file: str
    details: dict
    proc: RivalProcess | None = None
    failed: str = ""
    times: list[float] | None = None


def _start(live: LiveRival, env: tuple[str, list[str]], script: str, args: list[str], workdir: Path, timeout: float):
    """Install (or reuse) the rival's env and start its script; a failure is kept as the reason."""
    try:
        t0 = time.perf_counter()
        python = ensure_env(*env)
        live.details["install_or_reuse_s"] = round(time.perf_counter() - t0, 1)
        live.details["build_timeout_s"] = timeout
        live.proc = RivalProcess(python, script, args, workdir=workdir, timeout_s=timeout)
        live.details.update(live.proc.ready)
        if live.proc.ready.get(live.setting) is not None:
            live.times = []
    except RivalFailed as e:
        live.failed = str(e)
    except Exception as e:  # the glue's own bug is still this rival's result, not a crash
        live.failed = f"{type(e).__name__}: {e}"


def _autofaiss_progress(workdir: Path) -> str:
    """What autofaiss had chosen and was doing, from its log (for a build that did not finish)."""
    try:
        log = (workdir / "autofaiss_index.log").read_text(errors="replace")
    except OSError:
        return ""
    chosen = re.findall(r"Instanciate the index ([^\s\"]+)", log)
    steps = re.findall(r"\t-> (.+?) \d\d/\d\d/\d{4}", log)
    out = f"; it had chosen {chosen[-1]}" if chosen else ""
    return out + (f" and was at: {steps[-1]}" if steps else "")


def _finish(live: LiveRival, truth: np.ndarray, flat_bytes: int, workdir: Path) -> Rival:
    """The rival's result from its build, its sweep and its alternated timed rounds."""

    def result() -> Rival:
        if live.failed:
            raise RivalFailed(live.failed)
        final = live.proc.close()
        live.details.update(final)
        res = dict(live.details)
        if live.times:
            res["search_s"] = min(live.times)
            res["qps"] = round(N_QUERIES / res["search_s"], 1)
            live.details["search_s_all_rounds"] = [round(t, 5) for t in live.times]
        return rival_from_ann(live.name, res, truth, workdir / live.ids_file, flat_bytes, live.setting)

    rival = measure_rival(live.name, result)
    if live.proc is not None:
        live.proc.kill()
    return rival


# ----------------------------------------------------------------------------------------- the benchmark


@register_benchmark("index", doc="Our FAISS index vs exact, hnswlib and autofaiss: QPS at recall@10 >= 0.95")
def bench_index(quick: bool, workdir: Path) -> BenchResult:
    n = 100_000 if quick else 1_000_000
    faiss.omp_set_num_threads(THREADS)
    data_params = dict(n_clusters=1000, latent_dim=32, cluster_spread=0.8, noise=0.1, seed=0)
    t = time.perf_counter()
    x, labels = clustered_vectors(n, DIM, **data_params)
    q, _ = clustered_vectors(N_QUERIES, DIM, **data_params, part=1)
    faiss.normalize_L2(x)
    faiss.normalize_L2(q)
    gen_s = time.perf_counter() - t

    t = time.perf_counter()
    flat = faiss.IndexFlatIP(DIM)
    flat.add(x)
    flat_add_s = time.perf_counter() - t
    flat_bytes = int(faiss.serialize_index(flat).nbytes)
    _, truth = flat.search(q, K)

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    budget = int(MEMORY_RATIO_BUDGET * flat_bytes)
    files = _files(workdir, x=x, q=q, truth=truth)  # what the rivals read, in their own processes
    ours, pq = _variant("pq", x, labels, q, truth, flat_bytes, workdir, memory_budget=budget)
    _, auto = _variant("auto", x, labels, q, truth, flat_bytes, workdir)
    del x

    hnsw = LiveRival(HNSWLIB_NAME, "ef", "hnswlib_ids.npy", {})
    hnsw_args = [*_args(files, workdir), "--m", str(HNSW_M), "--ef-construction", str(HNSW_EF_CONSTRUCTION)]
    _start(hnsw, HNSWLIB_ENV, "hnswlib_index.py", hnsw_args, workdir, 1800 if quick else 3600)
    af = LiveRival(AUTOFAISS_NAME, "nprobe", "autofaiss_ids.npy", {"memory_budget_bytes": budget})
    af_args = [*_args(files, workdir), "--memory-budget", str(budget)]
    _start(af, AUTOFAISS_ENV, "autofaiss_index.py", af_args, workdir, 300 if quick else 900)
    if af.failed:
        af.failed = f"build_index under a {budget / 2**20:.0f} MiB (0.25x flat) budget: {af.failed}{_autofaiss_progress(workdir)}"

    # steady state: every side's batched search of all queries, in alternated rounds (load from other
    # processes then hurts none more than the others); each keeps its best round
    ours_times, exact_times = [], []
    live = [r for r in (hnsw, af) if r.times is not None]
    for _ in range(ROUNDS):
        t = time.perf_counter()
        ours.search_arrays(q, k=K)
        ours_times.append(time.perf_counter() - t)
        for r in live:
            try:
                r.times.append(r.proc.time_once())
            except RivalFailed as e:
                r.failed, r.times = f"failed during the timed rounds: {e}", None
        live = [r for r in live if r.times is not None]
        t = time.perf_counter()
        flat.search(q, K)
        exact_times.append(time.perf_counter() - t)
    del flat
    rivals_out = [_finish(r, truth, flat_bytes, workdir) for r in (hnsw, af)]
    for f in files.values():
        os.unlink(f)
    exact_s = min(exact_times)
    exact_qps = N_QUERIES / exact_s
    pq["search_s"] = round(min(ours_times), 5)
    pq["qps"] = round(N_QUERIES / min(ours_times), 1)
    pq["qps_ratio_vs_exact"] = round(pq["qps"] / exact_qps, 2)
    pq["search_s_all_rounds"] = [round(t, 5) for t in ours_times]
    auto["qps_ratio_vs_exact"] = round(auto["qps"] / exact_qps, 2)

    # the bound: our index's FLOPs per query on the machine's measured peak
    sgemm = peak_sgemm_flops()
    exact_flops = exact_qps * 2.0 * n * DIM  # the exact scan is a matrix product too
    peak = max(sgemm, exact_flops)
    bandwidth = copy_bandwidth()
    work = index_work(pq["index_factory"], pq["tuned_params"], n, DIM, K)
    bound_qps = qps_bound(work, peak)

    exact = Rival(
        "faiss.IndexFlatIP (exact)",
        round(exact_qps, 1),
        end_to_end_s=round(flat_add_s + exact_s, 2),
        note=f"recall@10 1 by definition; memory 1.00x flat; exact scan at {exact_flops / 1e9:.0f} GFLOP/s",
    )
    rivals = [exact, *rivals_out]
    rival_details = {"hnswlib": hnsw.details, "autofaiss": af.details}
    reached = [r for r in rivals if r.value is not None]
    strongest = max(reached, key=lambda r: r.value)

    end_s = pq["build_s"] + pq["search_s"]
    return BenchResult(
        name="index",
        metric="batch_qps_k10_at_recall_0.95",
        value=pq["qps"],
        baseline_name=strongest.name,
        baseline_value=strongest.value,
        higher_is_better=True,
        params={
            "n": n,
            "dim": DIM,
            "queries": N_QUERIES,
            "k": K,
            "recall_target": RECALL_TARGET,
            "recall_definition": RECALL_DEFINITION,
            "rival_tuning": "rivals: the lowest ef / nprobe reaching the target on the measured queries themselves "
            "(their best case); raylens: parameters tuned by its build on its own sample",
            "data": data_params,
            "quick": quick,
            "memory_budget": f"{MEMORY_RATIO_BUDGET}x flat (raylens and autofaiss; hnswlib has no budget knob)",
            "threads": THREADS,
            "timing": f"best of {ROUNDS} alternated rounds (ours, each rival in its process, exact) of one "
            "batched search of all queries",
        },
        extra={
            "recall_at_10": pq["recall_at_10"],
            "memory_ratio_vs_flat": pq["memory_ratio_vs_flat"],
            "build_s": pq["build_s"],
            "qps_ratio_vs_exact": pq["qps_ratio_vs_exact"],
            "targets": {
                "recall_at_10>=0.95": pq["recall_at_10"] >= RECALL_TARGET,
                "qps_ratio_vs_exact>=10": pq["qps_ratio_vs_exact"] >= 10,
                "memory_ratio<=0.25": pq["memory_ratio_vs_flat"] <= MEMORY_RATIO_BUDGET,
                "build_s<=600": pq["build_s"] <= 600,
            },
            "pq_variant": pq,
            "default_budget_variant": auto,
            "exact": {
                "qps": round(exact_qps, 1),
                "memory_bytes": flat_bytes,
                "add_s": round(flat_add_s, 2),
                "search_s_all_rounds": [round(t, 4) for t in exact_times],
            },
            "rivals": rival_details,
            "bound_detail": {
                "work": work.detail,
                "flops_per_query": work.flops,
                "peak_flops": round(peak),
                "numpy_sgemm_flops": round(sgemm),
                "exact_scan_flops": round(exact_flops),
                "code_bytes_per_query": round(work.code_bytes),
                "dram_copy_bandwidth_bytes_per_s": round(bandwidth),
                "code_bytes_at_dram_bandwidth_qps": round(bandwidth / work.code_bytes),
                "note": "the codes are not in the bound: the index is last-level-cache resident here",
            },
            "data_generation_s": round(gen_s, 1),
            "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        },
        rivals=rivals,
        end_to_end=Window(
            round(N_QUERIES / end_s, 2),
            round(end_s, 2),
            note="build (k-means, PQ training, adding, recall tuning) + one batched search of all queries",
        ),
        steady_state=Window(
            pq["qps"], pq["search_s"], note=f"the built index: best of {ROUNDS} alternated batched searches"
        ),
        bound=Bound(
            round(bound_qps, 1), f"FLOP bound of our index's work: {work.detail}; peak {peak / 1e9:.0f} GFLOP/s"
        ),
    )
