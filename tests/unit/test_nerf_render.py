"""The one volume-rendering function: alpha compositing on densities whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch

from raylens_domains.multiview.render import background_tensor, transmittance, volume_render

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _render(sigmas, rgbs, deltas, t_mids, ray_indices, n_rays, background=None):
    return volume_render(
        torch.tensor(sigmas, dtype=torch.float32),
        torch.tensor(rgbs, dtype=torch.float32),
        torch.tensor(deltas, dtype=torch.float32),
        torch.tensor(t_mids, dtype=torch.float32),
        torch.tensor(ray_indices, dtype=torch.long),
        n_rays,
        None if background is None else torch.tensor(background, dtype=torch.float32),
    )


def test_two_samples_composite_as_the_formula_says():
    s1, s2, d = 2.0, 3.0, 0.25
    out = _render([s1, s2], [[1, 0, 0], [0, 1, 0]], [d, d], [1.0, 1.25], [0, 0], 1, background=[0, 0, 1])
    a1, a2 = 1 - math.exp(-s1 * d), 1 - math.exp(-s2 * d)
    w1, w2 = a1, (1 - a1) * a2
    torch.testing.assert_close(out.weights, torch.tensor([w1, w2]))
    torch.testing.assert_close(out.opacity, torch.tensor([w1 + w2]))
    torch.testing.assert_close(out.rgb, torch.tensor([[w1, w2, 1 - w1 - w2]]))
    torch.testing.assert_close(out.depth, torch.tensor([w1 * 1.0 + w2 * 1.25]))


def test_an_opaque_sample_hides_what_is_behind_it():
    out = _render([1e4, 5.0], [[0.2, 0.4, 0.6], [1, 1, 1]], [0.1, 0.1], [2.0, 2.1], [0, 0], 1, background=[1, 1, 1])
    torch.testing.assert_close(out.rgb, torch.tensor([[0.2, 0.4, 0.6]]))
    assert float(out.weights[1]) < 1e-6 and float(out.depth[0]) == pytest.approx(2.0)


def test_rays_do_not_leak_into_each_other_and_empty_rays_show_the_background():
    # ray 0: opaque red; ray 1: no samples; ray 2: half-transparent green
    a = 1 - math.exp(-0.5)
    out = _render(
        [1e4, 1e4, 5.0],
        [[1, 0, 0], [1, 0, 0], [0, 1, 0]],
        [1.0, 1.0, 0.1],
        [1.0, 2.0, 1.0],
        [0, 0, 2],
        3,
        background=[1, 1, 1],
    )
    torch.testing.assert_close(out.opacity, torch.tensor([1.0, 0.0, a]))
    torch.testing.assert_close(out.rgb[1], torch.ones(3))
    torch.testing.assert_close(out.rgb[2], torch.tensor([1 - a, 1.0, 1 - a]))
    torch.testing.assert_close(out.weights[2], torch.tensor(a))  # T resets at the start of ray 2


def test_zero_density_renders_the_background_and_gradients_flow():
    sig = torch.zeros(4, requires_grad=True)
    rgb = torch.full((4, 3), 0.5, requires_grad=True)
    out = volume_render(
        sig, rgb, torch.full((4,), 0.1), torch.arange(4.0), torch.tensor([0, 0, 1, 1]), 2, torch.zeros(3)
    )
    torch.testing.assert_close(out.rgb, torch.zeros(2, 3))
    out.rgb.sum().backward()
    assert sig.grad is not None and bool((sig.grad > 0).all())  # more density would add grey over black


def test_transmittance_over_long_packed_batches_stays_exact():
    n_rays, per = 2000, 64
    sd = torch.full((n_rays * per,), 0.05)
    ids = torch.arange(n_rays).repeat_interleave(per)
    t = transmittance(sd, ids, n_rays).reshape(n_rays, per)
    expect = torch.exp(-0.05 * torch.arange(per, dtype=torch.float32))
    torch.testing.assert_close(t, expect.expand(n_rays, per))


def test_background_names_and_bad_values():
    assert background_tensor("white", "cpu").tolist() == [1.0, 1.0, 1.0]
    assert background_tensor(0.25, "cpu").tolist() == [0.25, 0.25, 0.25]
    with pytest.raises(ValueError, match="background"):
        background_tensor("purple", "cpu")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        background_tensor((2.0, 0.0, 0.0), "cpu")
