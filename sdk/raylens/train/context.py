"""Where a training loop runs: rank, world size, device, reporting and checkpoints.

Every loop (CLIP, fusion, and the kinds that come next) is a plain function that talks to a
:class:`TrainContext`. :class:`LocalContext` runs it in-process (unit tests, notebooks);
``raylens.train.ray_fit.RayContext`` runs it inside a Ray Train worker.

>>> import tempfile
>>> ctx = LocalContext(storage=tempfile.mkdtemp(), device="cpu")
>>> ctx.rank, ctx.world_size, ctx.latest_checkpoint()
(0, 1, None)
>>> ctx.report({"step": 1, "loss": 0.5}) is None, ctx.history
(True, [{'step': 1, 'loss': 0.5}])
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = ["TrainContext", "LocalContext"]


def _default_device() -> str:
    from raylens.runtime import pick_device

    return pick_device()


class TrainContext(Protocol):
    """What a loop may ask of the place it runs in."""

    rank: int
    """This worker's rank (0 writes checkpoints and evaluates)."""
    world_size: int
    """Workers in the run; above 1 the loop wraps its model in DDP (the process group is set up)."""
    device: str
    """The torch device of this worker (``cpu``, ``cuda``, ``cuda:0``)."""
    run: dict[str, Any]
    """The run's options (Ray's, say), saved in every checkpoint's ``config.json``."""

    def report(
        self, metrics: dict[str, Any], checkpoint_dir: str | Path | None = None, *, checkpoint_step: bool = False
    ) -> Path | None:
        """Record metrics (and persist ``checkpoint_dir`` when given). Every worker calls it.

        ``checkpoint_step``: another rank persists a checkpoint at this step (ranks > 0 of a checkpoint
        step say so, since they pass no directory). Returns where the persisted checkpoint now is when
        it lies on local disk, else None."""

    def latest_checkpoint(self) -> Path | None:
        """A local directory holding the checkpoint to resume from, or None for a fresh start."""


@dataclass
class LocalContext:
    """A one-process context: metrics kept in memory, checkpoints copied under ``storage``.

    Calling a loop again with the same context resumes it from its latest checkpoint.
    """

    storage: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="raylens-train-")))
    """Where reported checkpoints are copied (``checkpoint_000000``, ...)."""
    rank: int = 0
    world_size: int = 1
    device: str = field(default_factory=_default_device)
    """The torch device; default CUDA when present, else CPU."""
    run: dict[str, Any] = field(default_factory=dict)
    """Saved in every checkpoint's ``config.json`` as ``run``."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """Every metrics dict reported, in order."""
    checkpoints: list[Path] = field(default_factory=list)
    """Every checkpoint kept, oldest first."""

    def __post_init__(self):
        if self.world_size != 1 or self.rank != 0:
            raise ValueError(
                f"LocalContext runs one process: `rank` must be 0 and `world_size` 1, got {self.rank} and "
                f"{self.world_size}; use raylens.train.ray_fit.fit for several workers"
            )
        self.storage = Path(self.storage)

    def report(
        self, metrics: dict[str, Any], checkpoint_dir: str | Path | None = None, *, checkpoint_step: bool = False
    ) -> Path | None:
        self.history.append(dict(metrics))
        if checkpoint_dir is None:
            return None
        dest = self.storage / f"checkpoint_{len(self.checkpoints):06d}"
        if dest.exists():  # left by an earlier context on the same storage: replace, never merge
            shutil.rmtree(dest)
        shutil.copytree(checkpoint_dir, dest)
        self.checkpoints.append(dest)
        return dest

    def latest_checkpoint(self) -> Path | None:
        return self.checkpoints[-1] if self.checkpoints else None
