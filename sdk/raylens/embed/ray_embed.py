"""Embedding a Ray dataset: model replicas load the model once, then embed batch after batch.

Two shapes, one per kind of hardware:

* **CPU, from a reader** (a :class:`~raylens.data.result.ReadResult`): decoding and encoding run in
  the same Ray Data *task*, one per core at a time, on one torch thread. Nothing decoded crosses the
  object store, no core waits on another, and the model is cached in each Ray worker process, so the
  imports and the model load are paid once per worker per session: a second pipeline (the demo's
  held-out set after its index) starts at full speed. Each task takes several batches
  (:func:`task_batches`): a core sits idle 0.1-0.2 s between two tasks (Ray Data 2.60 notices a
  finished task at its next 0.1 s poll, then schedules the next), which on one-batch tasks (~0.15 s
  of work) kept the cores half idle. Ray Data gathers a task's batches into one output block, so
  bigger tasks also deliver their first rows later. Where the reader can re-plan its read
  (:attr:`~raylens.data.result.ReadResult.rows_in`), it reads one block per task: a captions file
  read in 157 blocks (one per decode batch) kept a core busy 0.8 s before the first task could
  start, in 4 blocks 0.08 s.
* **GPU, or a dataset of ``image`` rows**: an actor pool (:class:`EmbedImages`); decoding stays in Ray
  Data tasks upstream, feeding the accelerators.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator

import numpy as np
import ray

from raylens.data.result import ReadResult
from raylens.models import create_model

__all__ = ["EmbedImages", "embed_images"]

_CACHE: dict[tuple, object] = {}

TASK_BATCHES = 8
"""Batches per CPU task (see the module docstring)."""
MAX_TASK_BATCHES = 40
"""Batches per CPU task at most (5,120 rows at batch 128: ~2 s of work on a core, one output block)."""
TASKS_PER_CPU = 2


def task_batches(rows_estimate: float | None, batch_size: int, cpus: float) -> int:
    """Batches per CPU task: the data split evenly into :data:`TASKS_PER_CPU` tasks per CPU, at least
    :data:`TASK_BATCHES` and at most :data:`MAX_TASK_BATCHES`, so the idle gap between tasks is paid
    rarely and the last task ends with the others. Measured warm at 20,000 PNGs on 2 cores (3
    alternated pipelines each, PNGs decoded by libspng then): 40 batches a task took 5.6-6.1 s against
    6.2-6.8 s for 16, with the first rows at 3.5-3.8 s against 2.3-2.5 s.

    >>> [task_batches(n, 128, 2) for n in (20_000, 10_000, 3_000, None)]
    [40, 20, 8, 8]
    """
    if not rows_estimate or cpus <= 0:
        return TASK_BATCHES
    even = math.ceil(rows_estimate / (batch_size * cpus * TASKS_PER_CPU))
    return int(min(MAX_TASK_BATCHES, max(TASK_BATCHES, even)))


def _cached_model(model: str, checkpoint: str | None):
    """This worker process's copy of the model (one at a time; a changed checkpoint file reloads)."""
    stamp = None
    if checkpoint and os.path.exists(checkpoint):
        weights = os.path.join(checkpoint, "model.safetensors")
        info = os.stat(weights if os.path.isfile(weights) else checkpoint)
        stamp = (info.st_mtime_ns, info.st_size)
    key = (model, checkpoint, stamp)
    if key not in _CACHE:
        from raylens.runtime import pick_device, quiet_logs

        quiet_logs()
        _CACHE.clear()
        _CACHE[key] = create_model(model, pretrained=checkpoint).to(pick_device())
    return _CACHE[key]


def _with_embedding(model, batch: dict[str, np.ndarray], drop_image: bool) -> dict[str, np.ndarray]:
    out = {k: v for k, v in batch.items() if not (drop_image and k == "image")}
    out["embedding"] = model.encode_images(batch["image"])
    return out


def _decode_and_embed(
    batch: dict[str, np.ndarray],
    *,
    decode: Callable[..., Iterator[dict[str, np.ndarray]]],
    model: str,
    checkpoint: str | None,
    drop_image: bool,
    batch_size: int,
) -> Iterator[dict[str, np.ndarray]]:
    """The CPU task: a reader's undecoded rows in, decoded (bad rows reported) and embedded out,
    ``batch_size`` rows at a time."""
    import torch

    torch.set_num_threads(1)
    m = _cached_model(model, checkpoint)
    n = len(next(iter(batch.values()))) if batch else 0
    for start in range(0, n, batch_size):
        for decoded in decode({k: v[start : start + batch_size] for k, v in batch.items()}):
            yield _with_embedding(m, decoded, drop_image)


class EmbedImages:
    """``map_batches`` actor: adds ``embedding`` (N, D) float32 unit vectors from ``image`` (N, 3, S, S)."""

    def __init__(self, model: str, checkpoint: str | None, drop_image: bool = True, threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.model = _cached_model(model, checkpoint)
        self.drop_image = drop_image

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _with_embedding(self.model, batch, self.drop_image)


def embed_images(
    data: ray.data.Dataset | ReadResult,
    model: str,
    checkpoint: str | None,
    *,
    batch_size: int = 128,
    num_actors: int = 1,
    num_gpus: float = 0,
    drop_image: bool = True,
    cpus_per_actor: float | None = None,
) -> ray.data.Dataset:
    """Add an ``embedding`` column (lazy); rows keep their other columns (``path``, ``caption``, ...).

    Args:
        data: a reader's :class:`~raylens.data.result.ReadResult` (on CPU: decoded and embedded in the
            same tasks, see the module) or a dataset of preprocessed ``image`` rows.
        num_actors: actor-pool replicas for the GPU or ``image``-rows shape (one per GPU asked for).
        num_gpus: GPUs per actor (fractions share one).
        cpus_per_actor: CPUs each actor reserves. Default: leave one CPU to the decoding tasks upstream
            (``raylens.runtime.cpus_per_replica``), so decode and inference overlap.
    """
    from raylens.runtime import cpus_per_replica

    if num_actors < 1:
        raise ValueError(f"num_actors must be >= 1, got {num_actors}")
    if isinstance(data, ReadResult) and data.decode is not None and not num_gpus:
        per_task = task_batches(data.rows_estimate, batch_size, ray.cluster_resources().get("CPU", 1))
        rows, task_rows = data.rows, batch_size * per_task
        if data.rows_in is not None and data.rows_estimate:  # one read block per task (see the module)
            rows, task_rows = data.rows_in(math.ceil(data.rows_estimate / task_rows)), None
        return rows.map_batches(
            _decode_and_embed,
            fn_kwargs={
                "decode": data.decode,
                "model": model,
                "checkpoint": checkpoint,
                "drop_image": drop_image,
                "batch_size": batch_size,
            },
            batch_size=task_rows,
            batch_format="numpy",
            num_cpus=1,
        )
    ds = data.dataset if isinstance(data, ReadResult) else data
    cpus = 0 if num_gpus else (cpus_per_actor or cpus_per_replica(num_actors))
    return ds.map_batches(
        EmbedImages,
        fn_constructor_kwargs={
            "model": model,
            "checkpoint": checkpoint,
            "drop_image": drop_image,
            "threads": max(1, round(cpus)) if cpus else None,
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_gpus=num_gpus,
        num_cpus=cpus,
    )
