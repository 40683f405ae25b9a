"""Encodings and the voxel grid of the fast model: positional encoding values, trilinear reads
(equal to torch's own grid_sample), sparse Adam touching only the rows read, coarse-to-fine."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from raylens_domains.multiview.fields import GridAdam, VoxelGrid, positional_encoding, sh_encoding, trilinear_corners

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BOX = (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0)


def test_positional_encoding_is_sin_and_cos_of_doubling_frequencies():
    x = torch.tensor([[0.25, -0.5, 0.1]])
    enc = positional_encoding(x, 3)
    assert enc.shape == (1, 3 * 7)
    torch.testing.assert_close(enc[0, :3], x[0])
    for k in range(3):
        for d in range(3):
            angle = (2**k) * math.pi * float(x[0, d])
            assert float(enc[0, 3 + 3 * k + d]) == pytest.approx(math.sin(angle), abs=1e-6)
            assert float(enc[0, 12 + 3 * k + d]) == pytest.approx(math.cos(angle), abs=1e-6)
    assert positional_encoding(x, 0, include_input=False).shape == (1, 0)
    with pytest.raises(ValueError, match="n_freqs"):
        positional_encoding(x, -1)


def test_spherical_harmonics_are_orthonormal_on_the_sphere():
    g = torch.Generator().manual_seed(0)
    d = F.normalize(torch.randn(200_000, 3, generator=g), dim=-1)
    y = sh_encoding(d, 4)  # 16 functions
    gram = 4 * math.pi * (y.T @ y) / len(d)  # Monte Carlo integral over the sphere
    torch.testing.assert_close(gram, torch.eye(16), atol=0.03, rtol=0)
    with pytest.raises(ValueError, match="degree"):
        sh_encoding(d[:1], 5)


def test_grid_reads_equal_torch_grid_sample_and_are_exact_on_linear_functions():
    torch.manual_seed(0)
    grid = VoxelGrid(7, 3, BOX, init_std=1.0)
    pts = torch.rand(500, 3) * 2 - 1
    ours = grid(pts)
    theirs = F.grid_sample(grid.as_volume()[None], pts.flip(-1).view(1, 1, 1, -1, 3), align_corners=True)
    torch.testing.assert_close(ours, theirs.view(3, -1).T, atol=1e-5, rtol=1e-5)
    # a linear function stored at the vertices is reproduced exactly between them
    lin = VoxelGrid(5, 1, BOX)
    i, j, k = torch.meshgrid(*(torch.linspace(-1, 1, 5),) * 3, indexing="ij")
    lin.table.copy_((2 * i - j + 0.5 * k + 1).reshape(-1, 1))
    torch.testing.assert_close(lin(pts).squeeze(1), 2 * pts[:, 0] - pts[:, 1] + 0.5 * pts[:, 2] + 1, atol=1e-5, rtol=0)


def test_trilinear_weights_sum_to_one_and_corners_are_neighbours():
    idx, w = trilinear_corners(torch.rand(100, 3), 9)
    torch.testing.assert_close(w.sum(1), torch.ones(100))
    ijk = torch.stack([idx // 81, (idx // 9) % 9, idx % 9], -1)
    assert int((ijk.max(1).values - ijk.min(1).values).max()) == 1


def test_sparse_adam_updates_only_the_rows_that_were_read():
    grid = VoxelGrid(6, 2, BOX)
    opt = GridAdam([grid], lr=0.1)
    pts = torch.tensor([[-0.95, -0.95, -0.95], [0.5, 0.5, 0.5]])
    before = grid.table.clone()
    loss = (grid(pts) - 1.0).square().sum()
    loss.backward()
    idx, _ = trilinear_corners(grid.to_unit(pts), 6)
    assert opt.step() == len(set(idx.flatten().tolist()))
    changed = (grid.table != before).any(1).nonzero().squeeze(1)
    assert set(changed.tolist()) == set(idx.flatten().tolist())
    assert bool((grid.table[changed] > 0).all())  # moved towards the target 1
    assert not bool(grid.touched.any()) and float(grid.grad.abs().sum()) == 0.0  # cleared for the next step


def test_sparse_adam_fits_a_function():
    torch.manual_seed(0)
    grid = VoxelGrid(8, 1, BOX)
    opt = GridAdam([grid], lr=0.1)
    for _ in range(60):
        pts = torch.rand(2000, 3) * 2 - 1
        loss = (grid(pts).squeeze(1) - pts[:, 0]).square().mean()
        loss.backward()
        opt.step()
    assert loss.item() < 5e-3


def test_upsample_keeps_the_field_and_a_checkpoint_of_another_resolution_loads():
    grid = VoxelGrid(5, 1, BOX)
    i, j, k = torch.meshgrid(*(torch.linspace(-1, 1, 5),) * 3, indexing="ij")
    grid.table.copy_((i + 2 * k).reshape(-1, 1))
    pts = torch.rand(50, 3) * 2 - 1
    before = grid(pts)
    grid.upsample(9)
    assert grid.resolution == 9 and grid.table.shape == (729, 1)
    torch.testing.assert_close(grid(pts), before, atol=1e-5, rtol=0)
    fresh = VoxelGrid(5, 1, BOX)
    fresh.load_state_dict(grid.state_dict())
    assert fresh.resolution == 9
    torch.testing.assert_close(fresh(pts), before, atol=1e-5, rtol=0)


def test_sparse_adam_moments_follow_an_upsampled_grid():
    grid = VoxelGrid(5, 2, BOX)
    opt = GridAdam([grid], lr=0.1)
    for _ in range(3):
        grid(torch.rand(400, 3) * 2 - 1).sum().backward()
        opt.step()
    m_before = opt.state[0]["m"].clone()
    grid.upsample(9)
    grid(torch.rand(5, 3) * 2 - 1).sum().backward()
    opt.step()
    s = opt.state[0]
    assert s["m"].shape == (729, 2) and int(s["t"].max()) == 4  # 3 steps carried over, then one more
    # a vertex of the old lattice keeps its moment (decayed by one step, plus its new gradient if read)
    assert float(s["m"].abs().sum()) > 0.5 * float(m_before.abs().sum())
