"""The pack's NeRF models in the one model registry (``kind="nerf"``).

- ``nerf-vanilla``: :class:`~.nerf_vanilla.VanillaNeRF`, positional encoding + coarse/fine MLPs.
- ``nerf-fast``: :class:`~.nerf_fast.GridNeRF`, voxel grids + a small MLP + an occupancy grid.

>>> from raylens.models import create_model, list_models
>>> list_models("nerf-*", kind="nerf")
['nerf-fast', 'nerf-vanilla']
>>> model = create_model("nerf-fast", resolution=16, start_resolution=16)
>>> sorted(model(model.example_input()))
['depth', 'opacity', 'rgb']
"""

from __future__ import annotations

from collections.abc import Sequence

from raylens.models import register_model
from raylens_domains.multiview.nerf_base import NerfModel
from raylens_domains.multiview.nerf_fast import GridNeRF
from raylens_domains.multiview.nerf_vanilla import VanillaNeRF

__all__ = ["NerfModel", "GridNeRF", "VanillaNeRF", "nerf_vanilla", "nerf_fast", "NERF_MODELS"]

NERF_MODELS = ("nerf-fast", "nerf-vanilla")
"""The architectures ``raylens train nerf --model`` offers."""

Box = Sequence[float]
_UNIT = (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0)


@register_model(
    "nerf-vanilla",
    kind="nerf",
    doc="Vanilla NeRF: positional encoding, coarse + fine MLPs (width 128, 4 layers), hierarchical sampling.",
    test_overrides={"width": 16, "depth": 2, "n_coarse": 8, "n_fine": 8, "pos_freqs": 4, "dir_freqs": 2},
)
def nerf_vanilla(
    aabb: Box = _UNIT,
    pos_freqs: int = 10,
    dir_freqs: int = 4,
    width: int = 128,
    depth: int = 4,
    n_coarse: int = 48,
    n_fine: int = 48,
    background: str | Sequence[float] = "white",
) -> VanillaNeRF:
    """Vanilla NeRF (see :class:`~.nerf_vanilla.VanillaNeRF`)."""
    return VanillaNeRF(aabb, pos_freqs, dir_freqs, width, depth, n_coarse, n_fine, background)


_FAST_DOC = "Fast NeRF: density + feature voxel grids, small MLP, occupancy grid, coarse-to-fine, sparse Adam."
_FAST_TEST = {"resolution": 12, "start_resolution": 8, "upsample_steps": (5,), "features": 4, "hidden": 8}


@register_model("nerf-fast", kind="nerf", doc=_FAST_DOC, test_overrides=_FAST_TEST)
def nerf_fast(
    aabb: Box = _UNIT,
    resolution: int = 128,
    start_resolution: int = 32,
    upsample_steps: Sequence[int] = (100, 250, 450),
    features: int = 12,
    hidden: int = 64,
    sh_degree: int = 2,
    step_ratio: float = 0.6,
    alpha_init: float = 1e-2,
    occupancy_threshold: float = 3e-3,
    occupancy_dilation: int = 0,
    occupancy_warmup: int = 8,
    occupancy_every: int = 8,
    grid_lr: float = 0.1,
    density_lr: float = 1.0,
    sparsity: float = 1e-3,
    background: str | Sequence[float] = "white",
) -> GridNeRF:
    """The fast voxel-grid NeRF (see :class:`~.nerf_fast.GridNeRF`)."""
    return GridNeRF(**locals())
