import csv
import json

import numpy as np
import pytest
from PIL import Image

from raylens_domains.natural.shapes import COLOURS, SHAPES, generate_shapes, render_shape


def test_generate_is_deterministic_and_readable(tmp_path):
    a = generate_shapes(tmp_path / "a", n_train=6, n_heldout=3, seed=7)
    b = generate_shapes(tmp_path / "b", n_train=6, n_heldout=3, seed=7)
    rows = list(csv.DictReader(a.captions_path.open()))
    assert len(rows) == 9 and sum(r["split"] == "heldout" for r in rows) == 3
    for r in rows:
        full = f"a {r['size']} {r['colour']} {r['shape']} on a {r['background']} background"
        if r["split"] == "heldout":
            assert r["caption"] == full
        else:  # training captions may leave out size and/or background
            assert r["caption"] in (
                full,
                f"a {r['size']} {r['colour']} {r['shape']}",
                f"a {r['colour']} {r['shape']} on a {r['background']} background",
                f"a {r['colour']} {r['shape']}",
            )
        ia = np.asarray(Image.open(a.root / r["path"]))
        ib = np.asarray(Image.open(b.root / r["path"]))
        assert ia.shape == (64, 64, 3) and np.array_equal(ia, ib)
    assert a.captions_path.read_text() == b.captions_path.read_text()
    assert a.chance_colour_shape == pytest.approx(1 / (len(SHAPES) * len(COLOURS)))


def test_other_seed_differs_and_jsonl(tmp_path):
    a = generate_shapes(tmp_path / "a", n_train=5, n_heldout=0, seed=1, fmt="jsonl")
    b = generate_shapes(tmp_path / "b", n_train=5, n_heldout=0, seed=2, fmt="jsonl")
    ca = [json.loads(x)["caption"] for x in a.captions_path.read_text().splitlines()]
    cb = [json.loads(x)["caption"] for x in b.captions_path.read_text().splitlines()]
    assert ca != cb


def test_render_colour_is_visible():
    img = render_shape("square", "red", "large", "black", np.random.default_rng(0))
    r, g, b = img[..., 0].astype(int), img[..., 1].astype(int), img[..., 2].astype(int)
    assert ((r > 150) & (g < 80) & (b < 80)).mean() > 0.05  # a large red square covers >5% of pixels


@pytest.mark.parametrize(
    "kwargs", [dict(shape="hexagon"), dict(colour="teal"), dict(size="huge"), dict(background="plaid")]
)
def test_render_rejects_unknown_attributes(kwargs):
    args = dict(shape="circle", colour="red", size="small", background="grey") | kwargs
    with pytest.raises(ValueError, match="must be one of"):
        render_shape(**args, rng=np.random.default_rng(0))


def test_generate_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="not both 0"):
        generate_shapes(tmp_path, 0, 0)
    with pytest.raises(ValueError, match="fmt"):
        generate_shapes(tmp_path, 1, 1, fmt="xml")
