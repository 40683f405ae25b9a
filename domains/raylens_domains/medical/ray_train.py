"""Ray Train glue: the plain fusion loop (:func:`~.train.train_fusion`) inside a ``TorchTrainer``.

Each worker reads its shard of the model-ready Ray Dataset (``ct``, ``mr_aligned``, ``mr``, ``present``,
``label``), wraps the model with ``ray.train.torch.prepare_model`` (DDP over gloo on CPU, NCCL on GPU)
and reports after every epoch with ``ray.train.report``; rank 0 attaches a checkpoint directory
(``model.safetensors`` + ``config.json``, see :func:`~.train.save_checkpoint`). The validation set is
not split: every worker gets all of it, rank 0 scores it.

>>> res = train_fusion_ray(FusionTrainConfig(model="mid"), train_ds, val_ds, num_workers=2)  # doctest: +SKIP
>>> res.metrics["val_auc"], res.checkpoint_dir                                             # doctest: +SKIP
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .train import MODEL_INPUT_KEYS, FusionTrainConfig, load_checkpoint, save_checkpoint, train_fusion
from .transforms import VolumeTransformConfig

__all__ = ["RayFusionResult", "train_fusion_ray", "fusion_train_loop"]

_COLUMNS = [*MODEL_INPUT_KEYS, "label"]


@dataclass
class RayFusionResult:
    """What :func:`train_fusion_ray` returns."""

    metrics: dict[str, Any]
    """The last reported metrics (loss, and val AUC/accuracy/F1 when a val set was given)."""
    checkpoint_dir: str | None
    """The final checkpoint (load with :func:`~.train.load_checkpoint`)."""
    storage_path: str

    def load_model(self):
        if self.checkpoint_dir is None:
            raise FileNotFoundError("the run reported no checkpoint")
        return load_checkpoint(self.checkpoint_dir)


def fusion_train_loop(loop_config: dict[str, Any]) -> None:
    """The per-worker function given to ``TorchTrainer`` (reads Ray Train's context and shards)."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    cfg = FusionTrainConfig(**loop_config["train"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    shard = ray.train.get_dataset_shard("train")
    val_arrays = None
    if loop_config.get("has_val") and rank == 0:  # "val" is not split: rank 0 reads all of it
        batches = list(ray.train.get_dataset_shard("val").iter_batches(batch_size=256, batch_format="numpy"))
        val_arrays = {k: np.concatenate([b[k] for b in batches]) for k in _COLUMNS} if batches else None

    def batches(epoch: int):
        return shard.iter_batches(
            batch_size=cfg.batch_size,
            batch_format="numpy",
            local_shuffle_buffer_size=4 * cfg.batch_size,
            local_shuffle_seed=cfg.seed + epoch,
        )

    def report(epoch: int, metrics: dict[str, float], model) -> None:
        last = epoch == cfg.epochs - 1
        if rank == 0 and (last or loop_config.get("checkpoint_every_epoch")):
            with tempfile.TemporaryDirectory() as tmp:
                extra = {"transform": loop_config["transform"]} if loop_config.get("transform") else None
                save_checkpoint(model, tmp, train_config=cfg, extra=extra)
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)

    def wrap(model):
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})

    train_fusion(cfg, batches, val_arrays, wrap_model=wrap, report=report, device=ray.train.torch.get_device())


def train_fusion_ray(
    config: FusionTrainConfig,
    train_ds,
    val_ds=None,
    *,
    num_workers: int = 2,
    use_gpu: bool = False,
    storage_path: str | Path | None = None,
    name: str | None = None,
    checkpoint_every_epoch: bool = False,
    transform: VolumeTransformConfig | None = None,
) -> RayFusionResult:
    """Train a fusion model with Ray Train (``TorchTrainer``, ``num_workers`` data-parallel workers).

    ``train_ds``/``val_ds`` are model-ready Ray Datasets (see :func:`~.ray_reader.fusion_dataset`).
    ``transform`` (the preprocessing the datasets went through) is saved with the checkpoint, so
    :class:`~.predict.FusionPredictor` preprocesses uploads the same way.
    """
    from ray.train import CheckpointConfig, DataConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not isinstance(config, FusionTrainConfig):
        raise TypeError(f"config must be a FusionTrainConfig, got {type(config).__name__}")
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    storage = str(Path(storage_path or Path.home() / ".raylens" / "ray_results").resolve())
    # materialise the model-ready columns now: once the workers hold their CPUs, a small cluster has
    # none left for Data tasks, and a lazy dataset would wait for them forever
    datasets = {"train": train_ds.select_columns(_COLUMNS).materialize()}
    if val_ds is not None:
        datasets["val"] = val_ds.select_columns(_COLUMNS).materialize()
    trainer = TorchTrainer(
        fusion_train_loop,
        train_loop_config={
            "train": asdict(config),
            "has_val": val_ds is not None,
            "checkpoint_every_epoch": checkpoint_every_epoch,
            "transform": asdict(transform) if transform is not None else None,
        },
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=RunConfig(
            name=name or f"fusion-{config.model}",
            storage_path=storage,
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    result = trainer.fit()
    ckpt = result.checkpoint.path if result.checkpoint is not None else None
    return RayFusionResult(metrics=dict(result.metrics or {}), checkpoint_dir=ckpt, storage_path=storage)
