"""Vanilla NeRF (Mildenhall et al. 2020), the readable reference, small enough to train on a CPU.

Two MLPs of the same shape, *coarse* and *fine*. Each ray is cut into ``n_coarse`` stratified bins
between its entry and exit of the scene box; the coarse MLP's compositing weights define a pdf along
the ray, from which ``n_fine`` more distances are drawn (hierarchical sampling); the fine MLP renders
the union of both sets. The fine render is the output; the coarse one rides along in its ``aux`` and
is supervised too.

An MLP maps the positional encoding of a point to density and a feature; the feature and the
encoding of the view direction give the colour::

    x --PE(L_x)--> [Linear+ReLU] x depth (skip at the middle) --> sigma (ReLU)
                                                               \\-> feature --+ PE(L_d)(dir) --> RGB (sigmoid)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from raylens_domains.multiview.fields import positional_encoding
from raylens_domains.multiview.nerf_base import NerfModel
from raylens_domains.multiview.render import RenderOutput, volume_render
from raylens_domains.multiview.sampling import pdf_samples, ray_aabb, stratified_samples

__all__ = ["NerfMLP", "VanillaNeRF"]


class NerfMLP(nn.Module):
    """The NeRF MLP: encoded point -> density, encoded point + encoded direction -> colour."""

    def __init__(self, pos_freqs: int = 10, dir_freqs: int = 4, width: int = 128, depth: int = 4):
        super().__init__()
        self.pos_freqs, self.dir_freqs = pos_freqs, dir_freqs
        in_pos = 3 * (2 * pos_freqs + 1)
        in_dir = 3 * (2 * dir_freqs + 1)
        self.skip = depth // 2
        layers = []
        for i in range(depth):
            n_in = in_pos if i == 0 else width + (in_pos if i == self.skip else 0)
            layers.append(nn.Linear(n_in, width))
        self.trunk = nn.ModuleList(layers)
        self.sigma = nn.Linear(width, 1)
        self.feature = nn.Linear(width, width)
        self.rgb = nn.Sequential(nn.Linear(width + in_dir, width // 2), nn.ReLU(inplace=True), nn.Linear(width // 2, 3))

    def forward(self, points01: torch.Tensor, directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Points in the unit cube (N, 3) and unit directions (N, 3) -> density (N,), colour (N, 3)."""
        x_enc = positional_encoding(points01 * 2 - 1, self.pos_freqs)
        h = x_enc
        for i, layer in enumerate(self.trunk):
            if i == self.skip and i > 0:
                h = torch.cat([h, x_enc], -1)
            h = F.relu(layer(h))
        sigma = F.relu(self.sigma(h).squeeze(-1))
        d_enc = positional_encoding(directions, self.dir_freqs)
        rgb = torch.sigmoid(self.rgb(torch.cat([self.feature(h), d_enc], -1)))
        return sigma, rgb


class VanillaNeRF(NerfModel):
    """Coarse + fine NeRF MLPs with hierarchical sampling inside the scene box.

    Args:
        aabb: the scene box (rays are sampled between their entry and exit).
        pos_freqs: octaves of the point encoding (NeRF: 10).
        dir_freqs: octaves of the direction encoding (NeRF: 4).
        width: hidden width of both MLPs (NeRF: 256; 128 trains on a CPU).
        depth: trunk layers (NeRF: 8).
        n_coarse: stratified samples per ray (NeRF: 64).
        n_fine: importance samples per ray (NeRF: 128).
        background: colour behind the scene.
    """

    def __init__(
        self,
        aabb=(-1.0, -1.0, -1.0, 1.0, 1.0, 1.0),
        pos_freqs: int = 10,
        dir_freqs: int = 4,
        width: int = 128,
        depth: int = 4,
        n_coarse: int = 48,
        n_fine: int = 48,
        background="white",
    ):
        super().__init__(aabb, background)
        if n_coarse < 2 or n_fine < 0:
            raise ValueError(f"need n_coarse >= 2 and n_fine >= 0, got {n_coarse}, {n_fine}")
        self.config = dict(
            aabb=[float(v) for v in self.aabb],
            pos_freqs=int(pos_freqs),
            dir_freqs=int(dir_freqs),
            width=int(width),
            depth=int(depth),
            n_coarse=int(n_coarse),
            n_fine=int(n_fine),
            background=[float(v) for v in self.background],
        )
        self.coarse = NerfMLP(pos_freqs, dir_freqs, width, depth)
        self.fine = NerfMLP(pos_freqs, dir_freqs, width, depth) if n_fine else None

    def model_config(self) -> dict[str, Any]:
        return dict(self.config)

    def _render(self, mlp: NerfMLP, origins, directions, edges: torch.Tensor, bg) -> RenderOutput:
        n_rays, n_samples = edges.shape[0], edges.shape[1] - 1
        t_mid = 0.5 * (edges[:, 1:] + edges[:, :-1])
        points = origins[:, None, :] + t_mid[..., None] * directions[:, None, :]
        lo, hi = self.aabb[:3], self.aabb[3:]
        sigma, rgb = mlp(
            ((points - lo) / (hi - lo)).reshape(-1, 3), directions[:, None, :].expand_as(points).reshape(-1, 3)
        )
        ray_indices = torch.arange(n_rays, device=origins.device).repeat_interleave(n_samples)
        deltas = (edges[:, 1:] - edges[:, :-1]).reshape(-1)
        return volume_render(sigma, rgb, deltas, t_mid.reshape(-1), ray_indices, n_rays, bg)

    def render_rays(
        self, origins: torch.Tensor, directions: torch.Tensor, perturb: bool = False, background=None
    ) -> RenderOutput:
        bg = self._background(background)
        near, far = ray_aabb(origins, directions, self.aabb)
        miss = far <= near
        far = torch.where(miss, near + 1e-3, far)  # a ray that misses the box: a tiny empty segment
        edges = stratified_samples(near, far, self.config["n_coarse"], perturb)
        coarse = self._render(self.coarse, origins, directions, edges, bg)
        if self.fine is None:
            return coarse
        weights = coarse.weights.reshape(len(origins), -1)
        extra = pdf_samples(edges, weights, self.config["n_fine"], perturb)
        t_all, _ = torch.sort(torch.cat([0.5 * (edges[:, 1:] + edges[:, :-1]), extra], -1), -1)
        # the union's interval edges: midpoints between consecutive samples, clipped to the segment
        mids = 0.5 * (t_all[:, 1:] + t_all[:, :-1])
        fine_edges = torch.cat([near[:, None], mids, far[:, None]], -1)
        fine = self._render(self.fine, origins, directions, fine_edges, bg)
        fine.aux = (coarse,)
        return fine
