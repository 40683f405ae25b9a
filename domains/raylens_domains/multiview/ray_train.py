"""NeRF on Ray Train: a capture read with Ray Data, rays streamed to data-parallel workers.

:func:`fit_nerf` reads the capture (:func:`~.ray_reader.read_capture`), turns the training split
into a shuffled Ray dataset of rays (:func:`~.ray_rays.rays_dataset`; small captures are
materialised once so epochs do not decode the images again), hands the held-out frames whole to
rank 0 for PSNR/SSIM, and runs :func:`~.train.train_nerf` on every worker through the one Ray Train
wrapper (:func:`raylens.train.ray_fit.fit`): each worker takes its shard's batches of rays, and the
gradients are averaged across workers every step. Re-running with the same run name and storage
resumes from the latest checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import ray

from raylens.train.options import RayTrainOptions
from raylens.train.ray_fit import RayContext, fit
from raylens.train.result import TrainResult
from raylens_domains.multiview.train import (
    NerfDataOptions,
    NerfTrainConfig,
    eval_views_from_frames,
    scene_record,
    train_nerf,
)

__all__ = ["fit_nerf", "progress_line"]


def progress_line(m: dict[str, Any], max_steps: int | None = None, budget_s: float | None = None) -> str:
    """One line of training progress: step, time, loss, train PSNR, rays/s, held-out PSNR/SSIM when scored.

    >>> progress_line({"step": 10, "time_s": 4.0, "loss": 0.01, "psnr_train": 20.0, "rays_per_s": 5000.0}, 100)
    'step    10/100       4s  loss 0.01000  train PSNR 20.00      5000 rays/s'
    """
    steps = f"{m['step']:>5}" + (f"/{max_steps}" if max_steps else "")
    clock = f"{m.get('time_s', 0.0):5.0f}s" + (f"/{budget_s:.0f}s" if budget_s else "")
    parts = [
        f"step {steps}",
        f"{clock:>6}",
        f"loss {m['loss']:.5f}",
        f"train PSNR {m.get('psnr_train', float('nan')):5.2f}",
        f"{m.get('rays_per_s', 0.0):8.0f} rays/s",
    ]
    if "occupied" in m:
        parts.append(f"occupied {100 * m['occupied']:4.1f}%")
    if "val_psnr" in m:
        parts.append(f"held-out PSNR {m['val_psnr']:.2f} dB  SSIM {m['val_ssim']:.3f}")
    return "  ".join(parts)


def _loop(config: dict[str, Any], ctx: RayContext) -> None:
    """What every Ray Train worker runs."""
    cfg = NerfTrainConfig.from_dict(config["train"])
    batches = ctx.epoch_batches(
        "train", batch_size=cfg.batch_rays, seed=cfg.seed, drop_last=True, shuffle_buffer=config["shuffle_buffer"]
    )
    views = None
    if ctx.rank == 0 and config["has_eval"]:
        rows = ctx.read_all("eval", max_rows=cfg.eval_views or 10_000)
        if rows is not None:
            n = len(rows["c2w"])
            views = eval_views_from_frames({k: v[i] for k, v in rows.items()} for i in range(n))

    def progress(m: dict[str, Any]) -> None:
        budget = cfg.time_budget_s or None
        print(progress_line(m, None if budget else cfg.max_steps, budget), flush=True)

    train_nerf(cfg, ctx, batches, views, scene=config["scene"], on_step=progress if config["progress"] else None)


def fit_nerf(
    data: str | Path,
    cfg: NerfTrainConfig | None = None,
    opts: RayTrainOptions | None = None,
    data_opts: NerfDataOptions | None = None,
    *,
    progress: bool = True,
) -> TrainResult:
    """Train a NeRF on the capture at ``data`` (nerfstudio, Blender or COLMAP) with Ray Train.

    Returns the final checkpoint: ``load_model(result.checkpoint)`` gives the trained NeRF, and its
    ``config.json`` holds the capture's scene transform, box and background (``scene``).

    Raises:
        FileNotFoundError, ValueError: no capture at ``data``, or no training frame in it (the
            reader's message says which and how to fix it).
    """
    from raylens_domains.multiview.ray_rays import rays_dataset
    from raylens_domains.multiview.ray_reader import read_capture

    cfg = cfg or NerfTrainConfig()
    opts = opts or RayTrainOptions()
    data_opts = data_opts or NerfDataOptions()
    from raylens_domains.multiview.frames import Frame
    from raylens_domains.multiview.readers import plan_capture

    plan = plan_capture(data, downscale=data_opts.downscale, normalize=data_opts.normalize, split="train")
    read = read_capture(data, downscale=data_opts.downscale, normalize=data_opts.normalize, split="train")
    info = read.capture
    first = list(read.dataset.limit(1).iter_rows())  # not take(): Ray Data logs a tip about it at INFO
    if not first:
        raise ValueError(f"{data}: every training frame was skipped ({read.report().summary()})")
    camera = Frame.from_row(first[0]).intrinsics
    rays = rays_dataset(read, split="train", shuffle="block", seed=cfg.seed, frames_per_task=data_opts.frames_per_task)
    if camera.width * camera.height * info.counts["train"] <= data_opts.cache_max_rays:
        rays = rays.materialize()
    datasets: dict[str, ray.data.Dataset] = {"train": rays}
    has_eval = bool(info.counts.get(data_opts.eval_split))
    if has_eval:
        held_out = read_capture(
            data, downscale=data_opts.downscale, normalize=data_opts.normalize, split=data_opts.eval_split
        )
        datasets["eval"] = held_out.dataset
    scene = scene_record(info, np.stack([spec.c2w for spec in plan.specs]), camera, source=str(data))
    config = {
        "train": cfg.to_dict(),
        "scene": scene,
        "has_eval": has_eval,
        "shuffle_buffer": data_opts.shuffle_buffer,
        "progress": progress,
        "data": asdict(data_opts),
    }
    return fit(_loop, config, datasets, opts, split=("train",))
