"""CLIP on Ray Train: :func:`fit_clip` is the CLIP loop (:func:`~raylens.train.clip_loop.train_clip`)
run by the one Ray Train wrapper (:func:`raylens.train.ray_fit.fit`).

``RayContext`` and ``RayTrainOptions`` are re-exported here for the code that imports them from this
module; they live in :mod:`raylens.train.ray_fit` and :mod:`raylens.train.options`.
"""

from __future__ import annotations

from typing import Any

import ray

from raylens.train.clip_loop import TrainResult, train_clip
from raylens.train.config import ClipTrainConfig
from raylens.train.options import RayTrainOptions
from raylens.train.ray_fit import RayContext, fit, worker_cache_bytes

__all__ = ["RayContext", "RayTrainOptions", "fit_clip", "clip_worker_loop", "CLIP_SHUFFLE_BUFFER"]

CLIP_SHUFFLE_BUFFER = 512
"""Rows in each worker's local shuffle buffer unless ``RayTrainOptions.shuffle_buffer`` says otherwise."""


def _evaluator(cfg: ClipTrainConfig, ctx: RayContext):
    """Rank 0's evaluator: reads the (unsplit) ``eval`` dataset once, at the first evaluation."""
    from raylens.train.evaluate import EvalData, evaluate_clip

    cache: list[EvalData] = []

    def evaluate(model) -> dict[str, Any]:
        if not cache:
            rows = ctx.read_all("eval", columns=("image", "caption", "label"))
            if rows is None:
                raise ValueError("the eval dataset is empty: give it at least one (image, caption) row")
            cache.append(EvalData.from_batches([rows], len(rows["image"])))
        return evaluate_clip(model, cache[0], cfg.zeroshot_classes, cfg.zeroshot_templates)

    return evaluate


def _progress(cfg: ClipTrainConfig):
    def progress(m: dict[str, Any]) -> None:
        evals = "  ".join(f"{k} {v:.3f}" for k, v in m.items() if k.startswith(("zeroshot", "i2t_R@1", "t2i_R@1")))
        print(
            f"step {m['step']:>5}/{cfg.max_steps}  loss {m['loss']:.3f}  {m['samples_per_s']:.0f} samples/s  "
            f"{m['steps_per_s']:.2f} steps/s  lr {m['lr']:.2e}  {evals}".rstrip(),
            flush=True,
        )

    return progress


def clip_worker_loop(config: dict[str, Any], ctx: RayContext) -> None:
    """The per-worker loop :func:`fit_clip` gives :func:`~raylens.train.ray_fit.fit`: shards -> batches -> train_clip."""
    cfg = ClipTrainConfig.from_dict(config["train"])
    batches = ctx.epoch_batches(
        "train",
        batch_size=cfg.batch_size,
        seed=cfg.seed * 1000,
        drop_last=True,
        shuffle_buffer=CLIP_SHUFFLE_BUFFER,
        cache_max_bytes=config.get("cache_bytes", 0),
    )
    evaluator = _evaluator(cfg, ctx) if config["has_eval"] and ctx.rank == 0 else None
    train_clip(cfg, batches, ctx, on_step=_progress(cfg), evaluator=evaluator, run=ctx.run)


def fit_clip(
    train_ds: ray.data.Dataset,
    cfg: ClipTrainConfig,
    opts: RayTrainOptions | None = None,
    eval_ds: ray.data.Dataset | None = None,
) -> TrainResult:
    """Train CLIP on ``train_ds`` (rows with ``image`` and ``caption``) with Ray Train.

    A materialised ``train_ds`` (``ds.materialize()``: its rows, augmentation included, are then the
    same every epoch) that fits (:data:`~raylens.train.ray_fit.WORKER_CACHE_MAX_BYTES` per worker)
    is read through Ray Data once; later epochs are permutations of each worker's rows in memory.
    ``eval_ds`` (rows with ``image``, ``caption`` and, for zero-shot accuracy with
    ``cfg.zeroshot_classes``, ``label``) is evaluated on rank 0 every ``cfg.eval_every`` steps and at
    the end. Re-running with the same ``opts.name`` and ``opts.storage_path`` resumes from the latest
    checkpoint. Returns the final checkpoint (``model.safetensors``, ``config.json`` with the model,
    train config and run options, ``history.json``/``.csv``, ``curves.png``) and the history.
    """
    if not isinstance(cfg, ClipTrainConfig):
        raise TypeError(f"`cfg` must be a ClipTrainConfig, got {type(cfg).__name__}")
    opts = opts or RayTrainOptions()
    datasets = {"train": train_ds} if eval_ds is None else {"train": train_ds, "eval": eval_ds}
    loop_config = {
        "train": cfg.to_dict(),
        "has_eval": eval_ds is not None,
        # a materialised train_ds (the same rows every epoch) stays in each worker's memory after epoch 1
        "cache_bytes": worker_cache_bytes(train_ds, opts.num_workers),
    }
    return fit(clip_worker_loop, loop_config, datasets, opts)
