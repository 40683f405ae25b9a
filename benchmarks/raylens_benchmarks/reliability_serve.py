"""``raylens bench reliability-serve-kill`` and ``raylens bench reliability-soak``: the search service
under load while replicas die, and under a constant load for minutes.

**reliability-serve-kill** (the README's "a Serve replica killed under load (c=32)"): the search
service on 127.0.0.1 as ``services/raylens_services/search.yaml`` configures it (the index replicas
encode the queries themselves, ``query_encoder: index``), with 2 index replicas (a random-init
``clip-tiny`` checkpoint; an index of clustered vectors), 32 clients in a closed loop of
``POST /search`` (text, k=10) for 90 s. At 15 s one index replica's process is killed (SIGKILL), at
55 s one again (the first one's replacement, or the other). Each kill's recovery window holds the requests
in flight at the kill and those sent after it until the replacement replica is running (+2 s).
Figures: failed searches (any status but 200, or no answer) over the whole run and in each window
(``failed_in_windows`` sums the windows: when they overlap, a request in both counts twice), p50/p99
latency in the windows, and a per-second timeline. The same run is made twice: with the service's
retries (``RAYLENS_SERVE_RETRIES``, default 2: a call whose replica died is sent again to a live
one) and with them off (``RAYLENS_SERVE_RETRIES=0``, the service before the fix). Goal: 0 failed
searches, p99 < 2 s in the recovery windows. ``--quick``: the first kill only, with retries only,
24 s of load (the window ends with the load if the replacement is not running by then).

**reliability-soak**: the same service (1 replica each, the config's defaults otherwise) at a
constant request rate (an open loop: one request every 1/rate s, whatever the answers) for 10
minutes after a 1-minute warm-up; the resident memory of every replica process sampled every 5 s.
Figures: errors (goal 0) and memory growth of the replicas from the first to the last minute of
the measured window (goal < 10%). ``--quick``: 30 s warm-up, 60 s measured.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from raylens.bench import BenchResult, register_benchmark
from raylens_benchmarks.reliability_common import (
    actor_pids,
    alive_actors,
    closed_loop,
    constant_rate,
    load_average,
    rss_bytes,
    search_service,
    summarize,
    timeline,
)

APP = "raylens-reliability"
CONCURRENCY = 32
REPLICAS = {"SearchIngress": 1, "ClipEmbedder": 1, "IndexServer": 2}
KILLS = [(15.0, "IndexServer"), (55.0, "IndexServer")]
"""(seconds into the load, deployment): the replicas killed, all on the search path."""
RECOVERY_TAIL_S = 2.0


def _replica_class(deployment: str) -> str:
    return f"ServeReplica:{APP}:{deployment}"


class _Killer:
    """Kills one replica of a deployment and waits for Serve to bring a new one up."""

    def __init__(self, deployment: str, t0: list[float], timeout_s: float = 180.0):
        self.deployment = deployment
        self.t0 = t0
        self.timeout_s = timeout_s
        self.record: dict[str, Any] = {"deployment": deployment}

    def __call__(self) -> None:
        from raylens.serve.ray_apps import replica_counts

        before = actor_pids(_replica_class(self.deployment))
        if not before:
            self.record["error"] = f"no live replica of {self.deployment} found"
            return
        victim, pid = sorted(before.items())[0]
        target = len(before)
        os.kill(pid, signal.SIGKILL)
        killed = time.perf_counter()
        self.record.update(killed_at_s=round(killed - self.t0[0], 2), pid=pid, replicas=target)
        deadline = killed + self.timeout_s
        while time.perf_counter() < deadline:
            time.sleep(0.5)
            now = actor_pids(_replica_class(self.deployment))
            fresh = set(now) - set(before)
            if fresh and replica_counts(APP).get(self.deployment, 0) >= target:
                self.record["recovered_at_s"] = round(time.perf_counter() - self.t0[0], 2)
                self.record["replacement_s"] = round(time.perf_counter() - killed, 2)
                return
        self.record["recovered_at_s"] = None


def _kill_run(
    workdir: Path, port: int, retries: int, kills: list[tuple[float, str]], seconds: float, wait_recovery: bool = True
) -> dict[str, Any]:
    svc = search_service(
        workdir,
        app=APP,
        port=port,
        n_vectors=20_000,
        replicas=REPLICAS,
        env={"RAYLENS_SERVE_RETRIES": str(retries)},
    )
    # warm every replica (the first searches pay for lazy imports and the first FAISS call)
    closed_loop(f"{svc['url']}/search", svc["bodies"], svc["headers"], CONCURRENCY, 5.0)
    t0 = [time.perf_counter()]
    # without wait_recovery, a kill's window runs to the end of the load if the replacement is not up by then
    killers = [_Killer(dep, t0, 180.0 if wait_recovery else max(1.0, seconds - at)) for at, dep in kills]
    events = [(at, k) for (at, _), k in zip(kills, killers)]
    outcomes = closed_loop(f"{svc['url']}/search", svc["bodies"], svc["headers"], CONCURRENCY, seconds, events)
    windows = []
    for k in killers:
        r = dict(k.record)
        start = r.get("killed_at_s")
        end = r.get("recovered_at_s")
        if start is not None:
            stop = (end + RECOVERY_TAIL_S) if end is not None else float("inf")
            r["window"] = summarize(outcomes, start, stop, in_flight=True)
        windows.append(r)
    return {
        "retries": retries,
        "load_s": seconds,
        "kills": windows,
        "whole_run": summarize(outcomes),
        "timeline": timeline(outcomes),
        "failed_in_windows": sum(w.get("window", {}).get("failed", 0) for w in windows),
        "p99_ms_in_windows": max((w["window"]["p99_ms"] or 0) for w in windows if "window" in w)
        if any("window" in w for w in windows)
        else None,
    }


@register_benchmark(
    "reliability-serve-kill",
    suite="reliability",
    doc="Search at concurrency 32 while index replicas (which encode the queries) are killed: failed searches, p99 "
    "in the recovery windows, with the service's retries against without.",
)
def bench_reliability_serve_kill(quick: bool, workdir: Path) -> BenchResult:
    from ray import serve

    from raylens.runtime import init_ray
    from raylens.serve.ray_apps import start_http

    load_before = load_average()
    init_ray()
    port = start_http("127.0.0.1")
    if quick:
        kills, seconds = [(6.0, KILLS[0][1])], 24.0
    else:
        kills, seconds = KILLS, 90.0
    try:
        fixed = _kill_run(workdir, port, 2, kills, seconds, wait_recovery=not quick)
        before = None if quick else _kill_run(workdir, port, 0, kills, seconds)
    finally:
        serve.delete(APP)
        serve.shutdown()

    def ok_rate(run: dict[str, Any]) -> float:
        w = run["whole_run"]
        return round(1 - w["failed"] / w["requests"], 6) if w["requests"] else 0.0

    return BenchResult(
        name="reliability-serve-kill",
        metric="share_of_searches_answered_200_while_replicas_are_killed",
        value=ok_rate(fixed),
        baseline_name="the same run with the service's retries off (RAYLENS_SERVE_RETRIES=0: the service before the fix)"
        if before
        else "not run (--quick)",
        baseline_value=ok_rate(before) if before else float("nan"),
        params={
            "concurrency": CONCURRENCY,
            "replicas": REPLICAS,
            "kills": [{"at_s": at, "deployment": d, "signal": "SIGKILL"} for at, d in kills],
            "load_s": seconds,
            "recovery_window": f"requests in flight at the kill or sent after it, until the replacement replica runs + {RECOVERY_TAIL_S} s",
            "index_vectors": 20_000,
            "model": "clip-tiny (random init)",
            "client": "aiohttp closed loop in the benchmark process, 127.0.0.1",
            "quick": quick,
        },
        extra={
            "goal": {"failed_searches": 0, "p99_ms_in_recovery_windows": 2000},
            "with_retries": fixed,
            "without_retries": before,
            "load_average_before": load_before,
            "load_average_after": load_average(),
        },
    )


@register_benchmark(
    "reliability-soak",
    suite="reliability",
    doc="The search service at a constant request rate for 10 minutes: errors and memory growth of the replicas.",
)
def bench_reliability_soak(quick: bool, workdir: Path) -> BenchResult:
    load_before = load_average()
    warmup_s, measure_s = (30.0, 60.0) if quick else (60.0, 600.0)
    rate = 20.0
    soak = run_soak(workdir, warmup_s=warmup_s, measure_s=measure_s, rate=rate)
    return BenchResult(
        name="reliability-soak",
        metric="memory_growth_of_the_replicas_first_to_last_minute",
        value=soak["memory_growth"] if soak["memory_growth"] is not None else float("nan"),
        baseline_name="goal: less than 10% growth",
        baseline_value=0.10,
        higher_is_better=False,
        params={
            "rate_per_s": rate,
            "warmup_s": warmup_s,
            "measured_s": measure_s,
            "replicas": {"SearchIngress": 1, "ClipEmbedder": 1, "IndexServer": 1},
            "rss_sample_every_s": 5,
            "growth": "mean RSS of all replicas over the last minute / over the first minute of the measured window - 1",
            "index_vectors": 20_000,
            "model": "clip-tiny (random init)",
            "client": "aiohttp open loop (constant rate, at most 64 in flight) in the benchmark process, 127.0.0.1",
            "quick": quick,
        },
        extra={
            "goal": {"errors": 0, "memory_growth": 0.10},
            **soak,
            "load_average_before": load_before,
            "load_average_after": load_average(),
        },
    )


def run_soak(
    workdir: Path, *, warmup_s: float, measure_s: float, rate: float, window_s: float = 60.0
) -> dict[str, Any]:
    """The search service (1 replica each) at ``rate`` requests/s for ``warmup_s + measure_s``; the RSS
    of every replica process every 5 s. Growth compares the mean over the first and the last
    ``window_s`` of the measured part."""
    from ray import serve

    from raylens.runtime import init_ray
    from raylens.serve.ray_apps import start_http

    init_ray()
    port = start_http("127.0.0.1")
    samples: list[dict[str, Any]] = []
    try:
        svc = search_service(
            workdir, app=APP, port=port, n_vectors=20_000, replicas={"SearchIngress": 1, "ClipEmbedder": 1}
        )
        names = {}
        pids = {}
        for a in alive_actors():
            if (a.class_name or "").startswith(f"ServeReplica:{APP}:") and a.pid:
                pids[a.actor_id] = int(a.pid)
                names[a.actor_id] = a.class_name.rsplit(":", 1)[-1]
        next_sample = [0.0]

        def tick(t: float) -> None:
            if t < next_sample[0]:
                return
            next_sample[0] = t + 5.0
            row: dict[str, Any] = {"t_s": round(t, 1)}
            for aid, pid in pids.items():
                rss = rss_bytes(pid)
                row[names[aid]] = None if rss is None else round(rss / 2**20, 1)
            samples.append(row)

        outcomes = constant_rate(
            f"{svc['url']}/search", svc["bodies"], svc["headers"], rate, warmup_s + measure_s, tick=tick
        )
        alive_after = actor_pids(f"ServeReplica:{APP}:")
    finally:
        serve.delete(APP)
        serve.shutdown()

    measured = [s for s in samples if s["t_s"] >= warmup_s]
    deployments = sorted(set(names.values()))
    window = min(window_s, measure_s / 3)
    first = [s for s in measured if s["t_s"] < warmup_s + window]
    last = [s for s in measured if s["t_s"] >= warmup_s + measure_s - window]

    def mean(rows: list[dict[str, Any]], name: str) -> float | None:
        vals = [r[name] for r in rows if r.get(name) is not None]
        return sum(vals) / len(vals) if vals else None

    memory = {}
    for name in deployments:
        a, b = mean(first, name), mean(last, name)
        memory[name] = {
            "first_window_mib": round(a, 1) if a else None,
            "last_window_mib": round(b, 1) if b else None,
            "growth": round(b / a - 1, 4) if a and b else None,
        }
    total_a = sum(m["first_window_mib"] or 0 for m in memory.values())
    total_b = sum(m["last_window_mib"] or 0 for m in memory.values())
    run = summarize(outcomes, warmup_s)
    return {
        "errors": run["failed"],
        "measured": run,
        "warmup": summarize(outcomes, 0.0, warmup_s),
        "achieved_rate_per_s": round(run["requests"] / measure_s, 2),
        "window_s": window,
        "memory": memory,
        "memory_growth": round(total_b / total_a - 1, 4) if total_a else None,
        "replicas_sampled": len(pids),
        "replicas_restarted": sorted(set(pids) - set(alive_after)),
        "rss_timeline_mib": samples,
    }
