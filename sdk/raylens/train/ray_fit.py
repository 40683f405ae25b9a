"""The one Ray Train wrapper: any plain loop ``loop(config, ctx)`` in a ``TorchTrainer``.

:func:`fit` starts ``opts.num_workers`` workers (gloo on CPU, NCCL with ``use_gpu``), gives each a
:class:`RayContext` (rank, world size, device, report, latest checkpoint, dataset shards) and calls
``loop(loop_config, ctx)`` on every one of them. The loop is the training kind's own plain code: it
turns shards into batches (:meth:`RayContext.epoch_batches`) and calls its plain training function
(``train_clip``, ``train_fusion``, ...), which resumes, checkpoints and reports through
:mod:`raylens.train.checkpointing`. Re-running with the same ``opts.name`` and ``opts.storage_path``
resumes from the latest checkpoint.

On Ray (skipped as a doctest: it starts Ray Train workers):

>>> def loop(config, ctx):  # doctest: +SKIP
...     train_fusion(FusionTrainConfig(**config), ctx.epoch_batches("train", batch_size=8), ctx)
>>> result = fit(loop, {"model": "mid"}, {"train": ds}, RayTrainOptions(num_workers=2, name="r1"))  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from raylens.train.checkpointing import read_history
from raylens.train.options import RayTrainOptions
from raylens.train.result import TrainResult

__all__ = [
    "RayContext",
    "CheckpointCache",
    "WORKER_CACHE_MAX_BYTES",
    "fit",
    "is_local_filesystem",
    "shard_epochs",
    "worker_cache_bytes",
]

WORKER_CACHE_MAX_BYTES = 1 << 30
"""A materialised training set stays in each worker's memory after the first epoch when its share is
at most this (1 GiB), so later epochs skip Ray Data's per-epoch start-up (:func:`shard_epochs`)."""

log = logging.getLogger("raylens.train")

Loop = Callable[[Any, "RayContext"], Any]


def is_local_filesystem(filesystem) -> bool:
    """True when a pyarrow filesystem is this machine's disk (paths on it can be read in place)."""
    from pyarrow.fs import LocalFileSystem

    return isinstance(filesystem, LocalFileSystem)


class CheckpointCache:
    """A local directory for the checkpoint a worker resumes from, without leaking copies.

    A checkpoint on local storage is used in place. One on remote storage (S3, GCS, a mounted
    filesystem pyarrow does not see as local) is downloaded once into one temporary folder owned by
    this cache; asking again for the same checkpoint returns that folder, asking for a newer one
    replaces its contents, and :meth:`close` removes it.
    """

    def __init__(self):
        self._dir: Path | None = None
        self._holds: tuple[str, str] | None = None
        self.downloads = 0
        """How many checkpoints were copied to local disk (0 while storage is local)."""

    def local_path(self, checkpoint: ray.train.Checkpoint) -> Path:
        if is_local_filesystem(checkpoint.filesystem):
            return Path(checkpoint.path)
        key = (checkpoint.filesystem.type_name, checkpoint.path)
        if self._dir is not None and self._holds == key:
            return self._dir
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="raylens-resume-"))
        else:  # a newer checkpoint: the folder holds one checkpoint at a time
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir.mkdir(parents=True)
        self._holds = None
        checkpoint.to_directory(str(self._dir))
        self._holds = key
        self.downloads += 1
        return self._dir

    @property
    def directory(self) -> Path | None:
        """The download folder, while there is one."""
        return self._dir

    def close(self) -> None:
        """Remove the download folder (a no-op when nothing was downloaded)."""
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._dir, self._holds = None, None


def shard_epochs(
    shard,
    *,
    batch_size: int,
    seed: int = 0,
    drop_last: bool = False,
    shuffle_buffer: int = 0,
    cache_max_bytes: int = 0,
) -> Callable[[int], Iterable[dict[str, np.ndarray]]]:
    """``epoch -> numpy batches`` of a Ray ``DataIterator``, locally shuffled with seed ``seed + epoch``
    through a buffer of ``shuffle_buffer`` rows.

    With ``cache_max_bytes`` (for rows that are the same every epoch: no per-epoch random augmentation
    upstream), a shard that fits is kept in memory after the first full epoch, and later epochs are
    whole-shard permutations of it (seed ``seed + epoch``) instead of a new pass through Ray Data:
    small datasets stop paying a pipeline start-up per epoch. Each worker then keeps the rows of its
    first epoch, as a fixed partition with a full local shuffle.
    Under ``streaming_split`` every worker must make the same choice (a worker that stops reading its
    split while another goes on would stall it): give a budget only when every shard surely fits.
    """
    buffer = shuffle_buffer
    cache: dict[str, np.ndarray] = {}

    def stream(epoch: int) -> Iterator[dict[str, np.ndarray]]:
        kept: list[dict[str, np.ndarray]] | None = [] if cache_max_bytes > 0 else None
        size = 0
        for batch in shard.iter_batches(
            batch_size=batch_size,
            batch_format="numpy",
            drop_last=False if kept is not None else drop_last,
            local_shuffle_buffer_size=buffer or None,
            local_shuffle_seed=seed + epoch if buffer else None,
        ):
            if kept is not None:
                size += sum(np.asarray(v).nbytes for v in batch.values())
                if size <= cache_max_bytes:
                    kept.append({k: np.array(v) for k, v in batch.items()})
                else:
                    kept = None
            if drop_last and len(next(iter(batch.values()))) < batch_size:
                continue
            yield batch
        if kept:  # the whole epoch went through (a loop that stops early never gets here)
            cache.update({k: np.concatenate([b[k] for b in kept]) for k in kept[0]})

    def from_memory(epoch: int) -> Iterator[dict[str, np.ndarray]]:
        n = len(next(iter(cache.values())))
        order = np.random.default_rng(seed + epoch).permutation(n)
        stop = n - n % batch_size if drop_last else n
        for i in range(0, stop, batch_size):
            idx = order[i : i + batch_size]
            yield {k: v[idx] for k, v in cache.items()}

    def batches(epoch: int) -> Iterable[dict[str, np.ndarray]]:
        return from_memory(epoch) if cache else stream(epoch)

    return batches


def worker_cache_bytes(train_ds: ray.data.Dataset, num_workers: int) -> int:
    """``cache_max_bytes`` for :func:`shard_epochs` on each worker: a budget (twice
    :data:`WORKER_CACHE_MAX_BYTES`, as shards can be uneven) when ``train_ds`` is materialised (its rows
    are the same every epoch) and each worker's share is at most :data:`WORKER_CACHE_MAX_BYTES`; else 0.
    Every worker gets the same answer, as ``streaming_split`` needs."""
    from ray.data.dataset import MaterializedDataset

    if not isinstance(train_ds, MaterializedDataset):
        return 0
    return 2 * WORKER_CACHE_MAX_BYTES if train_ds.size_bytes() / max(1, num_workers) <= WORKER_CACHE_MAX_BYTES else 0


class RayContext:
    """A :class:`~raylens.train.context.TrainContext` backed by ``ray.train``, inside a worker."""

    def __init__(self, run: Mapping[str, Any] | None = None):
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank: int = ctx.get_world_rank()
        self.world_size: int = ctx.get_world_size()
        self.device: str = str(ray.train.torch.get_device())
        self.run: dict[str, Any] = dict(run or {})
        self._checkpoints = CheckpointCache()

    def report(
        self, metrics: dict[str, Any], checkpoint_dir: str | Path | None = None, *, checkpoint_step: bool = False
    ) -> Path | None:
        """Metrics alone stay in the loop's history (saved in every checkpoint): a ``ray.train.report``
        is a barrier across the workers that cost about 1 s per call on a 2-core machine (150 steps of
        CLIP on 1 worker: 48.8-51.7 s reporting every 10 steps, 33.6-41.2 s reporting once). Checkpoint
        steps go to Ray Train on every rank (rank 0 with the checkpoint, the others with
        ``checkpoint_step=True``), since each rank must reach that barrier."""
        if checkpoint_dir is None and not checkpoint_step:
            return None
        ckpt = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir is not None else None
        ray.train.report(metrics, checkpoint=ckpt)
        if ckpt is None:
            return None
        kept = ray.train.get_checkpoint()  # the persisted copy (reports upload synchronously)
        return Path(kept.path) if kept is not None and is_local_filesystem(kept.filesystem) else None

    def latest_checkpoint(self) -> Path | None:
        ckpt = ray.train.get_checkpoint()
        return None if ckpt is None else self._checkpoints.local_path(ckpt)

    def dataset_shard(self, name: str):
        """This worker's ``DataIterator`` of the dataset ``name`` (split ones: its shard; others: all)."""
        return ray.train.get_dataset_shard(name)

    def epoch_batches(
        self,
        name: str,
        *,
        batch_size: int,
        seed: int = 0,
        drop_last: bool = False,
        shuffle_buffer: int = 0,
        cache_max_bytes: int = 0,
    ) -> Callable[[int], Iterable[dict[str, np.ndarray]]]:
        """:func:`shard_epochs` of the shard ``name``. ``shuffle_buffer`` is the training kind's default;
        the run's ``RayTrainOptions.shuffle_buffer``, when set, wins."""
        chosen = self.run.get("shuffle_buffer")
        return shard_epochs(
            self.dataset_shard(name),
            batch_size=batch_size,
            seed=seed,
            drop_last=drop_last,
            shuffle_buffer=shuffle_buffer if chosen is None else chosen,
            cache_max_bytes=cache_max_bytes,
        )

    def read_all(
        self, name: str, columns: Sequence[str] | None = None, max_rows: int | None = None
    ) -> dict[str, np.ndarray] | None:
        """The dataset ``name`` (this worker's shard of it, when split) in memory: up to ``max_rows``
        rows (default: the run's ``eval_max_rows``) of ``columns`` (default: all); None when empty."""
        limit = max_rows or int(self.run.get("eval_max_rows") or 10_000)
        parts: list[dict[str, np.ndarray]] = []
        n = 0
        for batch in self.dataset_shard(name).iter_batches(batch_size=256, batch_format="numpy"):
            take = min(len(next(iter(batch.values()))), limit - n)
            parts.append({k: np.asarray(v[:take]) for k, v in batch.items() if columns is None or k in columns})
            n += take
            if n >= limit:
                break
        if n == 0:
            return None
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def close(self) -> None:
        """Remove what this context downloaded; :func:`fit` calls it when the loop ends."""
        self._checkpoints.close()


def _run_loop(loop: Loop, config: dict[str, Any]) -> None:
    """What every Ray Train worker runs: quiet logs, torch threads, one context, the loop."""
    import torch

    from raylens.runtime import quiet_logs

    quiet_logs()
    if config.get("threads"):
        torch.set_num_threads(config["threads"])
    ctx = RayContext(run=config["run"])
    try:
        loop(config["loop_config"], ctx)
    finally:
        ctx.close()


def _final(checkpoint: ray.train.Checkpoint | None, seconds: float, storage: str) -> TrainResult:
    """The run's result; a checkpoint on remote storage is downloaded, so callers read a local folder."""
    if checkpoint is None:
        return TrainResult(None, [], 0, seconds)
    location = checkpoint.path
    if is_local_filesystem(checkpoint.filesystem):
        local = Path(checkpoint.path)
    else:
        scheme = storage.split("://", 1)[0] if "://" in storage else checkpoint.filesystem.type_name
        location = f"{scheme}://{checkpoint.path}"
        local = Path(checkpoint.to_directory(tempfile.mkdtemp(prefix="raylens-checkpoint-")))
    history = read_history(local)
    steps = int(history[-1].get("step", 0)) if history else 0
    return TrainResult(local, history, steps, seconds, location=location)


def fit(
    loop: Loop,
    loop_config: Any,
    datasets: Mapping[str, Any],
    opts: RayTrainOptions | None = None,
    *,
    split: Sequence[str] = ("train",),
) -> TrainResult:
    """Run ``loop(loop_config, ctx)`` on ``opts.num_workers`` Ray Train workers; return the final checkpoint.

    Args:
        loop: a module-level function (it is pickled to the workers) taking the config and a
            :class:`RayContext`.
        loop_config: anything picklable; every worker gets it unchanged.
        datasets: Ray Datasets by name; each worker reads them through ``ctx.dataset_shard(name)``.
        opts: where and how to run (workers, GPUs, storage, run name, failures, checkpoints kept).
        split: the datasets sharded across workers; the others reach every worker whole
            (validation data that rank 0 scores, say).

    Returns:
        The final checkpoint and the history saved in it (empty when the run reported no checkpoint).
    """
    from raylens.runtime import cpus_per_replica

    if not callable(loop):
        raise TypeError(f"`loop` must be a function loop(config, ctx), got {type(loop).__name__}")
    opts = opts or RayTrainOptions()
    if not isinstance(opts, RayTrainOptions):
        raise TypeError(f"`opts` must be a RayTrainOptions, got {type(opts).__name__}")
    missing = [name for name in split if name not in datasets]
    if missing:
        raise ValueError(
            f"`split` names {missing}, which are not in `datasets` ({sorted(datasets)}); fix one or the other"
        )
    cpus = opts.cpus_per_worker or cpus_per_replica(opts.num_workers)
    run = opts.to_dict()
    run["max_failures"] = opts.failures(sum(1 for n in ray.nodes() if n.get("Alive")))
    trainer = TorchTrainer(
        functools.partial(_run_loop, loop),
        train_loop_config={"loop_config": loop_config, "run": run, "threads": opts.torch_threads(cpus)},
        scaling_config=ScalingConfig(
            num_workers=opts.num_workers,
            use_gpu=opts.use_gpu,
            resources_per_worker={"CPU": cpus},
            placement_strategy=opts.placement,
        ),
        run_config=RunConfig(
            name=opts.name,
            storage_path=run["storage_path"],
            failure_config=FailureConfig(max_failures=run["max_failures"]),
            checkpoint_config=CheckpointConfig(num_to_keep=opts.num_to_keep),
            logging_config=LoggingConfig(log_level=opts.log_level),
            # the workers' priority is set when Ray starts their processes (see the option)
            worker_runtime_env={"env_vars": {"RAY_worker_niceness": str(opts.worker_niceness)}},
        ),
        datasets=dict(datasets),
        dataset_config=DataConfig(datasets_to_split=list(split)),
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    return _final(result.checkpoint, time.perf_counter() - t0, run["storage_path"])
