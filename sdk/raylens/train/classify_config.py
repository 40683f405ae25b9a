"""The image-classification training config: a plain dataclass, validated on creation, saved beside
every checkpoint (``config.json`` ``train``).

Defaults are a recipe a user can trust on small data (digits, a few thousand labelled images): AdamW
with decay groups, a linear warm-up then cosine decay, label smoothing 0.1, gradient clipping at 1.0.
RandAugment, MixUp/CutMix, EMA, early stopping and the class-imbalance options are off until asked for.

>>> ClassifyTrainConfig(model="vit_tiny", epochs=20).lr
0.001
>>> ClassifyTrainConfig(imbalance="oversample")
Traceback (most recent call last):
...
ValueError: `imbalance` must be one of ('none', 'sampling', 'focal'), got 'oversample'
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["ClassifyTrainConfig", "IMBALANCE", "PRECISIONS", "IMAGENET_MEAN", "IMAGENET_STD"]

IMBALANCE = ("none", "sampling", "focal")
"""Class-imbalance handling: none; ``sampling`` (rows drawn with inverse class frequency); ``focal`` loss."""
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
"""``auto``: bf16 autocast on a GPU that has it (else fp16 with a grad scaler), fp32 on CPU."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ClassifyTrainConfig:
    """How to train an image classifier (one worker or many)."""

    model: str = "small_resnet"
    """Classifier to train: a registered name (small_cnn, small_resnet, vit_tiny, vit), a timm name, a
    transformers ViT folder or a raylens checkpoint (``raylens models --kind classifier``)."""
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    """More arguments of the model factory (``{"patch_size": 8, "width": 32}``); for names only."""
    reset_head: bool = False
    """Starting from a folder or checkpoint whose head has another number of classes: train a new head."""
    image_size: int = 32
    """Side of the model input: images are resized (shortest side) and centre-cropped to it; a model
    that takes ``image_size`` (ViT) is built for it."""
    epochs: int = 30
    """Passes over the training data (every worker runs all of them)."""
    batch_size: int = 64
    """Images per worker per step (the global batch is ``batch_size * workers``)."""
    lr: float = 1e-3
    """Peak AdamW learning rate (after the warm-up)."""
    min_lr: float = 1e-6
    """Learning rate at the end of the cosine decay."""
    warmup_epochs: float = 1.0
    """Linear warm-up from 0 to ``lr`` over this many epochs (fractions allowed)."""
    weight_decay: float = 0.05
    """AdamW weight decay on weight matrices and convolutions; biases, norms, position embeddings and
    class tokens get none."""
    label_smoothing: float = 0.1
    """Share of each target spread evenly over the classes."""
    grad_clip_norm: float | None = 1.0
    """Clip the global gradient norm to this (None: no clipping)."""
    crop_scale: float = 1.0
    """Smallest crop area of the train-time random resized crop, as a fraction (1.0: no crop)."""
    hflip: bool = False
    """Flip training images left-right at random (off: digits and text must not be mirrored)."""
    translate: float = 0.0
    """Shift each training image by up to this share of its side, at random, in the loop (edges
    repeated): 0.125 moves a 32 px image up to 4 px. Works on cached data, unlike the crop above."""
    randaugment: bool = False
    """Apply RandAugment (torchvision's) to training images."""
    randaugment_ops: int = 2
    """RandAugment: operations per image."""
    randaugment_magnitude: int = 9
    """RandAugment: strength, 0 to 30."""
    mixup_alpha: float = 0.0
    """MixUp's Beta(alpha, alpha); 0 turns it off (timm's recipe: 0.8)."""
    cutmix_alpha: float = 0.0
    """CutMix's Beta(alpha, alpha); 0 turns it off (timm's recipe: 1.0)."""
    mix_prob: float = 1.0
    """Share of batches mixed when MixUp or CutMix is on (both on: one of them, chosen at random)."""
    precision: str = "auto"
    """``auto`` (bf16 autocast on a GPU, fp32 on CPU), ``fp32``, ``bf16`` or ``fp16`` (GPU, with a grad scaler)."""
    ema_decay: float | None = None
    """Keep an exponential moving average of the weights with this decay (0.999 is usual) and
    evaluate it; saved as ema.safetensors in each checkpoint. None: no EMA."""
    teacher: str | None = None
    """A trained classifier checkpoint (a ``model/`` folder from ``raylens train classify``) whose soft
    targets the model also learns (knowledge distillation, Hinton et al.; a CNN teacher lifts a ViT
    trained on little data, as in DeiT). It must predict the same classes in the same order. None: no teacher."""
    distill_alpha: float = 0.5
    """With a teacher: the weight of its soft targets; the rest goes to the labels."""
    distill_temperature: float = 4.0
    """With a teacher: the softmax temperature of both models' logits in the distillation term."""
    early_stop_patience: int = 0
    """Stop when validation top-1 has not improved for this many evaluations (0: never stop early)."""
    early_stop_min_delta: float = 0.0
    """The smallest rise of validation top-1 that counts as an improvement."""
    imbalance: str = "none"
    """Class imbalance: ``none``, ``sampling`` (draw rows with inverse class frequency) or ``focal`` (focal loss)."""
    focal_gamma: float = 2.0
    """With ``imbalance: focal``: how strongly easy examples are down-weighted (0 is cross-entropy)."""
    adversarial: str = "none"
    """Adversarial training: ``none`` or a registered batch transform (``fgsm``, ``pgd`` once the robustness
    tools are installed); it replaces each training batch by attacked images."""
    adversarial_args: dict[str, Any] = field(default_factory=dict)
    """Arguments of the adversarial batch transform (``{"eps": 0.03, "steps": 3}``)."""
    eval_every: int = 1
    """Evaluate on the validation data every N epochs (and after the last)."""
    checkpoint_every: int = 0
    """Also checkpoint every N epochs (0: only at the end); a run resumes from its latest checkpoint."""
    seed: int = 0
    """Seeds the weights, the data order and every random draw (per epoch and worker, so a resumed run
    draws what an uninterrupted one would)."""
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    """Per-channel mean the images are normalised with (saved in the checkpoint for serving)."""
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    """Per-channel standard deviation the images are normalised with."""

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(
                f"`model` must name a classifier (see raylens models --kind classifier), got {self.model!r}"
            )
        if not isinstance(self.model_kwargs, dict) or not all(isinstance(k, str) for k in self.model_kwargs):
            raise ValueError(f"`model_kwargs` must be a mapping of argument names to values, got {self.model_kwargs!r}")
        for name in ("epochs", "batch_size", "image_size", "eval_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
        if self.image_size < 8:
            raise ValueError(f"`image_size` must be >= 8 pixels, got {self.image_size}")
        if not 0 < self.lr < 1:
            raise ValueError(f"`lr` must be in (0, 1), got {self.lr}; typical values are 1e-4 to 3e-3")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"`min_lr` must be in [0, lr={self.lr}], got {self.min_lr}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"`warmup_epochs` must be in [0, epochs={self.epochs}), got {self.warmup_epochs}")
        if self.weight_decay < 0:
            raise ValueError(f"`weight_decay` must be >= 0, got {self.weight_decay}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"`label_smoothing` must be in [0, 1), got {self.label_smoothing}")
        if self.grad_clip_norm is not None and not self.grad_clip_norm > 0:
            raise ValueError(f"`grad_clip_norm` must be > 0, or None for no clipping, got {self.grad_clip_norm}")
        if not 0 < self.crop_scale <= 1:
            raise ValueError(f"`crop_scale` must be in (0, 1] (1 = no random crop), got {self.crop_scale}")
        if not 0 <= self.translate < 0.5:
            raise ValueError(f"`translate` must be in [0, 0.5) (a share of the image side), got {self.translate}")
        if self.randaugment_ops < 0 or not 0 <= self.randaugment_magnitude <= 30:
            raise ValueError(
                f"RandAugment needs `randaugment_ops` >= 0 and `randaugment_magnitude` in [0, 30], "
                f"got {self.randaugment_ops} and {self.randaugment_magnitude}"
            )
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise ValueError(
                f"`mixup_alpha` and `cutmix_alpha` must be >= 0 (0 = off), got {self.mixup_alpha}, {self.cutmix_alpha}"
            )
        if not 0 <= self.mix_prob <= 1:
            raise ValueError(f"`mix_prob` must be in [0, 1], got {self.mix_prob}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"`precision` must be one of {PRECISIONS}, got {self.precision!r}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(
                f"`ema_decay` must be in (0, 1) (0.999 is usual), or None for no EMA, got {self.ema_decay}"
            )
        if not 0 <= self.distill_alpha <= 1:
            raise ValueError(f"`distill_alpha` must be in [0, 1], got {self.distill_alpha}")
        if not self.distill_temperature > 0:
            raise ValueError(f"`distill_temperature` must be > 0, got {self.distill_temperature}")
        if self.teacher is not None and not Path(self.teacher).expanduser().is_dir():
            raise ValueError(
                f"`teacher` {self.teacher!r} is no checkpoint folder; give the model/ folder a classifier run wrote"
            )
        if not isinstance(self.early_stop_patience, int) or self.early_stop_patience < 0:
            raise ValueError(
                f"`early_stop_patience` must be >= 0 evaluations (0 = off), got {self.early_stop_patience!r}"
            )
        if self.early_stop_min_delta < 0:
            raise ValueError(f"`early_stop_min_delta` must be >= 0, got {self.early_stop_min_delta}")
        if self.imbalance not in IMBALANCE:
            raise ValueError(f"`imbalance` must be one of {IMBALANCE}, got {self.imbalance!r}")
        if self.focal_gamma < 0:
            raise ValueError(f"`focal_gamma` must be >= 0 (0 = cross-entropy), got {self.focal_gamma}")
        if not isinstance(self.adversarial, str) or not self.adversarial:
            raise ValueError(f"`adversarial` must be 'none' or a batch transform's name, got {self.adversarial!r}")
        if not isinstance(self.adversarial_args, dict):
            raise ValueError(f"`adversarial_args` must be a mapping, got {self.adversarial_args!r}")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
            raise ValueError(
                f"`checkpoint_every` must be >= 0 epochs (0 = only at the end), got {self.checkpoint_every!r}"
            )
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != 3 or not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
                raise ValueError(f"`{name}` must be 3 numbers (one per channel), got {values!r}")
            setattr(self, name, [float(v) for v in values])
        if min(self.std) <= 0:
            raise ValueError(f"`std` must be > 0 per channel, got {self.std}")

    @property
    def mixing(self) -> bool:
        """Is MixUp or CutMix on?"""
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.mix_prob > 0

    @property
    def row_augment(self) -> bool:
        """Is any per-image augmentation on (random crop, flip, RandAugment)?"""
        return self.crop_scale < 1 or self.hflip or self.randaugment

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassifyTrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ClassifyTrainConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)
