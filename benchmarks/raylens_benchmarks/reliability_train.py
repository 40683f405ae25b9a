"""``raylens bench reliability-train-kill``: a Ray Train worker killed mid-run resumes from the latest
checkpoint, and its final metrics match a clean run of the same config.

CLIP (``clip-tiny``) on scikit-learn's digits through ``fit_clip`` with 2 Ray Train workers and
``max_failures=1``; zero-shot and retrieval metrics on the 180 held-out digits at the end. The
killed run (seed 0): once Ray Train has registered a checkpoint at or past a third of the steps,
one ``RayTrainWorker`` actor's process gets SIGKILL (its pid from Ray's state API); Ray Train
restarts the worker group, which resumes from that checkpoint. The clean runs: the same config,
nothing killed, with seed 0 (the killed run's: a clean run is deterministic, so it is the exact
reference) and seeds 1 and 2 (the run-to-run noise a user sees). Figures: the final metrics of every
run, the killed run's difference from the same-seed clean run and whether it lies within the clean
runs' range, and evidence that it resumed (history steps never repeat; the first step after the
kill continues the learning-rate schedule, not a new warm-up). ``--quick``: 60 steps, the seed-0
clean run only.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from raylens.bench import BenchResult, register_benchmark
from raylens_benchmarks.reliability_common import actor_pids, load_average

METRICS = ("zeroshot_top1", "i2t_R@1", "t2i_R@1", "loss")


def _registered_step(run_dir: Path) -> int | None:
    """The step of the latest checkpoint Ray Train has registered for the run (the one a restarted
    worker group resumes from), from its ``checkpoint_manager_snapshot.json``; None before the first.
    A checkpoint folder on disk is not enough: it is registered only once its report completes."""
    try:
        snap = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
        return int(snap["latest_checkpoint_result"]["metrics"]["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not written yet, or being written


def _config(steps: int, every: int, seed: int = 0):
    from raylens.data.digits import DIGIT_CLASSES, ZEROSHOT_TEMPLATE
    from raylens.train import ClipTrainConfig

    return ClipTrainConfig(
        max_steps=steps,
        batch_size=32,
        warmup_steps=10,
        log_every=5,
        checkpoint_every=every,
        lr=3e-3,
        zeroshot_classes=DIGIT_CLASSES,
        zeroshot_templates=[ZEROSHOT_TEMPLATE],
        seed=seed,
    )


def _run(
    storage: Path, name: str, steps: int, every: int, kill_after_step: int | None, seed: int = 0
) -> dict[str, Any]:
    from raylens.data.ray_digits import read_digits
    from raylens.models import create_model
    from raylens.train.ray_clip import RayTrainOptions, fit_clip

    pre = create_model("clip-tiny").preprocess
    kill: dict[str, Any] = {}
    stop = threading.Event()
    t0 = time.perf_counter()

    def killer() -> None:
        run_dir = storage / name
        while not stop.is_set():
            step = _registered_step(run_dir)
            if step is not None and step >= kill_after_step:
                workers = actor_pids("RayTrainWorker")
                if len(workers) >= 2:
                    actor, pid = sorted(workers.items())[-1]
                    os.kill(pid, signal.SIGKILL)
                    kill.update(
                        at_s=round(time.perf_counter() - t0, 1),
                        pid=pid,
                        latest_checkpoint_step=step,
                        workers_alive=len(workers),
                    )
                    return
            stop.wait(0.2)

    thread = threading.Thread(target=killer, daemon=True) if kill_after_step is not None else None
    if thread:
        thread.start()
    try:
        result = fit_clip(
            read_digits(pre, "train").dataset,
            _config(steps, every, seed),
            RayTrainOptions(num_workers=2, storage_path=str(storage), name=name, max_failures=1, num_to_keep=2),
            eval_ds=read_digits(pre, "heldout").dataset,
        )
    finally:
        stop.set()
        if thread:
            thread.join()
    last = result.history[-1]
    history_steps = [h["step"] for h in result.history]
    out: dict[str, Any] = {
        "name": name,
        "seed": seed,
        "steps": result.steps,
        "seconds": round(time.perf_counter() - t0, 1),
        "final": {m: last.get(m) for m in METRICS},
        "history_steps_unique_and_sorted": history_steps == sorted(set(history_steps)),
    }
    if kill_after_step is not None:
        out["kill"] = kill or None
        if kill:
            c = kill["latest_checkpoint_step"]
            before = [h for h in result.history if h["step"] <= c]
            after = [h for h in result.history if h["step"] > c]
            out["resume"] = {
                "from_step": c,
                "lr_before": before[-1]["lr"] if before else None,
                "lr_after": after[0]["lr"] if after else None,
                "first_step_after": after[0]["step"] if after else None,
                "loss_at_start": result.history[0]["loss"],
                "loss_after": after[0]["loss"] if after else None,
                "schedule_continued": bool(before and after and after[0]["lr"] < before[-1]["lr"]),
            }
    return out


@register_benchmark(
    "reliability-train-kill",
    suite="reliability",
    doc="A Ray Train worker killed mid-run (SIGKILL, max_failures=1): resumes from the checkpoint; final "
    "metrics against clean runs of the same config.",
)
def bench_reliability_train_kill(quick: bool, workdir: Path) -> BenchResult:
    import ray

    from raylens.runtime import init_ray

    load_before = load_average()
    steps, every = (60, 10) if quick else (300, 25)
    init_ray()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    seeds = (0,) if quick else (0, 1, 2)
    clean = [_run(workdir / f"clean{s}", f"clean{s}", steps, every, None, seed=s) for s in seeds]
    killed = _run(workdir / "killed", "killed", steps, every, kill_after_step=steps // 3)
    diffs: dict[str, Any] = {}
    for m in METRICS:
        vals = [c["final"][m] for c in clean if c["final"][m] is not None]
        k = killed["final"][m]
        if not vals or k is None:
            continue
        mean = sum(vals) / len(vals)
        diffs[m] = {
            "clean": vals,
            "killed": k,
            "killed_minus_clean_mean": round(k - mean, 4),
            "killed_minus_same_seed_clean": round(k - vals[0], 4),
            "clean_spread_over_seeds": round(max(vals) - min(vals), 4) if len(vals) > 1 else None,
            "killed_within_clean_range": min(vals) <= k <= max(vals),
        }
    return BenchResult(
        name="reliability-train-kill",
        metric="final_zeroshot_top1_of_the_run_with_a_killed_worker",
        value=float(killed["final"]["zeroshot_top1"]),
        baseline_name="the same config and seed, nothing killed",
        baseline_value=float(clean[0]["final"]["zeroshot_top1"]),
        params={
            "model": "clip-tiny",
            "data": "scikit-learn digits (train / held-out split of raylens.data.digits)",
            "workers": 2,
            "max_failures": 1,
            "max_steps": steps,
            "checkpoint_every": every,
            "batch_size_per_worker": 32,
            "kill": f"SIGKILL to one RayTrainWorker process once Ray Train has registered a checkpoint at step >= {steps // 3}",
            "clean_runs": "seed 0 (the killed run's seed) and, without --quick, seeds 1 and 2 (run-to-run noise)",
            "seeds": list(seeds),
            "ray_nodes": nodes,
            "quick": quick,
        },
        extra={
            "goal": "resumes from the checkpoint; final metrics within the clean runs' noise",
            "clean": clean,
            "killed": killed,
            "metrics": diffs,
            "load_average_before": load_before,
            "load_average_after": load_average(),
        },
    )
