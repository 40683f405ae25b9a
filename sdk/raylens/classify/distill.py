"""Knowledge distillation (Hinton et al., 2015): a small student learns a teacher's soft targets.

The loss is ``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, y)``.
The ``T^2`` keeps the soft term's gradients on the scale of the hard one whatever the temperature.

>>> import torch
>>> s = torch.tensor([[2.0, 0.0]]); y = torch.tensor([0])
>>> float(distillation_loss(s, s, y, temperature=4.0, alpha=1.0))  # a student equal to its teacher
0.0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from raylens.classify.finetune import FineTuneConfig, FineTuneResult, fine_tune

__all__ = ["DistillConfig", "distillation_loss", "distill"]


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 4.0,
    alpha: float = 0.7,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """KL at ``temperature`` (weight ``alpha``, scaled by ``T^2``) plus cross-entropy (weight ``1 - alpha``).

    ``labels`` are class indices or class probabilities (MixUp); the result is the batch mean.
    """
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature!r}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"`alpha` must be in [0, 1], got {alpha!r}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
            "must have the same shape (the same classes, in the same order)"
        )
    t = float(temperature)
    soft = F.kl_div(
        F.log_softmax(student_logits / t, dim=-1),
        F.log_softmax(teacher_logits.detach() / t, dim=-1),
        log_target=True,
        reduction="batchmean",
    )
    hard = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    return alpha * t * t * soft + (1 - alpha) * hard


@dataclass
class DistillConfig(FineTuneConfig):
    """:class:`~raylens.classify.finetune.FineTuneConfig` plus the distillation weights."""

    temperature: float = 4.0
    """Softmax temperature of both models' logits in the KL term."""
    alpha: float = 0.7
    """Weight of the teacher's soft targets (1 - alpha goes to the labels)."""

    def __post_init__(self):
        super().__post_init__()
        if not self.temperature > 0:
            raise ValueError(f"`temperature` must be > 0, got {self.temperature!r}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"`alpha` must be in [0, 1], got {self.alpha!r}")


def distill(
    teacher: torch.nn.Module,
    student: torch.nn.Module,
    pixels: torch.Tensor,
    labels: Sequence[int] | torch.Tensor,
    config: DistillConfig | None = None,
    *,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> FineTuneResult:
    """Train ``student`` (in place) on ``pixels``/``labels`` and ``teacher``'s soft targets.

    Both models take the same normalisation (``config.mean``/``config.std``) and predict the same
    classes in the same order; the teacher is only run, never changed.
    """
    cfg = config or DistillConfig()
    flags = [(p, p.requires_grad) for p in teacher.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        return fine_tune(
            student, pixels, labels, cfg, teacher=teacher, temperature=cfg.temperature, alpha=cfg.alpha, val=val
        )
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
