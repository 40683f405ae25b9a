"""The NeRF models in the registry: names and kind, defaults in one place, the fast model's occupancy
grid skipping what its density says is empty, and vanilla's coarse pass supervised too."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F

from raylens.models import create_model, list_models, model_kind, model_record
from raylens_domains.multiview.models import nerf_fast, nerf_vanilla
from raylens_domains.multiview.nerf_fast import GridNeRF
from raylens_domains.multiview.nerf_vanilla import VanillaNeRF

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _defaults(fn):
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}


def test_registered_as_nerf_models():
    assert list_models("nerf-*", kind="nerf") == ["nerf-fast", "nerf-vanilla"]
    assert model_kind("nerf-fast") == model_kind("nerf-vanilla") == "nerf"
    rec = model_record(create_model("nerf-fast", resolution=16, start_resolution=8, upsample_steps=[4]))
    assert rec.model_config["resolution"] == 16 and rec.model_config["sparsity"] == 1e-3


@pytest.mark.parametrize(("factory", "cls"), [(nerf_fast, GridNeRF), (nerf_vanilla, VanillaNeRF)])
def test_factory_defaults_are_the_model_defaults(factory, cls):
    ours, theirs = _defaults(factory), _defaults(cls.__init__)
    assert set(ours) == set(theirs)
    for k in ours:
        assert tuple(ours[k]) == tuple(theirs[k]) if isinstance(ours[k], tuple | list) else ours[k] == theirs[k], k


def test_fast_model_marches_only_where_density_can_be():
    torch.manual_seed(0)
    model = GridNeRF(resolution=17, start_resolution=17, alpha_init=1e-4, occupancy_threshold=1e-3)
    raw = model.density.table.view(17, 17, 17)
    raw[6:10, 6:10, 6:10] = 8.0  # a dense block around the centre
    frac = model.update_occupancy()
    assert 0 < frac < 0.1
    eyes = F.normalize(torch.randn(512, 3), dim=-1) * 3
    dirs = F.normalize(torch.rand(512, 3) * 0.4 - 0.2 - eyes, dim=-1)
    s = model.occupancy().sample(eyes, dirs, model.step_size, perturb=True)
    pts = s.points(eyes, dirs)
    # every sample lies in a cell touching the block (cells 5..9 have a dense corner)
    cell = ((pts + 1) / 2 * 16).floor()
    assert bool(((cell >= 5) & (cell <= 9)).all())
    model.eval()
    above = torch.tensor([[0.0, -3.0, 0.9], [-3.0, 0.2, 0.8], [0.5, -3.0, -0.9]])  # rays far from the block
    eyes = torch.cat([eyes, above])
    dirs = torch.cat([dirs, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])])
    out = model.render_rays(eyes, dirs)
    hit, miss = out.opacity > 0.5, out.opacity < 1e-6
    assert hit.any() and miss.any()
    torch.testing.assert_close(out.rgb[miss], torch.ones_like(out.rgb[miss]))  # the white background


def test_vanilla_renders_fine_with_its_coarse_pass_alongside():
    torch.manual_seed(0)
    model = VanillaNeRF(width=16, depth=2, n_coarse=8, n_fine=8, pos_freqs=3, dir_freqs=1)
    x = model.example_input()
    out = model.render_rays(x["origins"], x["directions"], perturb=True)
    assert out.rgb.shape == (4, 3) and out.weights.numel() == 4 * 16 and len(out.aux) == 1
    assert out.aux[0].weights.numel() == 4 * 8
    with pytest.raises(ValueError, match="aabb"):
        VanillaNeRF(aabb=(0, 0, 0, 1, 1))
