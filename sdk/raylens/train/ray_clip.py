"""Ray Train wrapper for the CLIP loop: ``TorchTrainer`` on N workers (gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from raylens.train.clip_loop import HISTORY_FILE, TrainResult, train_clip
from raylens.train.config import ClipTrainConfig

__all__ = ["RayContext", "fit_clip", "RayTrainOptions"]


class RayContext:
    """A :class:`~raylens.train.context.TrainContext` backed by ``ray.train``."""

    def __init__(self):
        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self._last: Path | None = None

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | Path | None = None) -> None:
        ckpt = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt)

    def latest_checkpoint(self) -> Path | None:
        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        local = Path(tempfile.mkdtemp(prefix="raylens-resume-"))
        return Path(ckpt.to_directory(str(local)))


def _evaluator(cfg: ClipTrainConfig, max_rows: int):
    """Rank 0's evaluator: reads the (unsplit) ``eval`` dataset once, at the first evaluation."""
    from raylens.train.evaluate import EvalData, evaluate_clip

    cache: list[EvalData] = []

    def evaluate(model) -> dict[str, Any]:
        if not cache:
            shard = ray.train.get_dataset_shard("eval")
            cache.append(EvalData.from_batches(shard.iter_batches(batch_size=256, batch_format="numpy"), max_rows))
        return evaluate_clip(model, cache[0], cfg.zeroshot_classes, cfg.zeroshot_templates)

    return evaluate


def _worker(config: dict[str, Any]) -> None:
    import torch

    from raylens.runtime import quiet_logs

    quiet_logs()

    if config.get("threads"):
        torch.set_num_threads(config["threads"])
    cfg = ClipTrainConfig.from_dict(config["train"])
    shard = ray.train.get_dataset_shard("train")
    ctx = RayContext()

    def epoch_batches(epoch: int):
        return shard.iter_batches(
            batch_size=cfg.batch_size,
            batch_format="numpy",
            drop_last=True,
            local_shuffle_buffer_size=config["shuffle_buffer"],
            local_shuffle_seed=cfg.seed * 1000 + epoch,
        )

    def progress(m: dict[str, Any]) -> None:
        evals = "  ".join(f"{k} {v:.3f}" for k, v in m.items() if k.startswith(("zeroshot", "i2t_R@1", "t2i_R@1")))
        print(
            f"step {m['step']:>5}/{cfg.max_steps}  loss {m['loss']:.3f}  {m['samples_per_s']:.0f} samples/s  "
            f"{m['steps_per_s']:.2f} steps/s  lr {m['lr']:.2e}  {evals}".rstrip(),
            flush=True,
        )

    evaluator = _evaluator(cfg, config["eval_max_rows"]) if config["has_eval"] and ctx.rank == 0 else None
    train_clip(cfg, epoch_batches, ctx, on_step=progress, evaluator=evaluator, run=config["run"])


@dataclass
class RayTrainOptions:
    """Where and how the run executes (everything that is Ray's, not the model's)."""

    num_workers: int = 2
    """Training workers; each holds a model replica and a shard of the data."""
    use_gpu: bool = False
    """One GPU per worker (NCCL); CPU workers use gloo."""
    cpus_per_worker: float | None = None
    """CPUs reserved per worker; None leaves one CPU of the cluster for the data ingest (see
    ``raylens.runtime.cpus_per_replica``). Torch uses max(1, round(cpus)) threads."""
    storage_path: str | None = None
    """Where checkpoints go; shared storage (NFS/S3) on a multi-node cluster. Default: ~/.raylens/runs."""
    name: str | None = None
    """Run name; re-running with the same name and storage resumes from the latest checkpoint."""
    max_failures: int = 0
    """Worker-group restarts allowed before the run fails (``FailureConfig``)."""
    num_to_keep: int | None = 2
    """Checkpoints kept (``CheckpointConfig``); None keeps all."""
    shuffle_buffer: int = 512
    """Rows in each worker's local shuffle buffer."""
    log_level: str = "WARNING"
    """Ray Train's own log level (INFO shows every report call)."""
    eval_max_rows: int = 10_000
    """Rows of the eval dataset held in memory on rank 0 for evaluation."""

    def __post_init__(self):
        if self.num_workers < 1:
            raise ValueError(f"`num_workers` must be >= 1, got {self.num_workers}")
        if self.max_failures < -1:
            raise ValueError(f"`max_failures` must be >= -1 (-1 = retry forever), got {self.max_failures}")
        if self.cpus_per_worker is not None and self.cpus_per_worker <= 0:
            raise ValueError(f"`cpus_per_worker` must be > 0 or None (automatic), got {self.cpus_per_worker}")
        if self.num_to_keep is not None and self.num_to_keep < 1:
            raise ValueError(f"`num_to_keep` must be >= 1 or None, got {self.num_to_keep}")


def fit_clip(
    train_ds: ray.data.Dataset,
    cfg: ClipTrainConfig,
    opts: RayTrainOptions | None = None,
    eval_ds: ray.data.Dataset | None = None,
) -> TrainResult:
    """Train CLIP on ``train_ds`` (rows with ``image`` and ``caption``) with Ray Train.

    ``eval_ds`` (rows with ``image``, ``caption`` and, for zero-shot accuracy with
    ``cfg.zeroshot_classes``, ``label``) is evaluated on rank 0 every ``cfg.eval_every`` steps and at
    the end. Re-running with the same ``opts.name`` and ``opts.storage_path`` resumes from the latest
    checkpoint. Returns the final checkpoint (``model.safetensors``, ``config.json`` with the model,
    train config and run options, ``history.json``/``.csv``, ``curves.png``) and the history.
    """
    import time

    from ray.train import DataConfig

    opts = opts or RayTrainOptions()
    from raylens.runtime import cpus_per_replica

    cpus = opts.cpus_per_worker or cpus_per_replica(opts.num_workers)
    storage = opts.storage_path or str(Path("~/.raylens/runs").expanduser())
    datasets = {"train": train_ds} if eval_ds is None else {"train": train_ds, "eval": eval_ds}
    trainer = TorchTrainer(
        _worker,
        train_loop_config={
            "train": cfg.to_dict(),
            "shuffle_buffer": opts.shuffle_buffer,
            "threads": None if opts.use_gpu else max(1, round(cpus)),
            "has_eval": eval_ds is not None,
            "eval_max_rows": opts.eval_max_rows,
            "run": {**asdict(opts), "storage_path": storage},
        },
        scaling_config=ScalingConfig(
            num_workers=opts.num_workers, use_gpu=opts.use_gpu, resources_per_worker={"CPU": cpus}
        ),
        run_config=RunConfig(
            name=opts.name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=opts.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=opts.num_to_keep),
            logging_config=LoggingConfig(log_level=opts.log_level),
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - t0
    if result.checkpoint is None:
        return TrainResult(None, [], 0, seconds)
    ckpt_dir = Path(result.checkpoint.path)
    history = json.loads((ckpt_dir / HISTORY_FILE).read_text()) if (ckpt_dir / HISTORY_FILE).is_file() else []
    steps = history[-1]["step"] if history else 0
    return TrainResult(ckpt_dir, history, steps, seconds)
