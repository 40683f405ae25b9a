"""The CLIP training config: a plain dataclass, validated on creation, saved beside every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["ClipTrainConfig"]


@dataclass
class ClipTrainConfig:
    """How to train a CLIP model with the contrastive loss (one worker or many)."""

    model: str = "clip-tiny"
    """Registry or open_clip architecture name (see ``raylens.models.list_models()``)."""
    pretrained: str | None = None
    """Start from these weights: a raylens checkpoint dir, a weights file, or an open_clip tag."""
    max_steps: int = 400
    """Optimizer steps in total (every worker runs all of them)."""
    batch_size: int = 64
    """Images per worker per step; the contrastive batch is ``batch_size * world_size``."""
    lr: float = 2e-3
    """Peak learning rate of the cosine schedule."""
    warmup_steps: int = 30
    """Linear warm-up steps before the cosine decay."""
    weight_decay: float = 0.1
    """AdamW weight decay, applied to weight matrices only (not to norms, biases, logit scale)."""
    local_loss: bool = True
    """open_clip's ``local_loss``: each worker scores its own rows against all gathered features."""
    gather_with_grad: bool = True
    """open_clip's ``gather_with_grad``: gradients flow through the all-gather (exact global loss)."""
    seed: int = 0
    """Seeds torch and the data order; every worker adds its rank."""
    log_every: int = 10
    """Report metrics every N steps (``ray.train.report`` is a barrier: every worker calls it)."""
    checkpoint_every: int = 0
    """Also checkpoint every N steps (0: only at the end)."""

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "log_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)!r}")
        if self.batch_size < 2:
            raise ValueError(f"`batch_size` must be >= 2 for a contrastive loss, got {self.batch_size}")
        if not (0 < self.lr < 1):
            raise ValueError(f"`lr` must be in (0, 1), got {self.lr}; typical values are 1e-4 to 5e-3")
        if self.warmup_steps < 0 or self.warmup_steps >= self.max_steps:
            raise ValueError(f"`warmup_steps` must be in [0, max_steps={self.max_steps}), got {self.warmup_steps}")
        if self.weight_decay < 0:
            raise ValueError(f"`weight_decay` must be >= 0, got {self.weight_decay}")
        if self.checkpoint_every < 0:
            raise ValueError(f"`checkpoint_every` must be >= 0 (0 = only at the end), got {self.checkpoint_every}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ClipTrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ClipTrainConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)
