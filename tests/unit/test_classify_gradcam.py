"""Grad-CAM (raylens.classify.gradcam): a model trained to find a planted square looks at the square;
the default layer of a CNN and of a ViT; overlays and the PNG grid; bad input named."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from raylens.classify import FineTuneConfig, fine_tune, grad_cam, overlay, save_cam_grid
from raylens.classify.common import PixelModel, accuracy
from raylens.classify.gradcam import find_cam_layer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SQUARE = 6


def _planted(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Dim noise; class 1 images carry a white square at a random place (its top-left corner returned)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 0.3, (n, 3, 32, 32)).astype(np.float32)
    y = np.arange(n) % 2
    corners = rng.integers(2, 32 - SQUARE - 2, (n, 2))
    for i in np.flatnonzero(y == 1):
        r, c = corners[i]
        x[i, :, r : r + SQUARE, c : c + SQUARE] = 1.0
    return torch.from_numpy(x), torch.from_numpy(y), corners


class _SquareNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.pool(self.features(x)).flatten(1))


@pytest.fixture(scope="module")
def square_model():
    torch.manual_seed(0)
    x, y, _ = _planted(256, seed=1)
    model = _SquareNet()
    cfg = FineTuneConfig(epochs=6, lr=1e-2, batch_size=32, shift=0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    fine_tune(model, x, y, cfg)
    return model


def test_the_heatmap_peaks_on_the_planted_square(square_model):
    x, y, corners = _planted(40, seed=2)
    net = PixelModel(square_model, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert accuracy(net, x, y) >= 0.95, "the model did not learn the square; the test means nothing"
    idx = np.flatnonzero(y.numpy() == 1)
    cam = grad_cam(square_model, x[idx], mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    assert (
        cam.heatmaps.shape == (len(idx), 32, 32) and cam.layer == "features"
    )  # the last feature map (the outermost module giving it)
    assert cam.heatmaps.min() >= 0 and np.isclose(cam.heatmaps.max(), 1.0)
    hits, ratios = 0, []
    for k, i in enumerate(idx):
        r, c = corners[i]
        inside = np.zeros((32, 32), bool)
        inside[max(0, r - 2) : r + SQUARE + 2, max(0, c - 2) : c + SQUARE + 2] = True
        h = cam.heatmaps[k]
        peak = np.unravel_index(h.argmax(), h.shape)
        hits += bool(inside[peak])
        ratios.append(h[inside].mean() / max(h[~inside].mean(), 1e-6))
    assert hits >= 0.9 * len(idx), f"the peak fell on the square in only {hits}/{len(idx)} images"
    assert np.median(ratios) > 3, f"heat inside vs outside the square: {np.median(ratios):.2f}"
    np.testing.assert_array_equal(cam.target, cam.predicted)  # no target given: the predicted class


def test_an_explicit_target_and_layer_are_used(square_model):
    x, _, _ = _planted(4, seed=3)
    cam = grad_cam(square_model, x, target=[0, 0, 0, 0], layer="features.1", mean=(0, 0, 0), std=(1, 1, 1))
    assert cam.layer == "features.1" and list(cam.target) == [0, 0, 0, 0]
    square_model.train()
    grad_cam(square_model, x, mean=(0, 0, 0), std=(1, 1, 1))
    assert square_model.training, "grad_cam must restore the model's training mode"
    square_model.eval()


def test_default_layers_of_a_timm_cnn_and_a_vit():
    from raylens.models import create_model

    torch.manual_seed(0)
    cnn = create_model("timm/test_resnet", num_classes=3).eval()
    assert find_cam_layer(cnn, torch.rand(1, 3, 64, 64)) == "layer4"  # 2x2 at 64 px; 1x1 maps are skipped
    vit = create_model("vit", num_classes=3, image_size=32, patch_size=8, hidden_size=32, num_layers=2, num_heads=2)
    cam = grad_cam(vit.eval(), torch.rand(2, 3, 32, 32))
    assert cam.layer.endswith("1.layernorm_before"), cam.layer  # the last block's first norm
    assert cam.heatmaps.shape == (2, 32, 32) and np.isfinite(cam.heatmaps).all()


def test_overlay_and_grid(tmp_path, square_model):
    img = np.zeros((32, 32, 3), np.uint8)
    heat = np.zeros((32, 32), np.float32)
    heat[:8, :8] = 1.0
    out = overlay(img, heat, alpha=0.5)
    assert out.dtype == np.uint8 and out.shape == (32, 32, 3)
    hot, cold = out[:8, :8].reshape(-1, 3).mean(0), out[16:, 16:].reshape(-1, 3).mean(0)
    assert hot[0] > hot[2] and cold[2] > cold[0]  # jet: red where the heat is, blue where there is none
    x, y, _ = _planted(5, seed=4)
    cam = grad_cam(square_model, x, mean=(0, 0, 0), std=(1, 1, 1))
    path = save_cam_grid(x, cam, tmp_path / "grid.png", classes=["plain", "square"], labels=y.numpy(), cols=3)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_input_is_named(square_model):
    with pytest.raises(ValueError, match=r"`pixels` must be pixel values in \[0, 1\]"):
        grad_cam(square_model, torch.full((1, 3, 32, 32), 2.0))
    with pytest.raises(ValueError, match="`layer` 'nope' is not a module"):
        grad_cam(square_model, torch.rand(1, 3, 32, 32), layer="nope")
    with pytest.raises(ValueError, match="`target` must lie in"):
        grad_cam(square_model, torch.rand(1, 3, 32, 32), target=[5])
    with pytest.raises(ValueError, match="`heatmap` must have the image's size"):
        overlay(np.zeros((8, 8, 3), np.uint8), np.zeros((4, 4)))
