"""Where a training loop runs: rank, world size, reporting and checkpoints.

The loop talks to a :class:`TrainContext`; :class:`LocalContext` runs it in-process (unit tests,
notebooks), ``raylens.train.ray_clip.RayContext`` runs it inside a Ray Train worker.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = ["TrainContext", "LocalContext"]


class TrainContext(Protocol):
    rank: int
    world_size: int

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | Path | None = None) -> None:
        """Record metrics (and persist ``checkpoint_dir`` when given). Every worker calls it."""

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint to resume from, or None for a fresh start."""


@dataclass
class LocalContext:
    """A one-process context: metrics kept in memory, checkpoints copied under ``storage``."""

    storage: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="raylens-train-")))
    rank: int = 0
    world_size: int = 1
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | Path | None = None) -> None:
        self.history.append(dict(metrics))
        if checkpoint_dir is not None:
            dest = Path(self.storage) / f"checkpoint_{len(self.checkpoints):06d}"
            shutil.copytree(checkpoint_dir, dest, dirs_exist_ok=True)
            self.checkpoints.append(dest)

    def latest_checkpoint(self) -> Path | None:
        return self.checkpoints[-1] if self.checkpoints else None
