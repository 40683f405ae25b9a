"""What every NeRF model of the pack offers the loop, the renderer and the service.

A model is an ``nn.Module`` that renders rays (:meth:`NerfModel.render_rays`) through the one
compositing function (:func:`raylens_domains.multiview.render.volume_render`), knows the box it
models (``aabb``, in the normalised scene frame) and brings its own optimizer (grids and MLPs want
different ones). :meth:`NerfModel.render_chunked` renders any number of rays in bounded memory.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from raylens_domains.multiview.render import RenderOutput

__all__ = ["NerfModel", "NerfOptimizer", "allreduce_dense_grads"]


def allreduce_dense_grads(params: list[torch.Tensor], world_size: int) -> None:
    """Average the gradients of ``params`` over the ``torch.distributed`` group, in one flat buffer
    (what DDP does with its buckets). A no-op with one worker."""
    if world_size <= 1:
        return
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


class NerfOptimizer:
    """Adam over a model's dense parameters plus, for grid models, :class:`~.fields.GridAdam` over its
    voxel grids; one ``step(world_size)`` averages gradients over workers first, one ``set_lr_scale``."""

    def __init__(self, dense_params: list[torch.Tensor], lr: float, grid_optimizer=None):
        self.dense_params = [p for p in dense_params if p.requires_grad]
        self.adam = (
            torch.optim.Adam(self.dense_params, lr=lr, betas=(0.9, 0.99), eps=1e-15) if self.dense_params else None
        )
        self.base_lr = lr
        self.grid = grid_optimizer

    def zero_grad(self) -> None:
        if self.adam is not None:
            self.adam.zero_grad(set_to_none=True)

    def step(self, world_size: int = 1) -> None:
        if self.adam is not None:
            allreduce_dense_grads(self.dense_params, world_size)
            self.adam.step()
        if self.grid is not None:
            self.grid.step(world_size)

    def set_lr_scale(self, scale: float) -> None:
        if self.adam is not None:
            for group in self.adam.param_groups:
                group["lr"] = self.base_lr * scale
        if self.grid is not None:
            self.grid.scale = scale

    def state_dict(self) -> dict[str, Any]:
        return {
            "adam": self.adam.state_dict() if self.adam is not None else None,
            "grid": self.grid.state_dict() if self.grid is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.adam is not None and state.get("adam"):
            self.adam.load_state_dict(state["adam"])
        if self.grid is not None and state.get("grid"):
            self.grid.load_state_dict(state["grid"])


class NerfModel(nn.Module):
    """Base class of the pack's NeRF models (``kind="nerf"`` in the model registry)."""

    def __init__(self, aabb, background: str | float | tuple[float, float, float] = "white"):
        super().__init__()
        from raylens_domains.multiview.render import background_tensor

        box = torch.as_tensor(aabb, dtype=torch.float32).reshape(-1)
        if box.numel() != 6 or bool((box[3:] <= box[:3]).any()):
            raise ValueError(f"aabb must be (xmin, ymin, zmin, xmax, ymax, zmax) with max > min, got {aabb!r}")
        self.register_buffer("aabb", box)
        self.register_buffer("background", background_tensor(background, "cpu"))

    # -- what a subclass implements -------------------------------------------------------------
    def render_rays(
        self, origins: torch.Tensor, directions: torch.Tensor, perturb: bool = False, background=None
    ) -> RenderOutput:
        """Render rays (unit ``directions``) in the normalised scene frame."""
        raise NotImplementedError

    def model_config(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this architecture (``create_model(arch, **config)``)."""
        raise NotImplementedError

    def make_optimizer(self, lr: float) -> NerfOptimizer:
        """The optimizer for this model; ``lr`` is the dense (MLP) learning rate."""
        return NerfOptimizer(list(self.parameters()), lr)

    def on_train_step(self, step: int) -> dict[str, Any]:
        """Called before every training step (schedules: occupancy updates, coarse-to-fine). Returns
        figures worth logging (empty by default)."""
        return {}

    # -- shared ---------------------------------------------------------------------------------
    def forward(self, rays: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"origins", "directions"}`` (R, 3) -> ``{"rgb", "depth", "opacity"}``; jittered samples
        only in training mode."""
        out = self.render_rays(rays["origins"], rays["directions"], perturb=self.training)
        return {"rgb": out.rgb, "depth": out.depth, "opacity": out.opacity}

    def example_input(self) -> dict[str, torch.Tensor]:
        """Four rays from outside the box towards its centre (the model zoo test's input)."""
        center = 0.5 * (self.aabb[:3] + self.aabb[3:])
        extent = float((self.aabb[3:] - self.aabb[:3]).max())
        eyes = center + extent * torch.tensor(
            [[1.5, 0.1, 0.2], [-1.5, 0.2, 0.1], [0.1, 1.5, 0.3], [0.2, -0.1, 1.5]], device=self.device
        )
        directions = torch.nn.functional.normalize(center - eyes, dim=-1)
        return {"origins": eyes, "directions": directions}

    @property
    def device(self) -> torch.device:
        return self.aabb.device

    @torch.no_grad()
    def render_chunked(
        self, origins: torch.Tensor, directions: torch.Tensor, chunk: int = 8192, background=None
    ) -> RenderOutput:
        """Render many rays in chunks (no gradients); outputs on the rays' device."""
        was_training = self.training
        self.eval()
        try:
            parts = [
                self.render_rays(origins[i : i + chunk], directions[i : i + chunk], background=background)
                for i in range(0, len(origins), chunk)
            ]
        finally:
            self.train(was_training)
        return RenderOutput(
            rgb=torch.cat([p.rgb for p in parts]) if parts else origins.new_zeros(0, 3),
            depth=torch.cat([p.depth for p in parts]) if parts else origins.new_zeros(0),
            opacity=torch.cat([p.opacity for p in parts]) if parts else origins.new_zeros(0),
            weights=origins.new_zeros(0),
        )

    def _background(self, background) -> torch.Tensor:
        if background is None:
            return self.background
        from raylens_domains.multiview.render import background_tensor

        return background_tensor(background, self.device)
