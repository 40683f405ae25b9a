"""Where and how a training run executes on Ray: one options dataclass for every model kind.

Plain (no Ray import), so a CLI, a config file or a test can build and validate it anywhere;
:func:`raylens.train.ray_fit.fit` turns it into Ray Train's ``ScalingConfig`` and ``RunConfig``.

>>> RayTrainOptions(num_workers=4, name="run1").storage()  # doctest: +ELLIPSIS
'.../.raylens/runs'
>>> RayTrainOptions(num_workers=0)
Traceback (most recent call last):
...
ValueError: `num_workers` must be >= 1, got 0; use 1 for a single worker
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["RayTrainOptions", "DEFAULT_STORAGE", "CLUSTER_RETRIES", "PLACEMENTS"]

PLACEMENTS = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
"""How workers are placed on nodes (Ray placement-group strategies)."""

CLUSTER_RETRIES = 3
"""Worker-group restarts a run on a multi-node cluster gets when ``max_failures`` is not given."""

DEFAULT_STORAGE = "~/.raylens/runs"
"""Where checkpoints go when ``storage_path`` is not given."""

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


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
    placement: str = "PACK"
    """How workers are placed on nodes: PACK (as few nodes as possible), SPREAD (over as many as
    possible), STRICT_SPREAD (one worker per node, or wait) or STRICT_PACK (all on one node)."""
    storage_path: str | None = None
    """Where checkpoints go; shared storage (NFS/S3) on a multi-node cluster. Default: ~/.raylens/runs."""
    name: str | None = None
    """Run name; re-running with the same name and storage resumes from the latest checkpoint."""
    max_failures: int | None = None
    """Worker-group restarts allowed before the run fails (``FailureConfig``; each restart resumes from
    the latest checkpoint); -1: retry forever. None: :data:`CLUSTER_RETRIES` on a cluster of more
    than one node, where a lost node or a preempted worker is expected, and 0 on one machine, where
    a failure is a bug that a retry would only repeat."""
    num_to_keep: int | None = 2
    """Checkpoints kept (``CheckpointConfig``); None keeps all."""
    shuffle_buffer: int | None = None
    """Rows in each worker's local shuffle buffer; None: the training kind's own default (CLIP 512
    rows; fusion 4 batches, since its rows are whole volumes); 0: no local shuffle."""
    log_level: str = "WARNING"
    """Ray Train's own log level (INFO shows every report call)."""
    eval_max_rows: int = 10_000
    """Rows of the eval (validation) dataset held in memory on rank 0 for evaluation."""
    worker_niceness: int = 0
    """The training workers' scheduling niceness (``RAY_worker_niceness``). Ray starts task and actor
    processes at 15, below its own processes; a training worker that any of them pre-empts stalls
    every other worker at the next all-reduce. 0 (default) runs the workers at the priority Ray's
    own processes have (2 DDP workers on 2 cores, paired runs: 7-40% more images/s); 15 is Ray's
    default; 0-19 (raising it needs no privilege, lowering below the raylet's does)."""

    def __post_init__(self):
        if not isinstance(self.num_workers, int) or self.num_workers < 1:
            raise ValueError(f"`num_workers` must be >= 1, got {self.num_workers}; use 1 for a single worker")
        if self.max_failures is not None and self.max_failures < -1:
            raise ValueError(
                f"`max_failures` must be >= -1 (-1 = retry forever), got {self.max_failures}; or None (automatic)"
            )
        if self.cpus_per_worker is not None and self.cpus_per_worker <= 0:
            raise ValueError(f"`cpus_per_worker` must be > 0, got {self.cpus_per_worker}; or None (automatic)")
        if self.num_to_keep is not None and self.num_to_keep < 1:
            raise ValueError(f"`num_to_keep` must be >= 1, got {self.num_to_keep}; or None to keep every checkpoint")
        if self.shuffle_buffer is not None and self.shuffle_buffer < 0:
            raise ValueError(
                f"`shuffle_buffer` must be >= 0 rows (0 = no local shuffle), got {self.shuffle_buffer}; "
                "or None for the training kind's default"
            )
        if self.placement not in PLACEMENTS:
            raise ValueError(f"`placement` must be one of {PLACEMENTS}, got {self.placement!r}")
        if str(self.log_level).upper() not in _LOG_LEVELS:
            raise ValueError(f"`log_level` must be one of {_LOG_LEVELS}, got {self.log_level!r}")
        self.log_level = str(self.log_level).upper()
        if not isinstance(self.worker_niceness, int) or not 0 <= self.worker_niceness <= 19:
            raise ValueError(
                f"`worker_niceness` must be an int in 0..19 (0: as Ray's own processes, 15: Ray's default), "
                f"got {self.worker_niceness!r}"
            )
        if self.eval_max_rows < 1:
            raise ValueError(f"`eval_max_rows` must be >= 1, got {self.eval_max_rows}")
        if self.name is not None and (not self.name.strip() or "/" in self.name or "\\" in self.name):
            raise ValueError(
                f"`name` must be a plain folder name (not empty, no '/'), got {self.name!r}; "
                "put the parent folder in `storage_path`"
            )

    def storage(self) -> str:
        """``storage_path`` (local paths made absolute), or :data:`DEFAULT_STORAGE`; URIs are kept as given."""
        path = self.storage_path or DEFAULT_STORAGE
        if "://" in path:
            return path
        return str(Path(path).expanduser().resolve())

    def failures(self, nodes: int) -> int:
        """The ``max_failures`` to run with on a cluster of ``nodes`` alive nodes.

        >>> RayTrainOptions().failures(1), RayTrainOptions().failures(3), RayTrainOptions(max_failures=1).failures(3)
        (0, 3, 1)
        """
        if self.max_failures is not None:
            return self.max_failures
        return CLUSTER_RETRIES if nodes > 1 else 0

    def torch_threads(self, cpus: float) -> int | None:
        """Torch threads per worker: round(cpus) (at least 1) on CPU workers; None (torch's own) with a GPU."""
        return None if self.use_gpu else max(1, round(cpus))

    def to_dict(self) -> dict[str, Any]:
        """The options as saved in every checkpoint's ``config.json`` (``run``), storage resolved."""
        return {**asdict(self), "storage_path": self.storage()}

    def logging_level(self) -> int:
        return getattr(logging, self.log_level)
