"""Grad-CAM heatmaps and overlay grids: where in the image a classifier looked for its answer.

We use captum's ``LayerGradCam`` (maintained by the PyTorch team; captum also brings the FGSM/PGD
attacks of :mod:`raylens.classify.robust`, so one dependency serves both, with no OpenCV).
What is ours: choosing the layer, and turning a vision transformer's tokens into the feature grid
Grad-CAM needs (the patch tokens of a block, ``(N, T, D)``, are viewed as ``(N, D, h, w)``).

* A CNN's default layer is the last module whose output is a feature map larger than 1x1 (a
  ResNet's last stage). A ViT's is the first LayerNorm of its last block (``norm1``,
  ``layernorm_before``): later layers only pass gradients to the class token.
* ``layer`` names any module (``model.named_modules()`` names, e.g. ``"layer3"``).

>>> import torch
>>> from raylens.models import create_model
>>> m = create_model("timm/test_resnet", num_classes=3).eval()
>>> cam = grad_cam(m, torch.rand(2, 3, 32, 32))
>>> cam.heatmaps.shape, cam.layer
((2, 32, 32), 'layer3')
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from raylens.classify.common import IMAGENET_MEAN, IMAGENET_STD, PixelModel, check_labels, check_pixels

__all__ = ["GradCamResult", "grad_cam", "find_cam_layer", "overlay", "save_cam_grid"]

_TOKEN_NORMS = ("norm1", "layernorm_before")


@dataclass
class GradCamResult:
    """Grad-CAM of a batch: one heatmap per image, for the class it was computed for."""

    heatmaps: np.ndarray
    """``(N, H, W)`` float32 in [0, 1] (each map scaled by its own maximum; all zero if nothing helped the class)."""
    target: np.ndarray
    """``(N,)`` the class each map explains (the predicted one unless ``target`` was given)."""
    predicted: np.ndarray
    """``(N,)`` the model's predicted class."""
    probability: np.ndarray
    """``(N,)`` the probability the model gives ``target``."""
    layer: str
    """The module whose activations were weighted."""


def _module(model: torch.nn.Module, name: str) -> torch.nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        close = [n for n in modules if n and (name in n or n.split(".")[-1] == name.split(".")[-1])][:8]
        raise ValueError(f"`layer` {name!r} is not a module of {type(model).__name__}; close names: {close}")
    return modules[name]


def _grid_side(tokens: int) -> tuple[int, int] | None:
    """(prefix tokens, grid side) when ``tokens`` = a few class/register tokens + a square grid."""
    for prefix in range(0, 9):
        side = math.isqrt(tokens - prefix) if tokens > prefix else 0
        if side > 1 and side * side == tokens - prefix:
            return prefix, side
    return None


def find_cam_layer(model: torch.nn.Module, example: torch.Tensor) -> str:
    """The default Grad-CAM layer of ``model`` for inputs like ``example`` (see the module docstring)."""
    order: list[tuple[str, tuple[int, ...]]] = []
    hooks = []
    for name, mod in model.named_modules():
        if name:
            hooks.append(
                mod.register_forward_hook(lambda m, i, o, n=name: order.append((n, tuple(getattr(o, "shape", ())))))
            )
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in hooks:
            h.remove()
    norms = [n for n, s in order if n.split(".")[-1] in _TOKEN_NORMS and len(s) == 3 and _grid_side(s[1])]
    if norms:  # a transformer (its attention's 4-D tensors are no feature maps)
        return norms[-1]
    maps = [n for n, s in order if len(s) == 4 and s[2] * s[3] > 1]
    if maps:
        return maps[-1]
    raise ValueError(
        f"found no feature map (N, C, H, W) or transformer block norm in {type(model).__name__}; "
        "name the layer to explain with `layer=` (a name from model.named_modules())"
    )


@contextlib.contextmanager
def _token_grid(layer: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """A stand-in module Grad-CAM can hook whose output is ``layer``'s patch tokens as a feature grid."""
    grid = torch.nn.Identity()

    def hook(_module, _inputs, out):
        if not isinstance(out, torch.Tensor) or out.ndim != 3 or _grid_side(out.shape[1]) is None:
            return None
        prefix, side = _grid_side(out.shape[1])
        n, _, d = out.shape
        g = grid(out[:, prefix:].transpose(1, 2).reshape(n, d, side, side))
        return torch.cat([out[:, :prefix], g.reshape(n, d, side * side).transpose(1, 2)], dim=1)

    handle = layer.register_forward_hook(hook)
    try:
        yield grid
    finally:
        handle.remove()


def grad_cam(
    model: torch.nn.Module,
    pixels: torch.Tensor | np.ndarray,
    *,
    target: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    layer: str | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> GradCamResult:
    """Grad-CAM heatmaps of ``model`` for ``pixels`` (``(N, 3, S, S)`` in [0, 1]).

    Args:
        model: any classifier (a ``torch.nn.Module`` returning logits, or an output with ``.logits``).
        pixels: the images before normalisation; ``mean``/``std`` are the model's normalisation.
        target: the class to explain per image (default: the predicted class).
        layer: the module to weight (default: :func:`find_cam_layer`).
    """
    from captum.attr import LayerAttribution, LayerGradCam

    x = check_pixels(pixels)
    was_training = model.training
    model.eval()
    net = PixelModel(model, mean, std).eval()
    try:
        with torch.no_grad():
            probs = torch.softmax(net(x), dim=1)
        predicted = probs.argmax(1)
        tgt = predicted if target is None else check_labels(target, len(x), probs.shape[1], "target")
        name = layer or find_cam_layer(model, net.normalize(x))
        mod = _module(model, name)
        with _token_grid(mod) as grid:
            probe: list[int] = []
            h = mod.register_forward_hook(lambda m, i, o: probe.append(getattr(o, "ndim", 0)))
            with torch.no_grad():
                net(x[:1])
            h.remove()
            hooked = grid if probe and probe[0] == 3 else mod
            cams = LayerGradCam(net, hooked).attribute(x, target=tgt, relu_attributions=True)
        cams = LayerAttribution.interpolate(cams.detach(), tuple(x.shape[2:]), interpolate_mode="bilinear")[:, 0]
    finally:
        model.train(was_training)
    cams = cams.clamp_min(0)
    peak = cams.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    heat = torch.where(peak > 1e-12, cams / peak, torch.zeros_like(cams))
    return GradCamResult(
        heatmaps=heat.numpy().astype(np.float32),
        target=tgt.numpy(),
        predicted=predicted.numpy(),
        probability=probs.gather(1, tgt.view(-1, 1))[:, 0].numpy(),
        layer=name,
    )


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """``image`` (``(H, W, 3)`` uint8) with ``heatmap`` (``(H, W)`` in [0, 1]) blended on top, as uint8."""
    from matplotlib import colormaps

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"`image` must be (H, W, 3) uint8, got shape {image.shape} dtype {image.dtype}")
    if heatmap.shape != image.shape[:2]:
        raise ValueError(f"`heatmap` must have the image's size {image.shape[:2]}, got {heatmap.shape}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"`alpha` must be in [0, 1], got {alpha}")
    colour = colormaps[cmap](np.clip(heatmap, 0, 1))[..., :3]
    out = (1 - alpha) * image.astype(np.float32) / 255.0 + alpha * colour
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


def save_cam_grid(
    pixels: torch.Tensor | np.ndarray,
    result: GradCamResult,
    path: str | Path,
    *,
    classes: Sequence[str] | None = None,
    labels: Sequence[int] | np.ndarray | None = None,
    cols: int = 6,
) -> Path:
    """A PNG grid: each image beside its Grad-CAM overlay, titled with the prediction (and truth)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = check_pixels(pixels)
    if len(x) != len(result.heatmaps):
        raise ValueError(f"{len(x)} images but {len(result.heatmaps)} heatmaps; pass the images Grad-CAM ran on")
    if cols < 1:
        raise ValueError(f"`cols` must be >= 1, got {cols}")
    name = (lambda i: classes[int(i)]) if classes else (lambda i: str(int(i)))
    images = (x.permute(0, 2, 3, 1).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
    n = len(images)
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(2.0 * 2 * cols, 2.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, cols)
        axes[r][2 * c].imshow(images[i], interpolation="nearest")
        title = f"pred {name(result.predicted[i])}"
        if labels is not None:
            title += f" / true {name(labels[i])}"
        axes[r][2 * c].set_title(title, fontsize=8)
        axes[r][2 * c + 1].imshow(overlay(images[i], result.heatmaps[i]), interpolation="nearest")
        axes[r][2 * c + 1].set_title(f"CAM {name(result.target[i])} p={result.probability[i]:.2f}", fontsize=8)
    fig.suptitle(f"Grad-CAM ({result.layer})", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
