"""``raylens bench nerf-scaling``: ``nerf-fast`` on Ray Train with 2 workers against 1, same budget.

Both runs train the procedural scene (100x100 pixels, 60 training and 10 held-out views; ``--quick``:
48x48, 24 and 4) through :func:`~raylens_domains.multiview.ray_train.fit_nerf`, the path ``raylens
train nerf`` takes: Ray Data rays, DDP over gloo, the same recipe and time budget. Each worker takes
4,096 rays per step, so 2 workers see twice the rays per step; the learning-rate decay follows the
budget in both. The metric is training samples/s (a ray's cost falls as empty space is cleared, so
samples, not rays, are the unit of work): steady state is the median over the second half of the
run, end to end is every sample trained over the whole job (Ray Train's start, the Ray Data shards
and the held-out scoring included). Rivals, on the same scene, step and budget: 1 Ray Train worker
with all the cores' threads, and the plain in-process loop (no Ray, torch's default threads) a user
would run instead. Also reported: rays/s, the held-out PSNR at the end, and steps.

The physical bound is the machine's cores times one core's rate: samples per second of the same
training step on one thread in this process (no Ray), measured before the two runs. Samples, not
rays, because a ray's cost falls as empty space is cleared. Both workers share the same cores as the
one worker's two threads, so on a 2-core machine the figure measures the cost of data parallelism
(an all-reduce per step, Ray Data feeding two shards) against torch's own threading. Ray is given
one logical CPU more than the cores, for Ray Data's tasks while the workers hold the cores.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from raylens.bench import BenchResult, Bound, Rival, Window, register_benchmark
from raylens_benchmarks.nerf import late_median, samples_trained, train_for

__all__ = ["bench_nerf_scaling", "BATCH_RAYS"]

BATCH_RAYS = 4096
"""Rays per worker per step, in every run."""


def _in_process(capture: Path, seconds: float, workdir: Path, threads: int | None = None) -> dict[str, Any]:
    """The fast model's training step in this process (no Ray) for ``seconds``: its figures, with
    ``cpu_share`` the share of ``threads`` cores the process got (other load lowers it)."""
    import torch

    from raylens_domains.multiview.rays import frames_to_rays
    from raylens_domains.multiview.readers import read_frames
    from raylens_domains.multiview.train import scene_record

    train = read_frames(capture, split="train")
    scene = scene_record(train.info, np.stack([f.c2w for f in train.frames]), train.frames[0].intrinsics, str(capture))
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        rays = frames_to_rays(train.frames)
        wall, cpu = time.perf_counter(), time.process_time()
        r = train_for(
            "nerf-fast", rays, [], scene, seconds=seconds, eval_every_s=0, batch_rays=BATCH_RAYS, workdir=workdir
        )
        r["wall_s"] = time.perf_counter() - wall
        r["cpu_share"] = (time.process_time() - cpu) / r["wall_s"] / torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    r["samples_per_s"] = r["rays_per_s"] * r["samples_per_ray"]
    return r


@register_benchmark("nerf-scaling", doc="nerf-fast on Ray Train: 2 workers vs 1 on the same budget (rays/s, PSNR).")
def bench_nerf_scaling(quick: bool = False, workdir: Path | None = None) -> BenchResult:
    import tempfile

    from raylens.runtime import init_ray
    from raylens.train.options import RayTrainOptions
    from raylens_domains.multiview.ray_train import fit_nerf
    from raylens_domains.multiview.scene import generate_scene
    from raylens_domains.multiview.train import NerfTrainConfig

    workdir = Path(workdir or tempfile.mkdtemp(prefix="raylens-bench-nerf-scaling-"))
    size, n_train, n_test, budget = (48, 24, 4, 20.0) if quick else (100, 60, 10, 120.0)
    cores = os.cpu_count() or 1
    load_before = os.getloadavg()
    capture = generate_scene(workdir / "scene", n_train=n_train, n_val=0, n_test=n_test, size=size, seed=0).root
    single = _in_process(capture, min(budget / 4, 30.0), workdir / "single", threads=1)
    # samples per CPU-second of one thread: the wall-clock rate over the share of a core it got
    one_core = single["samples_per_s"] / min(1.0, max(single["cpu_share"], 1e-3))
    bound = cores * one_core
    loop = _in_process(capture, budget / 2, workdir / "loop")  # the user's plain loop, torch's threads

    # one logical CPU more than the cores, for Ray Data's tasks (the held-out views are read while the
    # workers hold every core): the workers' torch threads then add up to the cores in both runs
    import torch

    torch_threads = torch.get_num_threads()
    init_ray(num_cpus=cores + 1)
    runs: dict[int, dict[str, Any]] = {}
    for workers in (1, 2):
        cfg = NerfTrainConfig(
            max_steps=10_000_000, time_budget_s=budget, eval_every=0, log_every=10, seed=0, batch_rays=BATCH_RAYS
        )
        opts = RayTrainOptions(
            num_workers=workers,
            cpus_per_worker=cores / workers,
            storage_path=str((workdir / "runs").resolve()),
            name=f"scaling-{workers}w-{int(time.time())}",
        )
        t0 = time.perf_counter()
        result = fit_nerf(capture, cfg, opts, progress=False)
        job_s = time.perf_counter() - t0
        hist = result.history
        rays_per_s = late_median(hist, "rays_per_s")
        samples_per_s = rays_per_s * late_median(hist, "samples_per_ray")
        runs[workers] = {
            "rays_per_s": round(rays_per_s),
            "samples_per_s": round(samples_per_s),
            "end_to_end_samples_per_s": round(samples_trained(hist, BATCH_RAYS * workers) / job_s),
            "share_of_core_bound": round(samples_per_s / bound, 3),
            "final_psnr": round(float(hist[-1].get("val_psnr", float("nan"))), 2),
            "final_ssim": round(float(hist[-1].get("val_ssim", float("nan"))), 3),
            "steps": result.steps,
            "train_s": round(float(hist[-1]["time_s"]), 1),
            "job_s": round(job_s, 1),
        }
    two, one = runs[2], runs[1]
    loop_s = float(loop["time_s"])
    rivals = [
        Rival(
            "1 Ray Train worker (all cores' threads)",
            one["samples_per_s"],
            one["job_s"],
            f"end to end {one['end_to_end_samples_per_s']:,} samples/s; {one['rays_per_s']:,} rays/s",
        ),
        Rival(
            f"in-process loop, no Ray (torch's {torch_threads} threads, {loop_s:.0f} s)",
            round(loop["samples_per_s"]),
            round(loop["wall_s"], 1),
            f"{round(loop['rays_per_s']):,} rays/s",
        ),
    ]
    return BenchResult(
        name="nerf-scaling",
        metric="training samples/s, nerf-fast on 2 Ray Train workers",
        value=two["samples_per_s"],
        baseline_name=rivals[0].name,
        baseline_value=one["samples_per_s"],
        rivals=rivals,
        end_to_end=Window(
            two["end_to_end_samples_per_s"],
            two["job_s"],
            1.0,
            "every sample trained over the whole fit_nerf call: Ray Train's start, the Ray Data shards and "
            "the held-out scoring included",
        ),
        steady_state=Window(
            two["samples_per_s"],
            round(two["train_s"] / 2, 1),
            0.5,
            "median rate of the log windows in the second half of the training time",
        ),
        bound=Bound(
            round(bound),
            f"{cores} cores x one thread's {one_core:,.0f} samples per CPU-second of the same step, no Ray "
            "(measured in this run)",
        ),
        params={
            "scene": f"procedural, {size}x{size}, {n_train} train / {n_test} held-out views",
            "budget_s": budget,
            "batch_rays_per_worker": BATCH_RAYS,
            "cpus_per_worker": {"1": cores, "2": cores / 2},
            "quick": quick,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        extra={
            "runs": {f"{w}_workers": r for w, r in runs.items()},
            "psnr_delta_db": round(two["final_psnr"] - one["final_psnr"], 2),
            "rays_per_s": {
                "2_workers": two["rays_per_s"],
                "1_worker": one["rays_per_s"],
                "loop": round(loop["rays_per_s"]),
            },
            "bound": {
                "one_thread_samples_per_s": round(one_core),
                "cores": cores,
                "samples_per_s": round(bound),
            },
        },
    )
