"""Where samples go: box clipping, stratified and importance sampling, and the occupancy grid
(no sample ever lands in a cell known to be empty)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from raylens_domains.multiview.sampling import OccupancyGrid, pdf_samples, ray_aabb, stratified_samples

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BOX = (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0)


def _rays(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    origins = F.normalize(torch.randn(n, 3, generator=g), dim=-1) * 3.0
    targets = (torch.rand(n, 3, generator=g) * 2 - 1) * 0.8
    return origins, F.normalize(targets - origins, dim=-1)


def test_ray_box_distances():
    o = torch.tensor([[0.0, 0.0, -3.0], [0.0, 5.0, -3.0], [0.0, 0.0, 0.0]])
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    near, far = ray_aabb(o, d, BOX)
    assert near.tolist()[0] == pytest.approx(2.0) and far.tolist()[0] == pytest.approx(4.0)
    assert float(far[1]) <= float(near[1])  # misses
    assert float(near[2]) == 0.0 and float(far[2]) == pytest.approx(1.0)  # starts inside: clamped at 0


def test_stratified_edges_stay_in_their_bins():
    near, far = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 6.0])
    edges = stratified_samples(near, far, 8, perturb=True)
    assert edges.shape == (2, 9)
    assert bool((edges[:, 1:] >= edges[:, :-1]).all())
    assert bool((edges >= near[:, None]).all()) and bool((edges <= far[:, None]).all())
    plain = stratified_samples(near, far, 4, perturb=False)
    torch.testing.assert_close(plain[0], torch.tensor([1.0, 1.5, 2.0, 2.5, 3.0]))


def test_importance_samples_follow_the_weights():
    edges = torch.linspace(0, 10, 11).expand(500, 11)
    weights = torch.zeros(500, 10)
    weights[:, 7] = 1.0  # all the mass in [7, 8)
    t = pdf_samples(edges, weights, 32, perturb=True)
    assert t.shape == (500, 32)
    assert float(((t >= 7) & (t <= 8)).float().mean()) > 0.99


def test_occupancy_grid_never_samples_known_empty_cells():
    occ = OccupancyGrid(BOX, resolution=16, coarse_factor=4)
    mask = torch.zeros(16, 16, 16, dtype=torch.bool)
    mask[4:8, 6:10, 5:12] = True  # only this block may hold density
    occ.update(mask)
    origins, directions = _rays(3000)
    s = occ.sample(origins, directions, step=0.02, perturb=True)
    assert len(s) > 0
    cells = ((s.points(origins, directions) + 1) / 2 * 16).long().clamp(0, 15)
    assert bool(mask[cells[:, 0], cells[:, 1], cells[:, 2]].all())
    # packed order: by ray, then by distance
    assert bool((s.ray_indices[1:] >= s.ray_indices[:-1]).all())
    same = s.ray_indices[1:] == s.ray_indices[:-1]
    assert bool((s.t_starts[1:][same] >= s.t_starts[:-1][same]).all())
    assert bool((s.deltas > 0).all()) and float(s.deltas.max()) <= 0.02 + 1e-6


def test_every_occupied_stretch_of_a_ray_is_sampled():
    occ = OccupancyGrid(BOX, resolution=8, coarse_factor=2)
    mask = torch.zeros(8, 8, 8, dtype=torch.bool)
    mask[3:5, 3:5, 3:5] = True  # the central cube [-0.25, 0.25]^3
    occ.update(mask)
    o = torch.tensor([[0.0, 0.0, -3.0], [0.9, 0.9, -3.0]])
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    s = occ.sample(o, d, step=0.01, perturb=False)
    assert set(s.ray_indices.tolist()) == {0}  # the second ray passes beside the block
    assert float(s.deltas.sum()) == pytest.approx(0.5, abs=0.02)  # the whole 0.5 through the block


def test_an_empty_grid_gives_no_samples_and_bad_masks_are_refused():
    occ = OccupancyGrid(BOX, resolution=8)
    occ.update(torch.zeros(8, 8, 8, dtype=torch.bool))
    assert len(occ.sample(*_rays(50), step=0.05, perturb=True)) == 0
    with pytest.raises(ValueError, match="shape"):
        occ.update(torch.zeros(4, 4, 4, dtype=torch.bool))
