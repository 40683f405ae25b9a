"""CutMix / MixUp against timm.data.Mixup (same draws, same outputs) and against direct math."""

import numpy as np
import pytest
import torch
from timm.data.mixup import Mixup, mixup_target

from raylens.data.mix import MixUpCutMix, cutmix, cutmix_box, mixup, one_hot


class _LegacyDraws:
    """np.random.Generator's method names over a RandomState, so our code and timm (which draws from
    np.random's global RandomState) consume the very same random numbers in the same order."""

    def __init__(self, seed):
        self._rs = np.random.RandomState(seed)

    def random(self):
        return self._rs.random_sample()

    def beta(self, a, b):
        return self._rs.beta(a, b)

    def integers(self, low, high):
        return self._rs.randint(low, high)


def _batch(n=6, size=16):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, size, size, generator=g), torch.tensor([0, 1, 2, 3, 4, 1])[:n]


@pytest.mark.parametrize(
    "mixup_alpha,cutmix_alpha,prob,switch_prob",
    [
        (0.8, 0.0, 1.0, 0.5),
        (0.0, 1.0, 1.0, 0.5),
        (0.8, 1.0, 1.0, 0.5),
        (0.8, 1.0, 1.0, 1.0),
        (0.8, 1.0, 0.0, 0.5),
    ],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_timm_mixup(mixup_alpha, cutmix_alpha, prob, switch_prob, seed):
    x, y = _batch()
    timm_mix = Mixup(
        mixup_alpha=mixup_alpha,
        cutmix_alpha=cutmix_alpha,
        prob=prob,
        switch_prob=switch_prob,
        label_smoothing=0.1,
        num_classes=5,
    )
    np.random.seed(seed)
    want_x, want_y = timm_mix(x.clone(), y.clone())
    ours = MixUpCutMix(
        5, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob, switch_prob=switch_prob, label_smoothing=0.1
    )
    got = ours(x.clone(), y.clone(), _LegacyDraws(seed))
    torch.testing.assert_close(got.images, want_x)
    torch.testing.assert_close(got.targets, want_y)
    assert got.kind == "none" if prob == 0 else got.kind in ("mixup", "cutmix")


def test_cutmix_box_area_equals_one_minus_lambda():
    x = np.random.default_rng(0).random((4, 3, 20, 30), dtype=np.float32)
    y = np.array([0, 1, 2, 0])
    rng = np.random.default_rng(5)
    for lam in (0.1, 0.5, 0.9, 0.99):
        out, targets, lam_c, (y0, y1, x0, x1) = cutmix(x, y, lam, rng, num_classes=3)
        assert lam_c == pytest.approx(1 - (y1 - y0) * (x1 - x0) / (20 * 30))
        inside = np.zeros((20, 30), bool)
        inside[y0:y1, x0:x1] = True
        np.testing.assert_array_equal(out[..., inside], x[::-1][..., inside])
        np.testing.assert_array_equal(out[..., ~inside], x[..., ~inside])
        np.testing.assert_allclose(targets, one_hot(y, 3) * lam_c + one_hot(y[::-1], 3) * (1 - lam_c), rtol=1e-6)
    # the clipped box never leaves the image
    for _ in range(50):
        y0, y1, x0, x1 = cutmix_box(20, 30, 0.3, rng)
        assert 0 <= y0 <= y1 <= 20 and 0 <= x0 <= x1 <= 30


def test_numpy_and_torch_agree_and_targets_are_distributions():
    x, y = _batch()
    tx, ty = mixup(x, y, 0.3, num_classes=5, smoothing=0.1)
    nx, ny = mixup(x.numpy(), y.numpy(), 0.3, num_classes=5, smoothing=0.1)
    np.testing.assert_allclose(tx.numpy(), nx, rtol=1e-6)
    np.testing.assert_allclose(ty.numpy(), ny, rtol=1e-6)
    torch.testing.assert_close(ty, mixup_target(y, 5, 0.3, 0.1))
    np.testing.assert_allclose(ny.sum(1), 1.0, rtol=1e-6)
    mixed = MixUpCutMix(5)(x.numpy(), y.numpy(), np.random.default_rng(3))
    assert mixed.images.dtype == np.float32 and mixed.targets.shape == (6, 5)


def test_seeded_generator_reproduces_and_seeds_differ():
    x, y = _batch()
    mix = MixUpCutMix(5, switch_prob=0.5)
    a, b = mix(x, y, np.random.default_rng(7)), mix(x, y, np.random.default_rng(7))
    torch.testing.assert_close(a.images, b.images)
    lams = {mix(x, y, np.random.default_rng(s)).lam for s in range(5)}
    assert len(lams) == 5


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": 3, "mixup_alpha": -1}, "alphas"),
        ({"num_classes": 3, "switch_prob": 2}, "switch_prob"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MixUpCutMix(**kwargs)


def test_bad_inputs():
    with pytest.raises(ValueError, match="labels must lie"):
        one_hot(np.array([0, 3]), 3)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        MixUpCutMix(3)(np.zeros((2, 4, 4), np.float32), np.array([0, 1]), np.random.default_rng(0))
