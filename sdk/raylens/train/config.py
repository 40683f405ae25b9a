"""The CLIP training config: a plain dataclass, validated on creation, saved beside every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["ClipTrainConfig", "LOSSES", "PRECISIONS", "DEFAULT_TEMPLATES"]

LOSSES = ("clip", "siglip")
PRECISIONS = ("fp32", "amp", "amp_bf16", "bf16")
DEFAULT_TEMPLATES = ("a photo of a {}.",)


@dataclass
class ClipTrainConfig:
    """How to train a CLIP model with the contrastive loss (one worker or many)."""

    model: str = "clip-tiny"
    """Model name: ours or any open_clip architecture (``raylens models`` lists them)."""
    pretrained: str | None = None
    """Start from these weights: a raylens checkpoint dir, a weights file, or an open_clip tag."""
    max_steps: int = 600
    """Optimizer steps in total (every worker runs all of them)."""
    batch_size: int = 64
    """Images per worker per step; the contrastive batch is ``batch_size * world_size``."""
    lr: float = 3e-3
    """Peak learning rate of the cosine schedule (after the linear warm-up)."""
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
    """Log metrics every N steps (kept in the history; on Ray only checkpoints go through ``ray.train.report``)."""
    checkpoint_every: int = 0
    """Also checkpoint every N steps (0: only at the end)."""
    loss: str = "clip"
    """``clip`` (softmax InfoNCE, open_clip ``ClipLoss``) or ``siglip`` (pairwise sigmoid, ``SigLipLoss``;
    the model gets a learnable ``logit_bias`` initialised to -10)."""
    accum_steps: int = 1
    """Gradient accumulation: each optimizer step sees ``accum_steps`` micro-batches of ``batch_size``.
    Features of the whole accumulated batch are cached (as open_clip's ``--accum-freq``), so the
    contrastive loss still sees every negative of the large batch."""
    grad_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, ~30% more compute)."""
    precision: str = "fp32"
    """``fp32``; ``amp`` (fp16 autocast + GradScaler, CUDA); ``amp_bf16`` (bf16 autocast, CUDA or CPU);
    ``bf16`` is an alias of ``amp_bf16``. ``amp`` falls back to fp32 on CPU (fp16 CPU kernels are slow)."""
    grad_clip_norm: float | None = None
    """Clip the global gradient norm to this value (None: no clipping)."""
    lock_image: bool = False
    """Freeze the image tower (LiT-style fine-tuning); ``lock_image_unlocked_groups`` last groups stay trainable."""
    lock_image_unlocked_groups: int = 0
    """With ``lock_image``: how many of the image tower's last layer groups stay trainable."""
    lock_text: bool = False
    """Freeze the text tower; ``lock_text_unlocked_layers`` last layers stay trainable."""
    lock_text_unlocked_layers: int = 0
    """With ``lock_text``: how many of the text tower's last layers stay trainable."""
    eval_every: int = 0
    """Evaluate (zero-shot accuracy, retrieval recall) every N steps and at the end; 0: only at the
    end when eval data is given."""
    zeroshot_classes: list[str] | None = None
    """Class names for zero-shot accuracy; eval rows carry ``label`` (index into this list)."""
    zeroshot_templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    """Prompt templates with one ``{}`` for the class name; their embeddings are averaged per class."""

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
        if self.loss not in LOSSES:
            raise ValueError(f"`loss` must be one of {LOSSES}, got {self.loss!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"`precision` must be one of {PRECISIONS}, got {self.precision!r}")
        if not isinstance(self.accum_steps, int) or self.accum_steps < 1:
            raise ValueError(f"`accum_steps` must be a positive integer, got {self.accum_steps!r}")
        if self.grad_clip_norm is not None and self.grad_clip_norm <= 0:
            raise ValueError(f"`grad_clip_norm` must be > 0 or None, got {self.grad_clip_norm}")
        if self.eval_every < 0:
            raise ValueError(f"`eval_every` must be >= 0 (0 = only at the end), got {self.eval_every}")
        if (
            self.lock_image
            and self.lock_text
            and self.lock_image_unlocked_groups == 0
            and self.lock_text_unlocked_layers == 0
        ):
            raise ValueError("both towers are locked with nothing unlocked: there is nothing left to train")
        bad = [t for t in self.zeroshot_templates if t.count("{}") != 1]
        if bad or not self.zeroshot_templates:
            raise ValueError(
                f"each zero-shot template needs exactly one '{{}}' for the class name, got {bad or 'none'}"
            )
        if self.zeroshot_classes is not None and len(self.zeroshot_classes) < 2:
            raise ValueError(f"zero-shot needs at least 2 classes, got {self.zeroshot_classes}")
        if self.checkpoint_every < 0:
            raise ValueError(f"`checkpoint_every` must be >= 0 (0 = only at the end), got {self.checkpoint_every}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClipTrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ClipTrainConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)
