"""PSNR and SSIM: closed-form values and scikit-image's algorithm written out with scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from raylens_domains.multiview.metrics import gaussian_window, mse_to_psnr, psnr, ssim


def _skimage_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """skimage.metrics.structural_similarity(x, y, channel_axis=-1, data_range=1, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False), as scikit-image computes it (scipy filters, border cropped)."""
    vals = []
    for c in range(x.shape[-1]):
        a, b = x[..., c].astype(np.float64), y[..., c].astype(np.float64)
        f = lambda z: gaussian_filter(z, sigma=1.5, truncate=3.5)  # 11x11 window
        ux, uy = f(a), f(b)
        vx, vy, vxy = f(a * a) - ux * ux, f(b * b) - uy * uy, f(a * b) - ux * uy
        c1, c2 = 0.01**2, 0.03**2
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
        vals.append(s[5:-5, 5:-5].mean())
    return float(np.mean(vals))


def test_psnr_known_values():
    a = np.zeros((8, 8, 3), np.float32)
    assert psnr(a, a + 0.1) == pytest.approx(20.0, abs=1e-4)
    assert psnr(a, a + 0.01) == pytest.approx(40.0, abs=1e-3)
    assert psnr(np.full((4, 4, 3), 255, np.uint8), np.zeros((4, 4, 3), np.uint8)) == pytest.approx(0.0)
    assert math.isinf(psnr(a, a)) and mse_to_psnr(1e-3) == pytest.approx(30.0)
    with pytest.raises(ValueError, match="same shape"):
        psnr(a, a[:4])


def test_ssim_of_constant_images_is_the_luminance_term():
    a, b = 0.25, 0.75  # exact in float32
    expected = (2 * a * b + 0.01**2) / (a * a + b * b + 0.01**2)  # contrast/structure terms are C2/C2 = 1
    got = ssim(np.full((20, 20, 3), a, np.float32), np.full((20, 20, 3), b, np.float32))
    assert got == pytest.approx(expected, rel=1e-6)


def test_ssim_matches_scikit_images_algorithm():
    rng = np.random.default_rng(0)
    x = rng.random((40, 48, 3)).astype(np.float32)
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1).astype(np.float32)
    assert ssim(x, y) == pytest.approx(_skimage_ssim(x, y), abs=1e-6)
    assert ssim(x, x) == pytest.approx(1.0) and ssim(x, y) == pytest.approx(ssim(y, x))
    assert ssim(x, y) < ssim(x, np.clip(x + 0.01, 0, 1))


def test_gaussian_window_is_normalised():
    w = gaussian_window(11, 1.5)
    assert w.shape == (11, 11) and float(w.sum()) == pytest.approx(1.0) and float(w[5, 5]) == float(w.max())
