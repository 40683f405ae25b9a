"""What every classification tool shares: logits of any classifier, pixel-space models, accuracy.

The tools (Grad-CAM, attacks, compression) work on **pixel tensors**: ``(N, 3, S, S)`` float32 in
``[0, 1]``, before the model's mean/std normalisation. An attack's ``eps`` is then a distance in
pixel units (``8/255`` means eight grey levels), whatever normalisation the model was trained with;
:class:`PixelModel` puts the normalisation in front of the model.

>>> import torch
>>> m = PixelModel(torch.nn.Conv2d(3, 2, 1), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
>>> m(torch.zeros(4, 3, 8, 8)).shape
torch.Size([4, 2, 8, 8])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PixelModel",
    "logits_of",
    "check_pixels",
    "check_labels",
    "predict_logits",
    "accuracy",
    "count_parameters",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def logits_of(output: Any) -> torch.Tensor:
    """The logits tensor of a model's output (a tensor, or an object with ``.logits`` as transformers return)."""
    out = getattr(output, "logits", output)
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"a classifier must return a logits tensor (or an output with .logits), got {type(out).__name__}"
        )
    return out


class PixelModel(torch.nn.Module):
    """``model`` behind its mean/std normalisation: ``[0, 1]`` pixel tensors in, logits out."""

    def __init__(
        self, model: torch.nn.Module, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ):
        super().__init__()
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"`mean` and `std` need 3 values each with std > 0, got mean={mean}, std={std}")
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean) / self.std

    def pixels(self, normalized: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`normalize`."""
        return normalized * self.std + self.mean

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model(self.normalize(pixels)))


def check_pixels(pixels: Any, name: str = "pixels") -> torch.Tensor:
    """``pixels`` as a float32 ``(N, 3, H, W)`` tensor in ``[0, 1]``; a clear error otherwise."""
    if isinstance(pixels, np.ndarray):
        pixels = torch.from_numpy(pixels)
    if not isinstance(pixels, torch.Tensor):
        raise TypeError(f"`{name}` must be a (N, 3, H, W) tensor or array in [0, 1], got {type(pixels).__name__}")
    if pixels.ndim != 4 or pixels.shape[1] != 3 or pixels.shape[0] == 0:
        raise ValueError(f"`{name}` must have shape (N>=1, 3, H, W), got {tuple(pixels.shape)}")
    pixels = pixels.float()
    lo, hi = float(pixels.min()), float(pixels.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(
            f"`{name}` must be pixel values in [0, 1] (before mean/std normalisation), got values in [{lo:.3g}, {hi:.3g}]; "
            "divide uint8 images by 255, or undo the normalisation"
        )
    return pixels


def check_labels(labels: Any, n: int, num_classes: int | None = None, name: str = "labels") -> torch.Tensor:
    """``labels`` as an int64 ``(n,)`` tensor of class indices; a clear error otherwise."""
    t = torch.as_tensor(np.asarray(labels))
    if t.ndim != 1 or len(t) != n or t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"`{name}` must be {n} integer class indices, got shape {tuple(t.shape)} dtype {t.dtype}")
    t = t.long()
    if len(t) and (int(t.min()) < 0 or (num_classes is not None and int(t.max()) >= num_classes)):
        raise ValueError(f"`{name}` must lie in [0, {num_classes}), got values in [{int(t.min())}, {int(t.max())}]")
    return t


@torch.no_grad()
def predict_logits(
    forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """``forward`` over ``x`` in batches (no gradients): the stacked logits."""
    outs = [logits_of(forward(x[i : i + batch_size])).float() for i in range(0, len(x), batch_size)]
    return torch.cat(outs)


def accuracy(
    forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, labels: torch.Tensor, batch_size: int = 256
) -> float:
    """Top-1 accuracy of ``forward`` on ``x`` (fraction in [0, 1])."""
    pred = predict_logits(forward, x, batch_size).argmax(1)
    return float((pred == labels.to(pred.device)).float().mean())


def count_parameters(model: torch.nn.Module) -> int:
    """The number of parameter elements of a torch model."""
    return int(sum(p.numel() for p in model.parameters()))
