"""CutMix and MixUp for classifiers, batch-level, on numpy arrays or torch tensors.

The same rules as ``timm.data.Mixup`` in its default ``mode="batch"``: each image is mixed with the
image at the mirrored position of the batch (``images.flip(0)``), one lambda per batch drawn from
``Beta(alpha, alpha)``, CutMix or MixUp chosen with ``switch_prob`` when both are on, the whole
batch left unmixed with probability ``1 - prob``, and CutMix's lambda corrected to the pasted box's
area. Targets are one-hot (label-smoothed if asked) mixed with the same lambda. Randomness comes only
from the ``np.random.Generator`` you pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MixUpCutMix", "MixedBatch", "one_hot", "mixup", "cutmix", "cutmix_box"]


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _flip(x):
    return x.flip(0) if _is_torch(x) else x[::-1]


def one_hot(labels, num_classes: int, smoothing: float = 0.0):
    """``(N,)`` int labels to ``(N, num_classes)`` float32 targets, label-smoothed as timm does
    (off value ``smoothing / num_classes``, on value ``1 - smoothing + off``)."""
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    if _is_torch(labels):
        import torch

        out = torch.full((len(labels), num_classes), off, dtype=torch.float32, device=labels.device)
        return out.scatter_(1, labels.long().view(-1, 1), on)
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D int array, got shape {labels.shape} dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got min {labels.min()} max {labels.max()}")
    out = np.full((len(labels), num_classes), off, np.float32)
    out[np.arange(len(labels)), labels] = on
    return out


def _mix_targets(labels, lam: float, num_classes: int, smoothing: float):
    y = one_hot(labels, num_classes, smoothing)
    return y * lam + _flip(y) * (1.0 - lam)


def mixup(images, labels, lam: float, *, num_classes: int, smoothing: float = 0.0):
    """MixUp with a given ``lam``: ``lam * x + (1 - lam) * x.flip(0)``; returns (images, targets)."""
    return images * lam + _flip(images) * (1.0 - lam), _mix_targets(labels, lam, num_classes, smoothing)


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """timm's ``rand_bbox``: a box of side ``sqrt(1 - lam)`` times the image's, centred uniformly at
    random and clipped to the image (an odd side's extra pixel below/right, as timm 1.0 does).
    Returns ``(y0, y1, x0, x1)``."""
    cut = math.sqrt(max(0.0, 1.0 - lam))
    ch, cw = int(height * cut), int(width * cut)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    y0, y1 = max(0, cy - ch // 2), min(height, cy + (ch + 1) // 2)
    x0, x1 = max(0, cx - cw // 2), min(width, cx + (cw + 1) // 2)
    return y0, y1, x0, x1


def cutmix(images, labels, lam: float, rng: np.random.Generator, *, num_classes: int, smoothing: float = 0.0):
    """CutMix with a given ``lam``: paste a box of ``images.flip(0)`` into each image (``(N, C, H, W)``).

    Returns (images, targets, corrected lam, box): the targets use the corrected lam, which is one
    minus the clipped box's share of the image.
    """
    h, w = images.shape[-2:]
    y0, y1, x0, x1 = box = cutmix_box(h, w, lam, rng)
    out = images.clone() if _is_torch(images) else images.copy()
    out[..., y0:y1, x0:x1] = _flip(images)[..., y0:y1, x0:x1]
    lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
    return out, _mix_targets(labels, lam, num_classes, smoothing), lam, box


@dataclass(frozen=True)
class MixedBatch:
    images: Any
    """Mixed images, same type, shape and dtype as the input."""
    targets: Any
    """``(N, num_classes)`` float32 soft targets (rows sum to 1)."""
    lam: float
    """Weight of each image's own content (after CutMix's area correction)."""
    kind: str
    """``"mixup"``, ``"cutmix"`` or ``"none"``."""


@dataclass(frozen=True)
class MixUpCutMix:
    """Batch CutMix/MixUp like ``timm.data.Mixup(mode="batch")``; call with ``(images, labels, rng)``."""

    num_classes: int
    mixup_alpha: float = 0.8
    """Beta(alpha, alpha) for MixUp's lambda; 0 turns MixUp off."""
    cutmix_alpha: float = 1.0
    """Beta(alpha, alpha) for CutMix's lambda; 0 turns CutMix off."""
    prob: float = 1.0
    """Probability that a batch is mixed at all."""
    switch_prob: float = 0.5
    """When both are on, probability of CutMix instead of MixUp."""
    label_smoothing: float = 0.1
    """timm's default smoothing of the one-hot targets."""

    def __post_init__(self):
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise ValueError(
                f"alphas must be >= 0, got mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha}"
            )
        for name in ("prob", "switch_prob", "label_smoothing"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    def __call__(self, images, labels, rng: np.random.Generator) -> MixedBatch:
        if images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"expected (N, C, H, W) images and N labels, got {tuple(images.shape)} and {len(labels)}")
        kind = self._choose(rng)
        if kind == "none":
            return MixedBatch(images, one_hot(labels, self.num_classes, self.label_smoothing), 1.0, kind)
        alpha = self.cutmix_alpha if kind == "cutmix" else self.mixup_alpha
        lam = float(rng.beta(alpha, alpha))
        if kind == "cutmix":
            mixed, targets, lam, _ = cutmix(
                images, labels, lam, rng, num_classes=self.num_classes, smoothing=self.label_smoothing
            )
        else:
            mixed, targets = mixup(images, labels, lam, num_classes=self.num_classes, smoothing=self.label_smoothing)
        return MixedBatch(mixed, targets, lam, kind)

    def _choose(self, rng: np.random.Generator) -> str:
        on_mix, on_cut = self.mixup_alpha > 0, self.cutmix_alpha > 0
        if not (on_mix or on_cut) or rng.random() >= self.prob:
            return "none"
        if on_mix and on_cut:
            return "cutmix" if rng.random() < self.switch_prob else "mixup"
        return "cutmix" if on_cut else "mixup"
