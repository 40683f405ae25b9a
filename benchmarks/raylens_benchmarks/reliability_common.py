"""Pieces the reliability benchmarks share: the machine's load, Serve replica processes, HTTP load.

Not a benchmark itself (it registers nothing).
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "load_average",
    "alive_actors",
    "actor_pids",
    "rss_bytes",
    "Outcome",
    "closed_loop",
    "constant_rate",
    "summarize",
    "timeline",
    "search_service",
]


def timeline(outcomes: list[Outcome], bucket_s: float = 1.0) -> list[dict[str, Any]]:
    """Per ``bucket_s`` of send time: requests, failures and p99 latency (ms)."""
    buckets: dict[int, list[Outcome]] = {}
    for o in outcomes:
        buckets.setdefault(int(o.t // bucket_s), []).append(o)
    return [
        {
            "t_s": round(k * bucket_s, 1),
            "requests": len(v),
            "failed": sum(o.status != 200 for o in v),
            "p99_ms": round(float(np.percentile([o.latency_s for o in v], 99)) * 1000, 1),
        }
        for k, v in sorted(buckets.items())
    ]


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (other jobs share the machine: recorded with each figure)."""
    return [round(v, 2) for v in os.getloadavg()]


def alive_actors() -> list[Any]:
    """The live actors of the Ray this process is connected to (named by its address: other Rays may
    run on the same machine)."""
    import ray
    from ray.util.state import list_actors

    return list_actors(
        address=ray.get_runtime_context().gcs_address,
        filters=[("state", "=", "ALIVE")],
        detail=True,
        limit=10_000,
        raise_on_missing_output=False,
    )


def actor_pids(class_contains: str) -> dict[str, int]:
    """``{actor id: pid}`` of the live actors whose class name contains ``class_contains`` (Serve
    names its replica actors ``ServeReplica:<app>:<deployment>``), from Ray's state API."""
    actors = alive_actors()
    return {a.actor_id: int(a.pid) for a in actors if class_contains in (a.class_name or "") and a.pid}


def rss_bytes(pid: int) -> int | None:
    """Resident memory of a process on this machine (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass
class Outcome:
    """One HTTP request: when it was sent (seconds since the load started), how long it took, status."""

    t: float
    latency_s: float
    status: int


async def _send(session, url: str, body: dict[str, Any], headers: dict[str, str], t0: float, out: list[Outcome]):
    import aiohttp

    start = time.perf_counter()
    try:
        async with session.post(url, json=body, headers=headers) as resp:
            await resp.read()
            status = resp.status
    except (TimeoutError, aiohttp.ClientError):
        status = 0  # no answer at all: a connection error or the client's timeout
    out.append(Outcome(start - t0, time.perf_counter() - start, status))


async def _closed_loop(url, bodies, headers, concurrency: int, seconds: float, events) -> list[Outcome]:
    import aiohttp

    out: list[Outcome] = []
    t0 = time.perf_counter()
    counter = iter(range(10**12))

    async def worker(session) -> None:
        while time.perf_counter() - t0 < seconds:
            await _send(session, url, bodies[next(counter) % len(bodies)], headers, t0, out)

    async def timed(at_s: float, fn) -> None:
        await asyncio.sleep(max(0.0, at_s - (time.perf_counter() - t0)))
        await asyncio.to_thread(fn)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)), *(timed(a, f) for a, f in events))
    return out


def closed_loop(
    url: str,
    bodies: list[dict[str, Any]],
    headers: dict[str, str],
    concurrency: int,
    seconds: float,
    events: list[tuple[float, Any]] = (),
) -> list[Outcome]:
    """``concurrency`` clients, each sending its next request as soon as the last one answered, for
    ``seconds``; each ``(at_s, fn)`` of ``events`` runs ``fn()`` (in a thread) ``at_s`` into the run."""
    return asyncio.run(_closed_loop(url, bodies, headers, concurrency, seconds, list(events)))


async def _constant_rate(url, bodies, headers, rate: float, seconds: float, max_in_flight: int, tick) -> list[Outcome]:
    import aiohttp

    out: list[Outcome] = []
    t0 = time.perf_counter()
    gate = asyncio.Semaphore(max_in_flight)
    tasks: set[asyncio.Task] = set()

    async def one(body) -> None:
        try:
            await _send(session, url, body, headers, t0, out)
        finally:
            gate.release()

    async def ticker() -> None:
        while time.perf_counter() - t0 < seconds:
            await asyncio.to_thread(tick, time.perf_counter() - t0)
            await asyncio.sleep(1.0)

    connector = aiohttp.TCPConnector(limit=max_in_flight)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        tick_task = asyncio.create_task(ticker()) if tick else None
        i = 0
        while (now := time.perf_counter() - t0) < seconds:
            due = i / rate
            if due > now:
                await asyncio.sleep(due - now)
            await gate.acquire()  # past max_in_flight the client waits (and the rate dips: recorded)
            task = asyncio.create_task(one(bodies[i % len(bodies)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        await asyncio.gather(*tasks)
        if tick_task:
            await tick_task
    return out


def constant_rate(
    url: str,
    bodies: list[dict[str, Any]],
    headers: dict[str, str],
    rate: float,
    seconds: float,
    *,
    max_in_flight: int = 64,
    tick=None,
) -> list[Outcome]:
    """An open loop: a request every ``1/rate`` s for ``seconds`` whatever the answers; ``tick(t)``
    runs about once a second in a thread (sampling memory, say)."""
    return asyncio.run(_constant_rate(url, bodies, headers, rate, seconds, max_in_flight, tick))


def summarize(
    outcomes: list[Outcome], t_from: float = 0.0, t_to: float = float("inf"), *, in_flight: bool = False
) -> dict[str, Any]:
    """Requests sent in ``[t_from, t_to)`` (with ``in_flight``, also those sent earlier and still
    unanswered at ``t_from``: a kill's window holds the requests the killed replica had): count,
    failures by status, p50/p99/max latency."""
    sel = [o for o in outcomes if o.t < t_to and (o.t >= t_from or (in_flight and o.t + o.latency_s >= t_from))]
    lat = np.asarray([o.latency_s for o in sel]) if sel else np.zeros(0)
    failed: dict[str, int] = {}
    for o in sel:
        if o.status != 200:
            failed[str(o.status)] = failed.get(str(o.status), 0) + 1
    return {
        "window_s": [round(t_from, 2), None if t_to == float("inf") else round(t_to, 2)],
        "requests": len(sel),
        "failed": sum(failed.values()),
        "failed_by_status": failed,
        "p50_ms": round(float(np.percentile(lat, 50)) * 1000, 1) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)) * 1000, 1) if len(lat) else None,
        "max_ms": round(float(lat.max()) * 1000, 1) if len(lat) else None,
    }


QUERIES = [
    f"a {s} {c} {sh}"
    for s in ("small", "large")
    for c in ("red", "green", "blue", "yellow", "purple", "orange")
    for sh in ("circle", "square", "triangle", "star", "cross")
]


def search_service(
    workdir: Path,
    *,
    app: str,
    port: int,
    n_vectors: int,
    replicas: dict[str, int],
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Deploy the search service (a random-init ``clip-tiny`` checkpoint, an index of ``n_vectors``
    clustered vectors) on a running Ray with Serve's HTTP on 127.0.0.1:``port`` (started with
    :func:`raylens.serve.ray_apps.start_http`); ``replicas``: a fixed count per
    deployment; ``env``: environment of every replica. Returns ``{url, headers, bodies, port}``."""
    from raylens.index import VectorIndex
    from raylens.index.synthetic import clustered_vectors
    from raylens.models import create_model
    from raylens.serve.ray_apps import config_args, config_options, load_config, run_app, wait_ready

    ckpt = workdir / "clip-tiny"
    if not (workdir / "index").exists():
        create_model("clip-tiny").save(ckpt)
        model = create_model("clip-tiny", pretrained=str(ckpt))
        x, labels = clustered_vectors(n_vectors, dim=model.spec.embed_dim, seed=0)
        VectorIndex.build(
            x,
            {"caption": [f"item {i}" for i in range(n_vectors)], "label": labels},
            model="clip-tiny",
            checkpoint_hash=model.checkpoint_hash,
            checkpoint=str(ckpt),
        ).save(workdir / "index")
    config = load_config()
    options = config_options(config)
    fixed = {}
    for name in ("SearchIngress", "ClipEmbedder", "IndexServer"):
        o = {k: v for k, v in options[name].items() if k != "autoscaling_config"}
        o["num_replicas"] = int(replicas.get(name, 1))
        o["autoscaling_config"] = None  # a fixed count: the class's own autoscaling_config would otherwise stay on
        if env:
            actor = dict(o.get("ray_actor_options") or {})
            actor["runtime_env"] = {"env_vars": dict(env)}
            o["ray_actor_options"] = actor
        fixed[name] = o
    key = "reliability-key-0123456789"
    args = {
        "indices": {"bench": str(workdir / "index")},
        "options": fixed,
        "api_key": key,
        "query_encoder": config_args(config).get("query_encoder", "index"),
    }
    logging_config = {"encoding": "JSON", "log_level": "WARNING", "enable_access_log": False}
    run_app(args=args, name=app, logging_config=logging_config)
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/healthz", timeout_s=300)
    return {
        "url": url,
        "port": port,
        "headers": {"x-api-key": key},
        "bodies": [{"text": q, "k": 10} for q in QUERIES],
        "options": fixed,
    }
