"""Fusion on Ray Train: the plain fusion loop (:func:`~.train.train_fusion`) run by the one Ray Train
wrapper (:func:`raylens.train.ray_fit.fit`), with the one ``RayTrainOptions``.

Each worker reads its shard of the model-ready Ray Dataset (``ct``, ``mr_aligned``, ``mr``, ``present``,
``label``); the model is wrapped in DDP (gloo on CPU, NCCL on GPU); every epoch is reported and
checkpointed as :mod:`raylens.train.checkpointing` says (every ``checkpoint_every`` epochs and at the
end). The validation set is not split: rank 0 scores all of it (up to ``opts.eval_max_rows`` rows).
Re-running with the same ``opts.name`` and ``opts.storage_path`` resumes from the latest checkpoint.

On Ray (skipped as a doctest: it starts Ray Train workers):

>>> opts = RayTrainOptions(num_workers=2, name="mid-1")                                          # doctest: +SKIP
>>> res = train_fusion_ray(FusionTrainConfig(model="mid"), train_ds, val_ds, opts)              # doctest: +SKIP
>>> res.metrics["val_auc"], load_checkpoint(res.checkpoint)                                    # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from raylens.train.options import RayTrainOptions
from raylens.train.ray_fit import RayContext, fit
from raylens.train.result import TrainResult

from .train import MODEL_INPUT_KEYS, FusionTrainConfig, train_fusion
from .transforms import VolumeTransformConfig

__all__ = ["train_fusion_ray", "fusion_worker_loop", "print_epoch", "TRAIN_COLUMNS"]

TRAIN_COLUMNS = [*MODEL_INPUT_KEYS, "label"]
"""The columns a model-ready dataset needs."""


def print_epoch(config: FusionTrainConfig):
    """A progress line per epoch: ``epoch 3/12  loss 0.512  lr 2.9e-03  val_auc 0.810 ...``."""

    def show(m: dict[str, Any]) -> None:
        vals = "  ".join(f"{k} {v:.3f}" for k, v in m.items() if k.startswith("val_"))
        print(
            f"epoch {m['epoch'] + 1:>3}/{config.epochs}  loss {m['loss']:.4f}  lr {m['lr']:.2e}  "
            f"{m['seconds']:.1f} s  {vals}".rstrip(),
            flush=True,
        )

    return show


def fusion_worker_loop(config: dict[str, Any], ctx: RayContext) -> None:
    """The per-worker loop :func:`train_fusion_ray` gives the wrapper: shards -> batches -> train_fusion."""
    cfg = FusionTrainConfig(**config["train"])
    batches = ctx.epoch_batches("train", batch_size=cfg.batch_size, seed=cfg.seed, shuffle_buffer=4 * cfg.batch_size)
    val = ctx.read_all("val", columns=TRAIN_COLUMNS) if config["has_val"] and ctx.rank == 0 else None
    extra = {"transform": config["transform"]} if config.get("transform") else None
    train_fusion(cfg, batches, ctx, val, on_epoch=print_epoch(cfg) if config.get("progress") else None, extra=extra)


def train_fusion_ray(
    config: FusionTrainConfig,
    train_ds,
    val_ds=None,
    opts: RayTrainOptions | None = None,
    *,
    transform: VolumeTransformConfig | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train a fusion model with Ray Train (``opts.num_workers`` data-parallel workers).

    Args:
        config: the run (``checkpoint_every`` epochs sets the checkpoint cadence).
        train_ds: model-ready Ray Dataset (see :func:`~.ray_reader.fusion_dataset`), split across workers.
        val_ds: optional model-ready Ray Dataset scored by rank 0 after every epoch.
        opts: workers, GPUs, storage and run name (same name + storage resumes), failures, checkpoints kept.
        transform: the preprocessing the datasets went through; saved with every checkpoint, so
            :class:`~.predict.FusionPredictor` preprocesses uploads the same way.
        progress: print one line per epoch (from rank 0).

    Returns:
        The final checkpoint (``raylens.models.load_model`` or :func:`~.train.load_checkpoint` reads
        it) and the history (one row per epoch: loss, lr, val AUC/accuracy/F1).
    """
    if not isinstance(config, FusionTrainConfig):
        raise TypeError(f"config must be a FusionTrainConfig, got {type(config).__name__}")
    if transform is not None and not isinstance(transform, VolumeTransformConfig):
        raise TypeError(f"transform must be a VolumeTransformConfig, got {type(transform).__name__}")
    # materialise the model-ready columns once: the MONAI preprocessing behind them is costly, and
    # every epoch reads them again
    datasets = {"train": train_ds.select_columns(TRAIN_COLUMNS).materialize()}
    if val_ds is not None:
        datasets["val"] = val_ds.select_columns(TRAIN_COLUMNS).materialize()
    loop_config = {
        "train": asdict(config),
        "has_val": val_ds is not None,
        "transform": asdict(transform) if transform is not None else None,
        "progress": progress,
    }
    return fit(fusion_worker_loop, loop_config, datasets, opts)
