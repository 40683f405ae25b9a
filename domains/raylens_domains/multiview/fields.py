"""Encodings and voxel grids the NeRF models are built from (plain torch, CPU or GPU).

- :func:`positional_encoding`: vanilla NeRF's sin/cos features of a point or direction.
- :func:`sh_encoding`: real spherical harmonics of a unit direction (degrees 1-4), the cheap view
  encoding of the fast model.
- :class:`VoxelGrid`: a C-channel grid of values at the vertices of a regular lattice over an axis-
  aligned box, read with trilinear interpolation. Reads are one fused ``F.embedding_bag`` over the 8
  corners of each point (no (N, 8, C) intermediate); gradients go into a grid-sized buffer touching
  only the corners that were read, and :class:`GridAdam` updates only those rows: a step costs time
  in proportion to the samples, not to the grid's size.

>>> import torch
>>> grid = VoxelGrid(resolution=3, channels=1, aabb=(-1, -1, -1, 1, 1, 1))
>>> grid.table.copy_(torch.arange(27.0)[:, None])  # value = 9 i + 3 j + k at vertex (i, j, k)
tensor(...)
>>> grid(torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [-1.0, -1.0, -0.5]])).squeeze(1).tolist()
[13.0, 26.0, 0.5]
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["positional_encoding", "sh_encoding", "trilinear_corners", "VoxelGrid", "GridAdam"]


def positional_encoding(x: torch.Tensor, n_freqs: int, include_input: bool = True) -> torch.Tensor:
    """``[x, sin(2^k pi x), cos(2^k pi x)]`` for ``k < n_freqs``, the NeRF encoding.

    Args:
        x: (..., D) coordinates (points in the unit cube, or unit directions).
        n_freqs: number of octaves L; the output has ``D * (2 L + include_input)`` features.
        include_input: prepend ``x`` itself.

    >>> positional_encoding(torch.zeros(2, 3), 4).shape
    torch.Size([2, 27])
    """
    if n_freqs < 0:
        raise ValueError(f"n_freqs must be >= 0, got {n_freqs}")
    freqs = (2.0 ** torch.arange(n_freqs, dtype=x.dtype, device=x.device)) * math.pi
    angles = (x[..., None, :] * freqs[:, None]).flatten(-2)  # (..., L * D), octave-major
    parts = [x] if include_input else []
    parts += [torch.sin(angles), torch.cos(angles)]
    return torch.cat(parts, dim=-1)


def sh_encoding(dirs: torch.Tensor, degree: int) -> torch.Tensor:
    """Real spherical harmonics (the graphics convention of Instant-NGP / Plenoxels) of unit ``dirs``.

    ``degree`` 1..4 gives ``degree**2`` features: (N, 3) -> (N, degree**2).

    >>> [round(v, 4) for v in sh_encoding(torch.tensor([[0.0, 0.0, 1.0]]), 2)[0].tolist()]
    [0.2821, -0.0, 0.4886, -0.0]
    >>> sh_encoding(torch.zeros(5, 3), 3).shape
    torch.Size([5, 9])
    """
    if not 1 <= degree <= 4:
        raise ValueError(f"sh degree must be 1..4, got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, 0.28209479177387814)]
    if degree > 1:
        out += [-0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x]
    if degree > 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [
            1.0925484305920792 * xy,
            -1.0925484305920792 * yz,
            0.94617469575755997 * zz - 0.31539156525251999,
            -1.0925484305920792 * xz,
            0.54627421529603959 * (xx - yy),
        ]
    if degree > 3:
        out += [
            0.59004358992664352 * y * (-3.0 * xx + yy),
            2.8906114426405538 * xy * z,
            0.45704579946446572 * y * (1.0 - 5.0 * zz),
            0.3731763325901154 * z * (5.0 * zz - 3.0),
            0.45704579946446572 * x * (1.0 - 5.0 * zz),
            1.4453057213202769 * z * (xx - yy),
            0.59004358992664352 * x * (-xx + 3.0 * yy),
        ]
    return torch.stack(out, dim=-1)


def trilinear_corners(points01: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat vertex indices (N, 8) and trilinear weights (N, 8) of points in the unit cube.

    Vertex ``(i, j, k)`` of an ``R x R x R`` lattice sits at ``(i, j, k) / (R - 1)`` and has flat
    index ``(i R + j) R + k``. Points outside [0, 1] are clamped to the nearest cell.
    """
    r = resolution
    p = points01 * (r - 1)
    p0 = p.floor().clamp_(0, r - 2)
    f = (p - p0).clamp_(0, 1)
    g = 1.0 - f
    base = (p0[:, 0] * (r * r) + p0[:, 1] * r + p0[:, 2]).long()
    offsets = torch.tensor([0, 1, r, r + 1, r * r, r * r + 1, r * r + r, r * r + r + 1], device=points01.device)
    fx, fy, fz = f.unbind(1)
    gx, gy, gz = g.unbind(1)
    wxy = torch.stack([gx * gy, gx * fy, fx * gy, fx * fy], 1)  # (i, j) = 00, 01, 10, 11
    weights = torch.stack([wxy * gz[:, None], wxy * fz[:, None]], 2).reshape(-1, 8)  # k fastest
    return base[:, None] + offsets, weights


class _GridRead(torch.autograd.Function):
    """``sum_c w_c table[idx_c]`` forward; backward adds into the grid's gradient buffer only."""

    @staticmethod
    def forward(ctx, anchor, grid: VoxelGrid, idx, weights):  # noqa: ARG004 - anchor only links autograd
        ctx.grid = grid
        ctx.save_for_backward(idx, weights)
        return F.embedding_bag(idx, grid.table, per_sample_weights=weights, mode="sum")

    @staticmethod
    def backward(ctx, grad_out):
        idx, weights = ctx.saved_tensors
        ctx.grid.accumulate_grad(idx, weights, grad_out)
        return torch.zeros(0, device=grad_out.device), None, None, None


class VoxelGrid(nn.Module):
    """A ``resolution**3 x channels`` lattice over ``aabb``, read with trilinear interpolation.

    The values live in the buffer ``table`` (saved in the state dict). Reading with ``requires_grad``
    records the read; ``backward`` accumulates into ``grad`` and marks the touched rows, which
    :class:`GridAdam` updates and clears. Call :meth:`upsample` to go coarse-to-fine.
    """

    def __init__(self, resolution: int, channels: int, aabb, init_std: float = 0.0, init_value: float = 0.0):
        super().__init__()
        if resolution < 2:
            raise ValueError(f"resolution must be >= 2, got {resolution}")
        self.resolution = int(resolution)
        self.channels = int(channels)
        self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).reshape(6))
        table = torch.full((self.resolution**3, self.channels), float(init_value))
        if init_std:
            table.normal_(float(init_value), init_std)
        self.register_buffer("table", table)
        self.grad: torch.Tensor | None = None
        self.touched: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, channels={self.channels}"

    def to_unit(self, points: torch.Tensor) -> torch.Tensor:
        """World points -> [0, 1]^3 within the grid's box."""
        lo, hi = self.aabb[:3], self.aabb[3:]
        return (points - lo) / (hi - lo)

    def read(self, idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Values at corner indices/weights from :func:`trilinear_corners`: (N, channels)."""
        if torch.is_grad_enabled():
            anchor = torch.empty(0, device=idx.device, requires_grad=True)  # makes autograd call backward
            return _GridRead.apply(anchor, self, idx, weights)
        return F.embedding_bag(idx, self.table, per_sample_weights=weights, mode="sum")

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """Values at world ``points`` (N, 3): (N, channels)."""
        return self.read(*trilinear_corners(self.to_unit(points), self.resolution))

    def ensure_grad(self) -> None:
        """Allocate the gradient buffer and the touched-rows mask (zero) if there are none."""
        if self.grad is None or self.grad.shape != self.table.shape:
            self.grad = torch.zeros_like(self.table)
            self.touched = torch.zeros(self.table.shape[0], dtype=torch.bool, device=self.table.device)

    def accumulate_grad(self, idx: torch.Tensor, weights: torch.Tensor, grad_out: torch.Tensor) -> None:
        """Add the gradient of a read (corner indices, weights, gradient of the values read)."""
        self.ensure_grad()
        flat = idx.reshape(-1)
        self.grad.index_add_(0, flat, (weights[:, :, None] * grad_out[:, None, :]).reshape(-1, self.channels))
        self.touched[flat] = True

    def as_volume(self) -> torch.Tensor:
        """The table as a (channels, R, R, R) volume (indexed [c, i, j, k])."""
        r = self.resolution
        return self.table.T.reshape(self.channels, r, r, r)

    @torch.no_grad()
    def upsample(self, resolution: int) -> None:
        """Resample the lattice to ``resolution`` (trilinear); the pending gradient is dropped."""
        if resolution == self.resolution:
            return
        vol = F.interpolate(self.as_volume()[None], size=(resolution,) * 3, mode="trilinear", align_corners=True)[0]
        self.table = vol.reshape(self.channels, -1).T.contiguous()
        self.resolution = int(resolution)
        self.grad = self.touched = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        table = state_dict.get(prefix + "table")
        if table is not None and table.shape != self.table.shape:  # a checkpoint at another resolution
            self.resolution = round(table.shape[0] ** (1 / 3))
            self.table = torch.empty_like(table, device=self.table.device)
            self.grad = self.touched = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _resample_rows(rows: torch.Tensor, resolution: int) -> torch.Tensor:
    """Per-vertex values of an ``r**3``-row lattice resampled (trilinear) to ``resolution**3`` rows."""
    r = round(rows.shape[0] ** (1 / 3))
    flat = rows.reshape(rows.shape[0], -1).double()
    vol = flat.T.reshape(1, -1, r, r, r)
    out = F.interpolate(vol, size=(resolution,) * 3, mode="trilinear", align_corners=True)[0]
    out = out.reshape(flat.shape[1], -1).T
    if rows.dtype == torch.int32:
        return out.round().to(torch.int32).reshape(-1)
    return out.to(rows.dtype).reshape(-1, *rows.shape[1:]).contiguous()


class GridAdam:
    """Adam over the rows of :class:`VoxelGrid` tables that were read since the last step ("lazy" Adam,
    as ``torch.optim.SparseAdam``: untouched rows keep their moments and values).

    With ``world_size > 1`` (inside a ``torch.distributed`` group) :meth:`step` first all-reduces the
    union of the workers' touched rows, so every replica applies the same averaged update.

    ``lr`` is one learning rate for every grid or one per grid; :attr:`scale` multiplies them all
    (the loop's schedule sets it). When a grid is upsampled, its moments are resampled with it, so
    the step size carries on smoothly across resolutions.
    """

    def __init__(self, grids: list[VoxelGrid], lr: float | list[float], betas=(0.9, 0.99), eps: float = 1e-15):
        self.grids = list(grids)
        lrs = [float(lr)] * len(self.grids) if isinstance(lr, int | float) else [float(v) for v in lr]
        if len(lrs) != len(self.grids):
            raise ValueError(f"give one learning rate or one per grid ({len(self.grids)}), got {len(lrs)}")
        self.lrs = lrs
        self.scale = 1.0
        self.betas = betas
        self.eps = eps
        self.state: list[dict[str, torch.Tensor]] = [{} for _ in self.grids]

    def _ensure_state(self, i: int, grid: VoxelGrid) -> dict[str, torch.Tensor]:
        s = self.state[i]
        if s and s["m"].shape != grid.table.shape:  # the grid was upsampled: resample the moments with it
            s.update({k: _resample_rows(s[k], grid.resolution) for k in ("m", "v", "t")})
        if not s:
            s.update(
                m=torch.zeros_like(grid.table),
                v=torch.zeros_like(grid.table),
                t=torch.zeros(grid.table.shape[0], dtype=torch.int32, device=grid.table.device),
            )
        return s

    @torch.no_grad()
    def step(self, world_size: int = 1) -> int:
        """Update the touched rows; returns how many rows were updated (all grids)."""
        b1, b2 = self.betas
        updated = 0
        for i, grid in enumerate(self.grids):
            if grid.grad is None:  # nothing read since the grid was made or upsampled
                if world_size == 1:
                    continue
                grid.ensure_grad()  # the other workers may have read it: join their all-reduce
            touched = grid.touched
            if world_size > 1:
                import torch.distributed as dist

                union = touched.to(torch.uint8)
                dist.all_reduce(union)
                touched = union > 0
            rows = touched.nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            g = grid.grad[rows]
            if world_size > 1:
                dist.all_reduce(g)
                g /= world_size
            s = self._ensure_state(i, grid)
            t = s["t"][rows] + 1
            m = s["m"][rows].mul_(b1).add_(g, alpha=1 - b1)
            v = s["v"][rows].mul_(b2).addcmul_(g, g, value=1 - b2)
            s["m"][rows], s["v"][rows], s["t"][rows] = m, v, t
            tf = t.to(g.dtype)[:, None]
            step = (m / (1 - b1**tf)) / ((v / (1 - b2**tf)).sqrt_() + self.eps)
            grid.table[rows] -= self.lrs[i] * self.scale * step
            grid.grad[rows] = 0
            grid.touched[rows] = False
            updated += rows.numel()
        return updated

    def reset(self) -> None:
        """Forget the moments (after a grid was upsampled)."""
        self.state = [{} for _ in self.grids]

    def state_dict(self) -> dict:
        return {"lrs": list(self.lrs), "scale": self.scale, "state": [dict(s) for s in self.state]}

    def load_state_dict(self, state: dict) -> None:
        self.lrs = [float(v) for v in state["lrs"]]
        self.scale = float(state.get("scale", 1.0))
        self.state = [dict(s) for s in state["state"]]
