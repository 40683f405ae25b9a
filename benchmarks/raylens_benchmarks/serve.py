"""``raylens bench serve``: text-to-image search over HTTP on Ray Serve against the same encode+search
called in-process in a loop.

One run on this machine, on 127.0.0.1 (``--quick``: a 20k index and shorter phases):

- the index: 100k clustered synthetic vectors (:mod:`raylens.index.synthetic`) of the model's dim,
  built with the automatic index choice; the model: a random-init ``clip-tiny`` checkpoint (the
  demo's architecture; encode cost, not accuracy, is what is measured);
- baseline: ``encode_texts([q])`` + ``index.search`` in a loop in this process (queries/s);
- Serve: a bounded closed loop of ``POST /search`` (``k=10``) at concurrency 1, 8 and 32 with the
  embedder at 1 replica: QPS, p50 and p99 per level. The primary value is QPS at 32 (goal >= 0.7x
  the baseline);
- dynamic batching off (``max_batch_size=1``) against on at concurrency 32 (goal >= 1.5x), with the
  model's own encode cost per text alone and in batches of 32 (the most batching can save);
- autoscaling: the embedder with the ``autoscaling_config`` of ``services/raylens_services/search.yaml`` under
  concurrency 32, then idle: running replicas sampled every second go into ``extra``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from raylens.bench import BenchResult, register_benchmark

K = 10
SERVE_LOGGING = {"encoding": "JSON", "log_level": "WARNING", "enable_access_log": False}
"""Per-request log lines off while measuring (they would stream to this process, which also runs the client)."""
SHAPES = ("circle", "square", "triangle", "star", "cross")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES = ("small", "large")


def _queries() -> list[str]:
    return [f"a {s} {c} {sh}" for s in SIZES for c in COLOURS for sh in SHAPES]


def _percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


async def _closed_loop(
    url: str, queries: list[str], concurrency: int, seconds: float, warmup_s: float
) -> dict[str, Any]:
    """``concurrency`` workers, each sending the next query as soon as its last one returned."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    t_start = time.perf_counter()
    t_measure, t_end = t_start + warmup_s, t_start + warmup_s + seconds
    counter = iter(range(10**9))

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while (now := time.perf_counter()) < t_end:
            q = queries[next(counter) % len(queries)]
            async with session.post(url, json={"text": q, "k": K}) as resp:
                await resp.read()
                ok = resp.status == 200
            done = time.perf_counter()
            if now >= t_measure:
                if ok:
                    latencies.append(done - now)
                else:
                    errors += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return {
        "concurrency": concurrency,
        "qps": round(len(latencies) / seconds, 1),
        "p50_ms": round(_percentile(latencies, 50) * 1000, 2),
        "p99_ms": round(_percentile(latencies, 99) * 1000, 2),
        "requests": len(latencies),
        "errors": errors,
    }


def _load(url: str, queries: list[str], concurrency: int, seconds: float, warmup_s: float = 2.0) -> dict[str, Any]:
    return asyncio.run(_closed_loop(url, queries, concurrency, seconds, warmup_s))


def _encode_cost(model, queries: list[str], batch: int = 32, repeats: int = 5) -> dict[str, float]:
    """Milliseconds of CPU per text for one text at a time and for batches of ``batch``, on one torch
    thread as a replica runs: the most dynamic batching can save per request."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        texts = [queries[i % len(queries)] for i in range(batch)]
        model.encode_texts(texts)  # warm-up
        t = time.perf_counter()
        for _ in range(repeats):
            for q in texts:
                model.encode_texts([q])
        single = (time.perf_counter() - t) / (repeats * batch)
        t = time.perf_counter()
        for _ in range(repeats):
            model.encode_texts(texts)
        batched = (time.perf_counter() - t) / (repeats * batch)
    finally:
        torch.set_num_threads(threads)
    return {
        "single_ms_per_text": round(single * 1000, 3),
        f"batch{batch}_ms_per_text": round(batched * 1000, 3),
        "speedup": round(single / batched, 2),
    }


def _baseline(model, index, queries: list[str], seconds: float) -> dict[str, Any]:
    for q in queries[:10]:  # warm-up
        index.search(model.encode_texts([q]), k=K)
    lat: list[float] = []
    t0 = time.perf_counter()
    i = 0
    while time.perf_counter() - t0 < seconds:
        t = time.perf_counter()
        index.search(model.encode_texts([queries[i % len(queries)]]), k=K)
        lat.append(time.perf_counter() - t)
        i += 1
    total = time.perf_counter() - t0
    return {
        "qps": round(len(lat) / total, 1),
        "p50_ms": round(_percentile(lat, 50) * 1000, 2),
        "p99_ms": round(_percentile(lat, 99) * 1000, 2),
        "requests": len(lat),
    }


def _deploy(args: dict[str, Any], port: int) -> str:
    from raylens.serve.ray_apps import SEARCH_APP, run_app, wait_ready

    run_app(SEARCH_APP, args, name="raylens-bench", logging_config=SERVE_LOGGING)
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/healthz", timeout_s=300)
    return url


def _autoscaling(url: str, queries: list[str], load_s: float, idle_s: float) -> dict[str, Any]:
    """Replica counts of the embedder every second, through a load phase and an idle phase."""
    from raylens.serve.ray_apps import replica_counts

    timeline: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            counts = replica_counts("raylens-bench")
            timeline.append({"t_s": round(time.perf_counter() - t0, 1), "replicas": counts.get("ClipEmbedder", 0)})
            stop.wait(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    load = _load(f"{url}/search", queries, 32, load_s, warmup_s=0.0)
    t_load_end = time.perf_counter() - t0
    deadline = time.perf_counter() + idle_s
    while time.perf_counter() < deadline:  # idle until the embedder is back at one replica
        time.sleep(1.0)
        if max(p["replicas"] for p in timeline) > 1 and timeline[-1]["replicas"] <= 1:
            time.sleep(2.0)
            break
    stop.set()
    sampler.join()
    during = [p["replicas"] for p in timeline if p["t_s"] <= t_load_end]
    after = [p["replicas"] for p in timeline if p["t_s"] > t_load_end]
    return {
        "load_s": load_s,
        "load_end_s": round(t_load_end, 1),
        "max_replicas_under_load": max(during or [0]),
        "replicas_at_end": after[-1] if after else None,
        "qps_during_scaling": load["qps"],
        "timeline": timeline,
    }


def _save_timeline_png(timeline: list[dict[str, Any]], load_end_s: float, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return None
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.step([p["t_s"] for p in timeline], [p["replicas"] for p in timeline], where="post")
    ax.axvspan(0, load_end_s, alpha=0.15, label="load: concurrency 32")
    ax.set(xlabel="seconds", ylabel="embedder replicas", title="Serve autoscaling (raylens bench serve)")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@register_benchmark(
    "serve",
    doc="Search over HTTP on Ray Serve vs in-process encode+search (QPS, p50, p99), batching on/off, autoscaling.",
)
def bench_serve(quick: bool, workdir: Path) -> BenchResult:
    import torch

    from raylens.index import VectorIndex
    from raylens.index.synthetic import clustered_vectors
    from raylens.models import create_model
    from raylens.runtime import init_ray
    from raylens.serve.ray_apps import config_options, load_config, start_http

    load_before = os.getloadavg()
    n = 20_000 if quick else 100_000
    phase_s = 4.0 if quick else 12.0
    ckpt = workdir / "clip-tiny"
    create_model("clip-tiny").save(ckpt)
    model = create_model("clip-tiny", pretrained=str(ckpt))
    x, labels = clustered_vectors(n, dim=model.spec.embed_dim, seed=0)
    t = time.perf_counter()
    index = VectorIndex.build(
        x,
        {"caption": [f"item {i}" for i in range(n)], "label": labels},
        model="clip-tiny",
        checkpoint_hash=model.checkpoint_hash,
        checkpoint=str(ckpt),
    )
    build_s = time.perf_counter() - t
    index.save(workdir / "index")
    queries = _queries()
    threads = torch.get_num_threads()
    base = _baseline(model, index, queries, phase_s)
    encode = _encode_cost(model, queries)

    init_ray()
    port = start_http("127.0.0.1")
    options = config_options(load_config())  # services/raylens_services/search.yaml's deployment settings
    fixed = {
        **options,
        "ClipEmbedder": {
            **{k: v for k, v in options["ClipEmbedder"].items() if k != "autoscaling_config"},
            "num_replicas": 1,
            "autoscaling_config": None,  # the class's own autoscaling stays on unless switched off here
        },
    }
    args = {"indices": {"bench": str(workdir / "index")}, "options": fixed}
    url = _deploy(args, port)
    levels = [_load(f"{url}/search", queries, c, phase_s) for c in (1, 8, 32)]
    on32 = levels[-1]
    url = _deploy({**args, "batch": {"max_batch_size": 1}}, port)
    off32 = _load(f"{url}/search", queries, 32, phase_s)
    url = _deploy({**args, "options": options}, port)  # the config's autoscaling
    scaling = _autoscaling(url, queries, load_s=40.0 if quick else 60.0, idle_s=75.0 if quick else 90.0)
    from ray import serve

    serve.delete("raylens-bench")
    serve.shutdown()
    png = _save_timeline_png(scaling["timeline"], scaling["load_end_s"], workdir / "serve_autoscaling.png")
    if png and os.environ.get("RAYLENS_BENCH_PNG"):
        import shutil

        shutil.copy(png, os.environ["RAYLENS_BENCH_PNG"])
    return BenchResult(
        name="serve",
        metric="search_qps_at_concurrency_32",
        value=on32["qps"],
        baseline_name="in-process loop: encode_texts([q]) + index.search, one query at a time",
        baseline_value=base["qps"],
        params={
            "index_vectors": n,
            "dim": model.spec.embed_dim,
            "index_factory": index.manifest.index_factory,
            "model": "clip-tiny (random init checkpoint; the demo's architecture)",
            "k": K,
            "phase_s": phase_s,
            "serve_logging": SERVE_LOGGING,
            "client": "aiohttp closed loop in the benchmark process, 127.0.0.1",
            "baseline_torch_threads": threads,
            "replica_torch_threads": 1,
            "embedder_replicas_for_levels": 1,
            "batch": {"max_batch_size": 32, "batch_wait_timeout_s": 0.005},
            "autoscaling_config": options["ClipEmbedder"].get("autoscaling_config"),
            "quick": quick,
        },
        extra={
            "goal_ratio_c32": 0.7,
            "levels": levels,
            "baseline": base,
            "batching": {
                "on_c32": on32,
                "off_c32": off32,
                "ratio_on_off": round(on32["qps"] / off32["qps"], 3) if off32["qps"] else None,
                "goal": 1.5,
                "encode_cost_one_thread": encode,
            },
            "autoscaling": scaling,
            "index_build_s": round(build_s, 1),
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
        },
    )
