"""``raylens bench serve``: text-to-image search over HTTP on Ray Serve against what a user would run
instead, measured in the same run on the same index and model.

One run on this machine, on 127.0.0.1 (``--quick``: a 20k index and shorter phases):

- the index: 100k clustered synthetic vectors (:mod:`raylens.index.synthetic`) of the model's dim,
  built with the automatic index choice; the model: a random-init ``clip-tiny`` checkpoint (the
  demo's architecture; encode cost, not accuracy, is what is measured);
- rivals: the in-process loop, ``encode_texts([q])`` + ``index.search`` one query at a time in this
  process, with torch's default threads (as a user would run it) and on one torch thread (faster
  for such small calls, far faster when other jobs share the cores), and a plain FastAPI + uvicorn
  server in one process doing the same per request (:mod:`raylens_benchmarks._serve_rival`), loaded
  over real HTTP like ours. The baseline is the strongest of them;
- the load: a bounded closed loop of ``POST /search`` (``k=10``) at concurrency 1, 8 and 32 from an
  aiohttp client in this process, for the search service (as ``services/raylens_services/search.yaml``
  configures it: the index replica encodes the queries itself, ``query_encoder: index``; every
  deployment at 1 replica) and for the FastAPI server: QPS, p50 and p99 per level, with the load average. The primary value is our QPS at
  32 (goal: at least 2x the in-process loop); the goal at concurrency 1 is a p50 of at most 10 ms.
  Other jobs may share the machine, so every system is measured in 2 rounds (``--quick``: 1), each
  system in turn with all of them up, and each figure is its system's best round (every round is in
  ``extra``);
- the bounds: for QPS, the cores over the CPU time of one query's model work (encode + search, one
  torch thread, at the batch size the service uses, 32); for latency, the floor of one query's model
  work (encode + search of a single query, in process, the fastest of many);
- where the time of one request at concurrency 1 goes (``extra.latency_breakdown_c1``): the median
  of each layer, peeled off with calls that skip the layers above it;
- where the cores go at concurrency 32 (``extra.cpu_split_c32``): the CPU time per request of each
  process (the ingress, the index, HAProxy, Ray's own, this process's client) over one more phase,
  and how busy the cores were;
- adaptive batching off (``max_batch_size=1``) against on at concurrency 32, with the model's own
  encode cost per text alone and in batches of 32 (the most batching can save);
- autoscaling: the deployment that encodes the queries (the index, or the embedder with
  ``query_encoder: embedder``) with the config's ``autoscaling_config`` under concurrency 32, then
  idle: its running replicas sampled every second go into ``extra``.

Per-request log lines are off while measuring, for Serve's proxy and replicas and for uvicorn alike.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from raylens.bench import BenchResult, Bound, BoundExceeded, Rival, Window, register_benchmark

K = 10
LEVELS = (1, 8, 32)
BATCH = 32
ROUNDS, ROUNDS_QUICK = 2, 1
"""Rounds of every measurement (each system in turn); each figure is its system's best round."""
"""The search batches' ``max_batch_size`` (the service's default): the batch size of the QPS bound."""
SERVE_LOGGING = {"encoding": "JSON", "log_level": "WARNING", "enable_access_log": False}
"""Per-request log lines off while measuring (they would stream to this process, which also runs the client)."""
SHAPES = ("circle", "square", "triangle", "star", "cross")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES = ("small", "large")
IN_PROCESS = "in-process loop: encode_texts([q]) + index.search, one query at a time"
IN_PROCESS_1T = "the same in-process loop on one torch thread"
FASTAPI = "FastAPI + uvicorn, one process: encode_texts([q]) + index.search per request"


def _queries() -> list[str]:
    return [f"a {s} {c} {sh}" for s in SIZES for c in COLOURS for sh in SHAPES]


def _percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def _load_average() -> float:
    return round(os.getloadavg()[0], 2)


async def _closed_loop(
    url: str, queries: list[str], concurrency: int, seconds: float, warmup_s: float
) -> dict[str, Any]:
    """``concurrency`` workers, each sending the next query as soon as its last one returned; the
    figures count the requests sent after ``warmup_s`` (``all_requests``: every one, warm-up too)."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    sent = 0
    t_start = time.perf_counter()
    t_measure, t_end = t_start + warmup_s, t_start + warmup_s + seconds
    counter = iter(range(10**9))

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors, sent
        while (now := time.perf_counter()) < t_end:
            q = queries[next(counter) % len(queries)]
            async with session.post(url, json={"text": q, "k": K}) as resp:
                await resp.read()
                ok = resp.status == 200
            done = time.perf_counter()
            sent += 1
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
        "all_requests": sent,
        "elapsed_s": round(time.perf_counter() - t_start, 2),
        "load_average_1m": _load_average(),
    }


def _load(url: str, queries: list[str], concurrency: int, seconds: float, warmup_s: float = 2.0) -> dict[str, Any]:
    return asyncio.run(_closed_loop(url, queries, concurrency, seconds, warmup_s))


def _levels(url: str, queries: list[str], seconds: float) -> list[dict[str, Any]]:
    return [_load(f"{url}/search", queries, c, seconds) for c in LEVELS]


def _one_thread():
    import contextlib

    import torch

    @contextlib.contextmanager
    def ctx():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    return ctx()


def _model_costs(model, index, queries: list[str], batch: int = BATCH, repeats: int = 5) -> dict[str, float]:
    """Milliseconds of one query's model work on one torch thread, as a replica runs it: encode and
    search alone and in batches of ``batch`` (the most batching can save), and the floor of a
    single query's encode + search (the fastest of many)."""
    with _one_thread():
        texts = [queries[i % len(queries)] for i in range(batch)]
        vectors = model.encode_texts(texts)  # warm-up
        index.search(vectors, k=K)
        t = time.perf_counter()
        for _ in range(repeats):
            for q in texts:
                model.encode_texts([q])
        single = (time.perf_counter() - t) / (repeats * batch)
        t = time.perf_counter()
        for _ in range(repeats):
            model.encode_texts(texts)
        batched = (time.perf_counter() - t) / (repeats * batch)
        t = time.perf_counter()
        for _ in range(repeats):
            for i in range(batch):
                index.search(vectors[i : i + 1], k=K)
        search_single = (time.perf_counter() - t) / (repeats * batch)
        t = time.perf_counter()
        for _ in range(repeats):
            index.search(vectors, k=K)
        search_batched = (time.perf_counter() - t) / (repeats * batch)
        one = []
        for i in range(5 * batch):
            t = time.perf_counter()
            index.search(model.encode_texts([texts[i % batch]]), k=K)
            one.append(time.perf_counter() - t)
    return {
        "single_ms_per_text": round(single * 1000, 3),
        f"batch{batch}_ms_per_text": round(batched * 1000, 3),
        "speedup": round(single / batched, 2),
        "search_single_ms_per_query": round(search_single * 1000, 3),
        f"search_batch{batch}_ms_per_query": round(search_batched * 1000, 3),
        "query_floor_ms": round(min(one) * 1000, 3),
        "query_p50_ms": round(_percentile(one, 50) * 1000, 3),
    }


def _in_process(model, index, queries: list[str], seconds: float) -> dict[str, Any]:
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
        "min_ms": round(min(lat) * 1000, 3),
        "requests": len(lat),
        "seconds": round(total, 2),
        "load_average_1m": _load_average(),
    }


def _wait_http(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before it was ready")
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not ready after {timeout_s}s")


class _FastAPIServer:
    """The FastAPI + uvicorn rival in a subprocess of its own (its CPU is not the load client's)."""

    def __init__(self, workdir: Path, ckpt: Path):
        from raylens.serve.ray_apps import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "fastapi-rival.log"
        script = Path(__file__).with_name("_serve_rival.py")
        self.cmd = [sys.executable, str(script), "--index", str(workdir / "index"), "--checkpoint", str(ckpt)]
        self.cmd += ["--port", str(self.port)]
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None
        self.error: str | None = None

    def start(self) -> bool:
        t0 = time.perf_counter()
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_http(f"{self.url}/healthz", 300, self.proc)
        except Exception as exc:  # noqa: BLE001 - a rival that cannot start is a result with its reason
            self.error = f"{type(exc).__name__}: {exc} {self.log_path.read_text(errors='replace')[-500:]}"
            return False
        self.startup_s = round(time.perf_counter() - t0, 1)
        return True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self._log.close()


def _best(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per concurrency level, the round with the most QPS (other jobs share the machine: each system
    gets its best window, the same rule for all)."""
    best = []
    for i in range(len(rounds[0])):
        r = max(range(len(rounds)), key=lambda j: rounds[j][i]["qps"])
        best.append({**rounds[r][i], "round": r})
    return best


def _fastapi_result(server: _FastAPIServer, rounds: list[list[dict[str, Any]]], wall_s: float):
    """The FastAPI rival from its rounds: a failed start or failed requests are a result with the reason."""
    if server.error or not rounds:
        return Rival(FASTAPI, None, None, server.error or "not measured"), {}
    levels = _best(rounds)
    extra = {"startup_s": server.startup_s, "levels": levels, "rounds": rounds}
    errors = sum(lv["errors"] for r in rounds for lv in r)
    if errors or any(not lv["requests"] for lv in levels):
        return Rival(FASTAPI, None, round(wall_s, 1), f"{errors} failed requests (see extra.fastapi_uvicorn)"), extra
    c1, c32 = levels[0], levels[-1]
    note = f"QPS at c=32; c=1 p50 {c1['p50_ms']} ms p99 {c1['p99_ms']} ms; QPS c=1/8/32 " + "/".join(
        str(lv["qps"]) for lv in levels
    )
    return Rival(FASTAPI, c32["qps"], round((server.startup_s or 0) + wall_s, 1), note), extra


def _deploy(args: dict[str, Any], port: int) -> str:
    from raylens.serve.ray_apps import SEARCH_APP, run_app, wait_ready

    run_app(SEARCH_APP, args, name="raylens-bench", logging_config=SERVE_LOGGING)
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/healthz", timeout_s=300)
    return url


CPU_ROLES = (
    "SearchIngress",
    "IndexServer",
    "ClipEmbedder",
    "haproxy",
    "ServeController",
    "raylet",
    "gcs_server",
    "dashboard",
)
"""Processes told apart by their command line in :func:`_cpu_seconds` (the rest: ``other``)."""


def _cpu_seconds() -> dict[int, tuple[str, float]]:
    """``{pid: (role, user + system CPU seconds)}`` of every process on this machine (Linux ``/proc``;
    ``{}`` elsewhere). The role: a :data:`CPU_ROLES` name in its command line, ``client`` for this
    process (the load generator), else ``other``."""
    out: dict[int, tuple[str, float]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return out
    tick = os.sysconf("SC_CLK_TCK")
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(d.name)
        role = "client" if pid == os.getpid() else next((r for r in CPU_ROLES if r in cmd), "other")
        out[pid] = (role, (int(fields[11]) + int(fields[12])) / tick)
    return out


def _cpu_split(url: str, queries: list[str], seconds: float) -> dict[str, Any]:
    """CPU time per request of each process role (:func:`_cpu_seconds`) over a concurrency-32 phase:
    where the cores go, and how busy they were (``utilization``: all CPU time / cores x wall time)."""
    before = _cpu_seconds()
    t = time.perf_counter()
    load = _load(f"{url}/search", queries, 32, seconds, warmup_s=0.0)
    wall = time.perf_counter() - t
    after = _cpu_seconds()
    if not before or not load["requests"]:
        return {"note": "no /proc on this machine" if not before else "no request answered"}
    roles: dict[str, float] = {}
    for pid, (role, cpu) in after.items():
        roles[role] = roles.get(role, 0.0) + cpu - (before[pid][1] if pid in before else 0.0)
    total = sum(roles.values())
    cores = os.cpu_count() or 1
    return {
        "qps": load["qps"],
        "requests": load["requests"],
        "wall_s": round(wall, 2),
        "cpu_ms_per_request": {
            r: round(v * 1000 / load["requests"], 3) for r, v in sorted(roles.items(), key=lambda kv: -kv[1])
        },
        "total_cpu_ms_per_request": round(total * 1000 / load["requests"], 3),
        "utilization": round(total / (cores * wall), 3),
        "note": "CPU seconds (user + system, /proc) of every process on the machine over the phase, per answered "
        "request; `client` is this benchmark's load generator, which the in-process loop does not pay",
    }


def _median_ms(call, n: int) -> float:
    for _ in range(10):
        call()
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        call()
        lat.append(time.perf_counter() - t)
    return round(_percentile(lat, 50) * 1000, 2)


def _front() -> str:
    """The HTTP path into the ingress replica that :func:`raylens.serve.ray_apps.start_http` set up."""
    from raylens.serve.ray_apps import fast_ingress_enabled

    if fast_ingress_enabled():
        return "HAProxy + the ingress replica's own HTTP server (Serve's direct ingress)"
    return "Serve's Python HTTP proxy + its hop to the ingress (RAYLENS_SERVE_HAPROXY=0)"


def _breakdown(url: str, queries: list[str], model_floor_ms: float, n: int, query_encoder: str) -> dict[str, Any]:
    """Where one request's time goes at concurrency 1: the median of the whole HTTP request, of the
    time inside the ingress (its ``took_ms``), of one search sent straight to the index deployment,
    of one encode sent straight to the embedder and of a call that does nothing there (a bare hop),
    each from this process, one at a time. The layers are the differences of those medians; with
    ``query_encoder`` ``index`` the encode is inside the index call, not a call of its own."""
    import requests
    from ray import serve

    from raylens.search import SearchQuery
    from raylens.serve.ray_apps import data_plane

    session = requests.Session()
    http, took = [], []
    for i in range(n + 10):
        t = time.perf_counter()
        r = session.post(f"{url}/search", json={"text": queries[i % len(queries)], "k": K}, timeout=60)
        d = time.perf_counter() - t
        if i >= 10 and r.status_code == 200:
            http.append(d)
            took.append(r.json()["took_ms"] / 1000)
    index = data_plane(serve.get_deployment_handle("IndexServer", "raylens-bench"))
    embedder = data_plane(serve.get_deployment_handle("ClipEmbedder", "raylens-bench"))
    q = SearchQuery(text=queries[0], k=K)
    m = {
        "http_request": round(_percentile(http, 50) * 1000, 2),
        "inside_ingress": round(_percentile(took, 50) * 1000, 2),
        "index_search_call": _median_ms(lambda: index.search_many.remote([q]).result(), n),
        "embedder_encode_call": _median_ms(lambda: embedder.embed_texts.remote([queries[1]]).result(), n),
        "bare_hop": _median_ms(lambda: embedder.info.remote().result(), n),
    }
    layers = {
        f"client + {_front()}": round(m["http_request"] - m["inside_ingress"], 2),
        "ingress (FastAPI route, parse, batcher, JSON reply) beyond its index call": round(
            m["inside_ingress"] - m["index_search_call"], 2
        ),
    }
    if query_encoder == "index":
        layers["index: the encode and the search in the replica beyond a bare hop"] = round(
            m["index_search_call"] - m["bare_hop"], 2
        )
    else:
        layers["index (its hop, the hop to the embedder, the search) beyond the encode call"] = round(
            m["index_search_call"] - m["embedder_encode_call"], 2
        )
        layers["embedder: the encode beyond a bare hop"] = round(m["embedder_encode_call"] - m["bare_hop"], 2)
    layers["a bare hop (a call that does nothing, there and back)"] = m["bare_hop"]
    return {
        "medians_ms": m,
        "query_encoder": query_encoder,
        "layers_ms": layers,
        "model_work_floor_ms": model_floor_ms,
        "requests": n,
        "load_average_1m": _load_average(),
        "note": "differences of medians (approximate); the calls to the index and the embedder are sent "
        "from the benchmark process over the same gRPC data plane the service uses",
    }


def _autoscaling(url: str, queries: list[str], load_s: float, idle_s: float, deployment: str) -> dict[str, Any]:
    """Replica counts of ``deployment`` every second, through a load phase and an idle phase."""
    from raylens.serve.ray_apps import replica_counts

    timeline: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            counts = replica_counts("raylens-bench")
            timeline.append({"t_s": round(time.perf_counter() - t0, 1), "replicas": counts.get(deployment, 0)})
            stop.wait(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    load = _load(f"{url}/search", queries, 32, load_s, warmup_s=0.0)
    t_load_end = time.perf_counter() - t0
    deadline = time.perf_counter() + idle_s
    while time.perf_counter() < deadline:  # idle until the deployment is back at one replica
        time.sleep(1.0)
        if max(p["replicas"] for p in timeline) > 1 and timeline[-1]["replicas"] <= 1:
            time.sleep(2.0)
            break
    stop.set()
    sampler.join()
    during = [p["replicas"] for p in timeline if p["t_s"] <= t_load_end]
    after = [p["replicas"] for p in timeline if p["t_s"] > t_load_end]
    return {
        "deployment": deployment,
        "load_s": load_s,
        "load_end_s": round(t_load_end, 1),
        "max_replicas_under_load": max(during or [0]),
        "replicas_at_end": after[-1] if after else None,
        "qps_during_scaling": load["qps"],
        "timeline": timeline,
    }


def _save_timeline_png(timeline: list[dict[str, Any]], load_end_s: float, deployment: str, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return None
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.step([p["t_s"] for p in timeline], [p["replicas"] for p in timeline], where="post")
    ax.axvspan(0, load_end_s, alpha=0.15, label="load: concurrency 32")
    ax.set(xlabel="seconds", ylabel=f"{deployment} replicas", title="Serve autoscaling (raylens bench serve)")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _check_latency_floor(latency: dict[str, dict[str, float]], floor_ms: float) -> None:
    """A p50 below the floor of one query's model work is an accounting error, as a QPS above its bound is."""
    for who, fig in latency.items():
        if fig.get("p50_ms") is not None and fig["p50_ms"] < floor_ms * 0.9999:
            raise BoundExceeded(
                f"bench serve: {who} reports a c=1 p50 of {fig['p50_ms']} ms, below the floor of one "
                f"query's model work ({floor_ms} ms): the benchmark measured the wrong window"
            )


@register_benchmark(
    "serve",
    doc="Search over HTTP on Ray Serve vs an in-process loop and a FastAPI+uvicorn server (QPS at c=1/8/32, "
    "p50/p99, where the time goes), batching on/off, autoscaling.",
)
def bench_serve(quick: bool, workdir: Path) -> BenchResult:
    import torch

    from raylens.index import VectorIndex
    from raylens.index.synthetic import clustered_vectors
    from raylens.models import create_model
    from raylens.runtime import init_ray
    from raylens.serve.ray_apps import (
        FAST_INGRESS_ENV,
        config_args,
        config_options,
        fast_ingress_enabled,
        load_config,
        start_http,
    )

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
    costs = _model_costs(model, index, queries)
    cores = os.cpu_count() or 1
    per_query_ms = costs[f"batch{BATCH}_ms_per_text"] + costs[f"search_batch{BATCH}_ms_per_query"]
    bound = Bound(
        round(cores * 1000 / per_query_ms, 1),
        f"{cores} cores / {per_query_ms:.3f} ms of model work per query (encode + search at batch {BATCH}, "
        "one torch thread, measured in this run)",
    )
    server = _FastAPIServer(workdir, ckpt)
    server.start()
    try:
        init_ray()
        port = start_http("127.0.0.1", logging_config=SERVE_LOGGING)
        config = load_config()  # services/raylens_services/search.yaml: its deployment settings and query encoder
        options = config_options(config)
        query_encoder = config_args(config).get("query_encoder", "index")
        scaler = "IndexServer" if query_encoder == "index" else "ClipEmbedder"  # the search path's scaling
        fixed = {  # one replica each while measuring the levels
            name: {
                **{k: v for k, v in o.items() if k != "autoscaling_config"},
                "num_replicas": 1,
                "autoscaling_config": None,  # the class's own autoscaling stays on unless switched off here
            }
            for name, o in options.items()
        }
        args = {"indices": {"bench": str(workdir / "index")}, "options": fixed, "query_encoder": query_encoder}
        t = time.perf_counter()
        url = _deploy(args, port)
        deploy_s = time.perf_counter() - t
        # Rounds: each system in turn, all up, so that every one meets the machine's other jobs alike.
        in_process_rounds, one_thread_rounds, fastapi_rounds, serve_rounds = [], [], [], []
        fastapi_wall = 0.0
        for _ in range(ROUNDS_QUICK if quick else ROUNDS):
            in_process_rounds.append(_in_process(model, index, queries, phase_s))
            with _one_thread():
                one_thread_rounds.append(_in_process(model, index, queries, phase_s))
            if not server.error:
                t = time.perf_counter()
                try:
                    fastapi_rounds.append(_levels(server.url, queries, phase_s))
                except Exception as exc:  # noqa: BLE001 - a rival that cannot finish is a result with its reason
                    server.error = f"{type(exc).__name__}: {exc}"
                fastapi_wall += time.perf_counter() - t
            serve_rounds.append(_levels(url, queries, phase_s))
    finally:
        server.stop()
    fastapi, fastapi_extra = _fastapi_result(server, fastapi_rounds, fastapi_wall)
    base = max(in_process_rounds, key=lambda r: r["qps"])
    base_one_thread = max(one_thread_rounds, key=lambda r: r["qps"])
    levels = _best(serve_rounds)
    floor_ms = min(costs["query_floor_ms"], *(r["min_ms"] for r in in_process_rounds + one_thread_rounds))
    breakdown = _breakdown(url, queries, floor_ms, n=150 if quick else 400, query_encoder=query_encoder)
    cpu_split = _cpu_split(url, queries, phase_s)
    on32 = levels[-1]
    url = _deploy({**args, "batch": {"max_batch_size": 1}}, port)
    off_rounds = [_load(f"{url}/search", queries, 32, phase_s) for _ in range(ROUNDS_QUICK if quick else ROUNDS)]
    off32 = max(off_rounds, key=lambda r: r["qps"])
    url = _deploy({**args, "options": options}, port)  # the config's autoscaling
    scaling = _autoscaling(
        url, queries, load_s=40.0 if quick else 60.0, idle_s=75.0 if quick else 90.0, deployment=scaler
    )
    from ray import serve

    serve.delete("raylens-bench")
    serve.shutdown()
    png = _save_timeline_png(scaling["timeline"], scaling["load_end_s"], scaler, workdir / "serve_autoscaling.png")
    if png and os.environ.get("RAYLENS_BENCH_PNG"):
        import shutil

        shutil.copy(png, os.environ["RAYLENS_BENCH_PNG"])

    c1 = levels[0]
    in_process = Rival(
        IN_PROCESS,
        base["qps"],
        base["seconds"],
        f"one query at a time (no concurrency): p50 {base['p50_ms']} ms p99 {base['p99_ms']} ms; "
        f"torch's default {threads} threads",
    )
    in_process_1t = Rival(
        IN_PROCESS_1T,
        base_one_thread["qps"],
        base_one_thread["seconds"],
        f"p50 {base_one_thread['p50_ms']} ms p99 {base_one_thread['p99_ms']} ms",
    )
    rivals = [in_process, in_process_1t, fastapi]
    strongest = max((r for r in rivals if r.value is not None), key=lambda r: r.value)
    latency = {
        "raylens": {"p50_ms": c1["p50_ms"], "p99_ms": c1["p99_ms"]},
        "fastapi_uvicorn": {k: fastapi_extra["levels"][0][k] for k in ("p50_ms", "p99_ms")} if fastapi.value else {},
        "in_process_loop": {"p50_ms": base["p50_ms"], "p99_ms": base["p99_ms"]},
        "in_process_loop_one_thread": {"p50_ms": base_one_thread["p50_ms"], "p99_ms": base_one_thread["p99_ms"]},
    }
    _check_latency_floor(latency, floor_ms)
    return BenchResult(
        name="serve",
        metric="search_qps_at_concurrency_32",
        value=on32["qps"],
        baseline_name=strongest.name,
        baseline_value=strongest.value,
        rivals=rivals,
        end_to_end=Window(
            round(on32["all_requests"] / on32["elapsed_s"], 1),
            on32["elapsed_s"],
            note="the concurrency-32 phase from its first request (cold connections and warm-up included)",
        ),
        steady_state=Window(
            on32["qps"],
            phase_s,
            share=round(on32["requests"] / on32["all_requests"], 3) if on32["all_requests"] else 0.0,
            note="the concurrency-32 phase after its warm-up",
        ),
        bound=bound,
        params={
            "index_vectors": n,
            "dim": model.spec.embed_dim,
            "index_factory": index.manifest.index_factory,
            "model": "clip-tiny (random init checkpoint; the demo's architecture)",
            "k": K,
            "levels": list(LEVELS),
            "phase_s": phase_s,
            "rounds": ROUNDS_QUICK if quick else ROUNDS,
            "figures": "each system's best round per level (most QPS), the same rule for every system; "
            "every round is in extra (*_rounds)",
            "all_up_while_measuring": "the FastAPI server and the Serve app stay up (idle) while the others run",
            "warmup_s": 2.0,
            "serve_logging": SERVE_LOGGING,
            "fastapi_logging": "uvicorn access_log=False, log_level=warning",
            "client": "aiohttp closed loop in the benchmark process, 127.0.0.1",
            "in_process_torch_threads": threads,
            "fastapi_torch_threads": "torch default",
            "replica_torch_threads": 1,
            "query_encoder": query_encoder,
            "replicas_for_levels": 1,
            "batch": {"max_batch_size": BATCH, "max_concurrent_batches": 2, "batch_wait_timeout_s": 0.0},
            "data_plane": "Serve's gRPC data plane between deployments (RAYLENS_SERVE_GRPC unset)",
            "http_front": _front(),
            "serve_controller_env": FAST_INGRESS_ENV if fast_ingress_enabled() else {},
            "autoscaled_deployment": scaler,
            "autoscaling_config": options[scaler].get("autoscaling_config"),
            "quick": quick,
        },
        extra={
            "goal_ratio_c32_vs_in_process": 2.0,
            "ratio_c32_vs_in_process": round(on32["qps"] / base["qps"], 3) if base["qps"] else None,
            "ratio_c32_vs_in_process_one_thread": (
                round(on32["qps"] / base_one_thread["qps"], 3) if base_one_thread["qps"] else None
            ),
            "goal_p50_c1_ms": 10.0,
            "levels": levels,
            "serve_rounds": serve_rounds,
            "fastapi_uvicorn": fastapi_extra,
            "in_process_rounds": in_process_rounds,
            "in_process_one_thread_rounds": one_thread_rounds,
            "in_process_loop": base,
            "in_process_loop_one_thread": base_one_thread,
            "latency_c1": {
                **latency,
                "floor_ms": floor_ms,
                "basis": "the fastest single query's encode + search in process (one torch thread or the default)",
            },
            "latency_breakdown_c1": breakdown,
            "cpu_split_c32": cpu_split,
            "model_costs_one_thread": costs,
            "batching": {
                "on_c32": on32,
                "off_c32": off32,
                "ratio_on_off": round(on32["qps"] / off32["qps"], 3) if off32["qps"] else None,
                "goal": 1.5,
            },
            "autoscaling": scaling,
            "serve_deploy_s": round(deploy_s, 1),
            "index_build_s": round(build_s, 1),
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
        },
    )
