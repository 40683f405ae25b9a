"""What a training run produced: one result type for every loop and for the Ray wrapper."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TrainResult"]


@dataclass
class TrainResult:
    """What a training run produced.

    >>> r = TrainResult(None, [{"step": 5, "epoch": 0, "loss": 0.5}], steps=5)
    >>> r.final_loss, r.metrics["step"]
    (0.5, 5)
    """

    checkpoint: Path | None
    """The final checkpoint directory (model.safetensors, config.json, train_state.pt, history)."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """One dict per report: ``step``, ``epoch``, ``loss``, ``lr`` and the loop's own metrics."""
    steps: int = 0
    """Optimizer steps done, counting those before a resume."""
    seconds: float = 0.0
    """Wall-clock time of this call (a resumed run counts only its own part)."""
    location: str | None = None
    """Where the final checkpoint is kept: ``checkpoint`` itself on local storage, else its URI
    (``s3://...``; ``checkpoint`` is then a local copy)."""

    def __post_init__(self):
        if self.location is None and self.checkpoint is not None:
            self.location = str(self.checkpoint)

    @property
    def final_loss(self) -> float:
        return float(self.history[-1]["loss"]) if self.history else float("nan")

    @property
    def metrics(self) -> dict[str, Any]:
        """The last reported metrics (empty when nothing was reported)."""
        return dict(self.history[-1]) if self.history else {}
