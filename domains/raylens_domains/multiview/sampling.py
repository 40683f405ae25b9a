"""Where along a ray to evaluate a field: box clipping, stratified and hierarchical (importance)
sampling for vanilla NeRF, and an occupancy grid that skips empty space for the fast model.

Every sampler returns packed samples (see :mod:`raylens_domains.multiview.render`): ray indices,
start/end distances, sorted by ray then distance.

>>> import torch
>>> near, far = ray_aabb(torch.tensor([[0.0, 0.0, -3.0]]), torch.tensor([[0.0, 0.0, 1.0]]), (-1, -1, -1, 1, 1, 1))
>>> near.tolist(), far.tolist()
([2.0], [4.0])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Samples", "ray_aabb", "stratified_samples", "pdf_samples", "OccupancyGrid"]


@dataclass
class Samples:
    """Packed samples along rays."""

    ray_indices: torch.Tensor
    """(N,) int64 ray of each sample, non-decreasing."""
    t_starts: torch.Tensor
    """(N,) start of each sample's interval along its ray."""
    t_ends: torch.Tensor
    """(N,) end of each sample's interval."""

    @property
    def t_mids(self) -> torch.Tensor:
        return 0.5 * (self.t_starts + self.t_ends)

    @property
    def deltas(self) -> torch.Tensor:
        return self.t_ends - self.t_starts

    def __len__(self) -> int:
        return int(self.ray_indices.numel())

    def points(self, origins: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
        """(N, 3) sample positions ``o + t_mid d``."""
        return origins[self.ray_indices] + self.t_mids[:, None] * directions[self.ray_indices]

    def select(self, keep: torch.Tensor) -> Samples:
        return Samples(self.ray_indices[keep], self.t_starts[keep], self.t_ends[keep])


def ray_aabb(origins: torch.Tensor, directions: torch.Tensor, aabb, min_near: float = 0.0):
    """Entry and exit distances of rays through the box ``(xmin, ymin, zmin, xmax, ymax, zmax)``.

    Rays that miss the box get ``near >= far``. ``near`` is at least ``min_near``.
    """
    box = torch.as_tensor(aabb, dtype=origins.dtype, device=origins.device).reshape(2, 3)
    inv = 1.0 / torch.where(directions.abs() < 1e-9, torch.full_like(directions, 1e-9), directions)
    t0 = (box[0] - origins) * inv
    t1 = (box[1] - origins) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp(min=min_near)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far


def stratified_samples(near: torch.Tensor, far: torch.Tensor, n_samples: int, perturb: bool) -> torch.Tensor:
    """(R, S + 1) interval edges splitting ``[near, far]`` into ``S`` equal bins, each edge jittered
    inside its bin when ``perturb`` (training), so every distance gets sampled over time."""
    u = torch.linspace(0.0, 1.0, n_samples + 1, device=near.device, dtype=near.dtype)
    edges = near[:, None] + (far - near)[:, None] * u
    if perturb:
        mids = 0.5 * (edges[:, 1:] + edges[:, :-1])
        lower = torch.cat([edges[:, :1], mids], -1)
        upper = torch.cat([mids, edges[:, -1:]], -1)
        edges = lower + (upper - lower) * torch.rand_like(edges)
    return edges


def pdf_samples(edges: torch.Tensor, weights: torch.Tensor, n_samples: int, perturb: bool) -> torch.Tensor:
    """Hierarchical sampling: ``n_samples`` distances drawn from the piecewise-constant pdf that
    ``weights`` (R, S) define over the bins ``edges`` (R, S + 1) (NeRF's inverse-CDF sampling).
    Returns (R, n_samples), sorted."""
    w = weights.detach() + 1e-5
    pdf = w / w.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1).clamp(max=1.0)
    if perturb:
        u = torch.rand(cdf.shape[0], n_samples, device=cdf.device, dtype=cdf.dtype)
    else:
        u = torch.linspace(0.0, 1.0, n_samples, device=cdf.device, dtype=cdf.dtype).expand(cdf.shape[0], n_samples)
    u = u.contiguous()
    hi = torch.searchsorted(cdf, u, right=True).clamp(1, cdf.shape[-1] - 1)
    lo = hi - 1
    cdf_lo, cdf_hi = cdf.gather(-1, lo), cdf.gather(-1, hi)
    e_lo, e_hi = edges.gather(-1, lo), edges.gather(-1, hi)
    frac = ((u - cdf_lo) / (cdf_hi - cdf_lo).clamp(min=1e-8)).clamp(0, 1)
    return e_lo + frac * (e_hi - e_lo)


class OccupancyGrid:
    """A boolean grid over the box marking cells that may hold density; rays march only those.

    ``occupied`` has ``resolution**3`` cells. :meth:`sample` marches every ray at ``step`` through
    the box, first at the coarse level (``coarse_factor`` cells per coarse cell, dilated by one coarse
    cell so nothing is missed between samples), then only the occupied coarse intervals at the fine
    step. A ray that crosses only empty cells gets no sample and renders as background.
    """

    def __init__(self, aabb, resolution: int, coarse_factor: int = 4, device: torch.device | str = "cpu"):
        if resolution < 2 or coarse_factor < 1:
            raise ValueError(f"resolution must be >= 2 and coarse_factor >= 1, got {resolution}, {coarse_factor}")
        self.aabb = torch.as_tensor(aabb, dtype=torch.float32, device=device).reshape(6)
        self.resolution = int(resolution)
        self.coarse_factor = int(coarse_factor)
        self.occupied = torch.ones((self.resolution,) * 3, dtype=torch.bool, device=device)
        self._coarse = self._make_coarse()

    def to(self, device) -> OccupancyGrid:
        self.aabb, self.occupied = self.aabb.to(device), self.occupied.to(device)
        self._coarse = self._coarse.to(device)
        return self

    @property
    def fraction(self) -> float:
        """Share of cells marked occupied."""
        return float(self.occupied.float().mean())

    def update(self, occupied: torch.Tensor) -> None:
        """Replace the mask (a (resolution,)*3 bool tensor, e.g. from the model's density)."""
        if occupied.shape != self.occupied.shape:
            raise ValueError(
                f"occupancy mask must have shape {tuple(self.occupied.shape)}, got {tuple(occupied.shape)}"
            )
        self.occupied = occupied.to(device=self.occupied.device, dtype=torch.bool)
        self._coarse = self._make_coarse()

    def _make_coarse(self) -> torch.Tensor:
        c = self.coarse_factor
        if c == 1:
            coarse = self.occupied.float()[None, None]
        else:
            coarse = F.max_pool3d(self.occupied.float()[None, None], kernel_size=c, stride=c, ceil_mode=True)
        return F.max_pool3d(coarse, kernel_size=3, stride=1, padding=1)[0, 0] > 0

    def _lookup(self, grid: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        lo, hi = self.aabb[:3], self.aabb[3:]
        n = torch.tensor(grid.shape, device=points.device)
        cell = ((points - lo) / (hi - lo) * n).long()
        cell = torch.minimum(cell.clamp(min=0), n - 1)
        return grid[cell[:, 0], cell[:, 1], cell[:, 2]]

    @torch.no_grad()
    def sample(
        self,
        origins: torch.Tensor,
        directions: torch.Tensor,
        step: float,
        perturb: bool,
        min_near: float = 0.0,
    ) -> Samples:
        """Packed samples of length ``step`` inside occupied cells, for rays (R, 3) with unit directions."""
        near, far = ray_aabb(origins, directions, self.aabb, min_near)
        hit = (far > near).nonzero().squeeze(1)
        empty = torch.zeros(0, device=origins.device)
        if hit.numel() == 0:
            return Samples(empty.long(), empty, empty)
        c = self.coarse_factor
        coarse_step = step * c
        n_coarse = int(torch.ceil(((far - near)[hit].max()) / coarse_step).item())
        jitter = torch.rand(hit.numel(), 1, device=origins.device) if perturb else 0.5
        # coarse intervals [t, t + coarse_step) of every hit ray, tested at their midpoints
        t_coarse = near[hit, None] + (torch.arange(n_coarse, device=origins.device) + (jitter - 0.5)) * coarse_step
        valid = (t_coarse + coarse_step > near[hit, None]) & (t_coarse < far[hit, None])
        r_idx, k_idx = valid.nonzero(as_tuple=True)
        t0 = t_coarse[r_idx, k_idx]
        mid = origins[hit[r_idx]] + (t0 + 0.5 * coarse_step)[:, None] * directions[hit[r_idx]]
        keep = self._lookup(self._coarse, mid)
        r_idx, t0 = r_idx[keep], t0[keep]
        # fine samples inside the kept coarse intervals, tested against the fine mask and the box
        fine = t0[:, None] + torch.arange(c, device=origins.device) * step  # (M, c)
        ray = hit[r_idx][:, None].expand(-1, c).reshape(-1)
        t_start = fine.reshape(-1)
        t_end = t_start + step
        inside = (t_end > near[ray]) & (t_start < far[ray])
        ray, t_start, t_end = ray[inside], t_start[inside], t_end[inside]
        t_start, t_end = torch.maximum(t_start, near[ray]), torch.minimum(t_end, far[ray])
        mid = origins[ray] + (0.5 * (t_start + t_end))[:, None] * directions[ray]
        keep = self._lookup(self.occupied, mid)
        return Samples(ray[keep], t_start[keep], t_end[keep])
