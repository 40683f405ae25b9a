"""Image quality of rendered views: PSNR and SSIM (numpy in, float out; torch inside).

SSIM is Wang et al. (2004) as scikit-image computes it with ``gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1`` (the NeRF papers' setting): an 11x11 Gaussian window,
``K1 = 0.01``, ``K2 = 0.03``, the mean over the valid (unpadded) window positions and over channels.
Neither scikit-image nor torchmetrics is a dependency here, so it is written out and tested against
values known in closed form.

>>> import numpy as np
>>> a = np.zeros((16, 16, 3), np.float32); b = a + 0.1
>>> round(psnr(a, b), 3)
20.0
>>> round(ssim(a, a), 6)
1.0
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["psnr", "mse_to_psnr", "ssim", "gaussian_window"]


def _as_float(image, name: str) -> torch.Tensor:
    t = torch.from_numpy(np.array(image))  # a copy: Ray hands out read-only arrays
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    t = t.float()
    if t.ndim not in (2, 3):
        raise ValueError(f"{name} must be an (H, W) or (H, W, C) image, got shape {tuple(t.shape)}")
    return t if t.ndim == 3 else t[..., None]


def mse_to_psnr(mse: float) -> float:
    """PSNR in dB of a mean squared error on [0, 1] images (``inf`` for 0)."""
    return float("inf") if mse <= 0 else -10.0 * math.log10(mse)


def psnr(prediction, target) -> float:
    """Peak signal-to-noise ratio (dB) of two images in [0, 1] (uint8 images are scaled)."""
    p, t = _as_float(prediction, "prediction"), _as_float(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"prediction {tuple(p.shape)} and target {tuple(t.shape)} must have the same shape")
    return mse_to_psnr(float(((p - t) ** 2).mean()))


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """A normalised (size, size) Gaussian window (float64)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(prediction, target, window: int = 11, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> float:
    """Structural similarity of two images in [0, 1] (mean over positions and channels).

    Images smaller than the window are compared with a window as large as the smaller side (odd).
    """
    p, t = _as_float(prediction, "prediction"), _as_float(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"prediction {tuple(p.shape)} and target {tuple(t.shape)} must have the same shape")
    size = min(window, p.shape[0], p.shape[1])
    size -= 1 - size % 2
    w = gaussian_window(size, sigma)[None, None]
    x = p.permute(2, 0, 1)[:, None].double()  # (C, 1, H, W)
    y = t.permute(2, 0, 1)[:, None].double()

    def blur(z):
        return F.conv2d(z, w)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = k1**2, k2**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(s.mean())
