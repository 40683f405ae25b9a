"""Contrastive losses for CLIP training, from open_clip, behind one call signature.

``make_loss(cfg, rank, world_size)`` returns ``loss(out) -> scalar`` where ``out`` is the model's
output dict (``image_features``, ``text_features``, ``logit_scale`` and, for SigLIP, ``logit_bias``).
Both losses work across workers: CLIP gathers features (``local_loss``/``gather_with_grad``), SigLIP
passes text features round the ring of workers (open_clip's ``bidir`` exchange).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from raylens.train.config import ClipTrainConfig

__all__ = ["make_loss", "clip_loss_reference", "siglip_loss_reference", "SIGLIP_INIT_BIAS", "SIGLIP_INIT_SCALE"]

SIGLIP_INIT_BIAS = -10.0
"""SigLIP's initial logit bias (Zhai et al. 2023): starts the pairwise sigmoid near 'no match'."""
SIGLIP_INIT_SCALE = 2.302585092994046
"""log(10): SigLIP's initial temperature."""

Loss = Callable[[dict[str, Any]], torch.Tensor]


def make_loss(cfg: ClipTrainConfig, rank: int = 0, world_size: int = 1) -> Loss:
    """The training loss chosen by ``cfg.loss``, wired for ``world_size`` workers."""
    from open_clip.loss import ClipLoss, SigLipLoss

    if cfg.loss == "siglip":
        fn = SigLipLoss(cache_labels=True, rank=rank, world_size=world_size)

        def siglip(out: dict[str, Any]) -> torch.Tensor:
            if out.get("logit_bias") is None:
                raise ValueError("SigLIP needs a model with a logit_bias (create it with init_logit_bias=-10)")
            return fn(out["image_features"], out["text_features"], out["logit_scale"], out["logit_bias"])

        return siglip
    fn = ClipLoss(
        local_loss=cfg.local_loss,
        gather_with_grad=cfg.gather_with_grad,
        cache_labels=True,
        rank=rank,
        world_size=world_size,
    )
    return lambda out: fn(out["image_features"], out["text_features"], out["logit_scale"])


def clip_loss_reference(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """The CLIP loss written out (Radford et al. 2021): mean of image->text and text->image cross-entropy."""
    logits = logit_scale * img @ txt.T
    target = torch.arange(len(img))
    return 0.5 * (
        torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)
    )


def siglip_loss_reference(
    img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor
) -> torch.Tensor:
    """The SigLIP loss written out (Zhai et al. 2023, eq. 1): -sum log sigmoid(z_ij (t x_i.y_j + b)) / |B|."""
    logits = logit_scale * img @ txt.T + logit_bias
    z = 2 * torch.eye(len(img)) - 1
    return -torch.nn.functional.logsigmoid(z * logits).sum() / len(img)
