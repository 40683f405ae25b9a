"""Volume rendering: the one alpha-compositing function every NeRF model renders through.

Samples are *packed*: a flat list of samples, each with the index of the ray it belongs to, sorted
by ray and by distance along the ray. A model with a fixed number of samples per ray (vanilla NeRF)
passes ``ray_indices = arange(R).repeat_interleave(S)``; a model that skips empty space (the fast
grid) passes only the samples it kept. The maths is the same (Max 1995, Mildenhall et al. 2020)::

    alpha_i = 1 - exp(-sigma_i * delta_i)
    T_i     = prod_{j < i} (1 - alpha_j)          (transmittance up to sample i, per ray)
    w_i     = T_i * alpha_i
    rgb     = sum_i w_i c_i + (1 - sum_i w_i) * background

>>> import torch
>>> out = volume_render(
...     sigmas=torch.tensor([0.0, 1e4]), rgbs=torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]),
...     deltas=torch.tensor([0.1, 0.1]), t_mids=torch.tensor([1.0, 2.0]),
...     ray_indices=torch.tensor([0, 0]), n_rays=1, background=torch.tensor([0.0, 0.0, 1.0]))
>>> out.rgb.round(decimals=3).tolist(), out.opacity.round(decimals=3).tolist(), out.depth.round(decimals=3).tolist()
([[0.0, 1.0, 0.0]], [1.0], [2.0])
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["RenderOutput", "volume_render", "transmittance", "background_tensor"]


@dataclass
class RenderOutput:
    """What rendering a batch of rays gives."""

    rgb: torch.Tensor
    """(R, 3) composited colour, background included."""
    depth: torch.Tensor
    """(R,) expected distance along the ray, ``sum_i w_i t_i`` (0 where nothing was hit)."""
    opacity: torch.Tensor
    """(R,) accumulated opacity ``sum_i w_i`` in [0, 1]."""
    weights: torch.Tensor
    """(N,) per-sample compositing weights ``w_i`` (packed like the samples)."""
    aux: tuple[RenderOutput, ...] = field(default_factory=tuple)
    """Intermediate renders that are supervised too (vanilla NeRF's coarse pass)."""
    regularizer: torch.Tensor | None = None
    """A model's own loss term to add in training (the fast model's density sparsity), or None."""


def transmittance(sigma_delta: torch.Tensor, ray_indices: torch.Tensor, n_rays: int) -> torch.Tensor:
    """Exclusive transmittance ``T_i = exp(-sum_{j<i, same ray} sigma_j delta_j)`` of packed samples.

    The running sum is taken over all samples at once in float64 and the sum up to each ray's first
    sample is subtracted, so rays do not leak into each other and precision holds over long batches.
    """
    if sigma_delta.numel() == 0:
        return sigma_delta
    csum = torch.cumsum(sigma_delta.double(), 0)
    exclusive = csum - sigma_delta.double()
    # each ray's first sample: the running sum before it is that ray's offset
    counts = torch.bincount(ray_indices, minlength=n_rays)
    starts = torch.cumsum(counts, 0) - counts
    offset = exclusive[starts.clamp(max=exclusive.numel() - 1)]
    return torch.exp(-(exclusive - offset[ray_indices])).to(sigma_delta.dtype)


def background_tensor(background: str | float | tuple[float, float, float] | torch.Tensor, device) -> torch.Tensor:
    """``"white"``, ``"black"``, a grey level or an RGB triple -> a (3,) tensor in [0, 1]."""
    if isinstance(background, torch.Tensor):
        return background.to(device=device, dtype=torch.float32).reshape(-1).expand(3)
    if isinstance(background, str):
        named = {"white": 1.0, "black": 0.0}
        if background not in named:
            raise ValueError(f"background must be 'white', 'black', a grey level or an RGB triple, got {background!r}")
        background = named[background]
    value = torch.as_tensor(background, dtype=torch.float32, device=device).reshape(-1)
    if value.numel() not in (1, 3) or bool(((value < 0) | (value > 1)).any()):
        raise ValueError(f"background must be in [0, 1] (one grey level or 3 values), got {background!r}")
    return value.expand(3).clone()


def volume_render(
    sigmas: torch.Tensor,
    rgbs: torch.Tensor,
    deltas: torch.Tensor,
    t_mids: torch.Tensor,
    ray_indices: torch.Tensor,
    n_rays: int,
    background: torch.Tensor | None = None,
) -> RenderOutput:
    """Alpha-composite packed samples into pixels.

    Args:
        sigmas: (N,) non-negative densities.
        rgbs: (N, 3) colours in [0, 1].
        deltas: (N,) sample lengths along the ray (world units; ``|d| = 1``).
        t_mids: (N,) distance of each sample along its ray (for depth).
        ray_indices: (N,) int64 ray of each sample, non-decreasing.
        n_rays: R, the number of rays (rays without samples render as background).
        background: (3,) or (R, 3) colour behind the scene; None leaves it black (add it yourself).

    Returns:
        A :class:`RenderOutput`; every output is differentiable w.r.t. ``sigmas`` and ``rgbs``.
    """
    sigma_delta = sigmas * deltas
    alphas = 1.0 - torch.exp(-sigma_delta)
    weights = alphas * transmittance(sigma_delta, ray_indices, n_rays)
    opacity = torch.zeros(n_rays, dtype=weights.dtype, device=weights.device).index_add(0, ray_indices, weights)
    depth = torch.zeros_like(opacity).index_add(0, ray_indices, weights * t_mids)
    rgb = torch.zeros(n_rays, 3, dtype=rgbs.dtype, device=rgbs.device).index_add(
        0, ray_indices, weights[:, None] * rgbs
    )
    if background is not None:
        rgb = rgb + (1.0 - opacity)[:, None] * background
    return RenderOutput(rgb=rgb, depth=depth, opacity=opacity, weights=weights)
