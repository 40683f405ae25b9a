import numpy as np
import pytest
from PIL import Image

from raylens.index import SearchHit
from raylens.train.curves import plot_curves
from raylens.viz import plot_search_grid, write_history_csv


def test_curve_grid_and_csv(tmp_path):
    hist = [{"step": s, "loss": 3.0 / s, "lr": 1e-3} for s in range(1, 6)]
    png = plot_curves(hist, tmp_path / "loss.png")
    assert Image.open(png).size[0] > 300
    assert write_history_csv(hist, tmp_path / "h.csv").read_text().startswith("step,loss,lr")
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    hits = [[SearchHit(1, 0.9, str(img), "a"), SearchHit(2, 0.5, None, "b")]]
    grid = plot_search_grid(["q"], hits, tmp_path / "grid.png", relevant=[[True, False]])
    assert Image.open(grid).size[1] > 100
    with pytest.raises(ValueError):
        plot_curves([], tmp_path / "x.png")
    with pytest.raises(ValueError):
        plot_search_grid(["q", "r"], hits, tmp_path / "y.png")
