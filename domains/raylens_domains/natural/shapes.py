"""The "shapes" dataset: captioned pictures of coloured shapes, deterministic by seed.

Each image shows one shape (circle, square, triangle, star, cross) in one colour, small or large, at
a random place on a grey, white, black or striped background, with a caption such as
"a small red circle on a grey background". Held-out captions are always that full form; 60% of the
training captions leave out the size and/or background ("a red circle on a grey background",
"a red circle"), so the model also learns the short queries people type. Images are written as PNG files plus a captions file
(CSV or JSONL), so that the real reader path is exercised.

>>> import tempfile
>>> ds = generate_shapes(tempfile.mkdtemp(), n_train=4, n_heldout=2, seed=1)
>>> ds.n_train, ds.n_heldout, ds.captions_path.name
(4, 2, 'captions.csv')
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "SHAPES",
    "COLOURS",
    "SIZES",
    "BACKGROUNDS",
    "ShapesDataset",
    "caption_for",
    "generate_shapes",
    "render_shape",
]

SHAPES = ("circle", "square", "triangle", "star", "cross")
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 70, 230),
    "yellow": (240, 210, 20),
    "purple": (140, 40, 180),
    "orange": (250, 130, 10),
}
SIZES = {"small": (0.3, 0.4), "large": (0.5, 0.65)}  # fraction of the image side
BACKGROUNDS = {"grey": (128, 128, 128), "white": (245, 245, 245), "black": (15, 15, 15), "striped": None}
_SUPERSAMPLE = 4
FIELDS = ("path", "caption", "split", "shape", "colour", "size", "background")


@dataclass(frozen=True)
class ShapesDataset:
    """Where a generated shapes dataset lies on disk, and what it holds."""

    root: Path
    """Directory holding ``images/`` and the captions file."""
    captions_path: Path
    """The captions file (CSV or JSONL), one row per image, paths relative to ``root``."""
    n_train: int
    n_heldout: int
    seed: int
    classes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """The attribute values: shape, colour, size, background."""

    @property
    def chance_colour_shape(self) -> float:
        """Probability that a random image matches a query's colour and shape."""
        return 1.0 / (len(self.classes["shape"]) * len(self.classes["colour"]))


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        pts = [
            (r * math.cos(angle + k * math.pi / 2 + math.pi / 4), r * math.sin(angle + k * math.pi / 2 + math.pi / 4))
            for k in range(4)
        ]
    elif shape == "triangle":
        pts = [
            (
                r * math.cos(angle + k * 2 * math.pi / 3 - math.pi / 2),
                r * math.sin(angle + k * 2 * math.pi / 3 - math.pi / 2),
            )
            for k in range(3)
        ]
    elif shape == "star":
        pts = []
        for k in range(10):
            rr = r if k % 2 == 0 else r * 0.42
            a = angle + k * math.pi / 5 - math.pi / 2
            pts.append((rr * math.cos(a), rr * math.sin(a)))
    elif shape == "cross":
        w = r * 0.36
        base = [
            (-w, -r),
            (w, -r),
            (w, -w),
            (r, -w),
            (r, w),
            (w, w),
            (w, r),
            (-w, r),
            (-w, w),
            (-r, w),
            (-r, -w),
            (-w, -w),
        ]
        ca, sa = math.cos(angle), math.sin(angle)
        pts = [(x * ca - y * sa, x * sa + y * ca) for x, y in base]
    else:  # pragma: no cover - guarded by render_shape
        raise ValueError(shape)
    return [(cx + x, cy + y) for x, y in pts]


def render_shape(
    shape: str, colour: str, size: str, background: str, rng: np.random.Generator, image_size: int = 64
) -> np.ndarray:
    """Draw one shape; returns an ``(image_size, image_size, 3)`` uint8 array."""
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    if colour not in COLOURS:
        raise ValueError(f"colour must be one of {tuple(COLOURS)}, got {colour!r}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {tuple(SIZES)}, got {size!r}")
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {tuple(BACKGROUNDS)}, got {background!r}")
    s = image_size * _SUPERSAMPLE
    bg = BACKGROUNDS[background]
    if bg is None:  # two-tone stripes at a random angle and period
        yy, xx = np.mgrid[0:s, 0:s]
        theta, period = rng.uniform(0, math.pi), rng.uniform(0.15, 0.3) * s
        band = ((xx * math.cos(theta) + yy * math.sin(theta)) // (period / 2)) % 2
        lo, hi = rng.integers(60, 110), rng.integers(150, 200)
        arr = np.where(band[..., None] == 0, lo, hi).repeat(3, axis=2).astype(np.uint8)
        img = Image.fromarray(arr)
    else:
        jitter = rng.integers(-12, 13, size=3)
        img = Image.new("RGB", (s, s), tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(bg, jitter)))
    draw = ImageDraw.Draw(img)
    lo, hi = SIZES[size]
    r = rng.uniform(lo, hi) * s / 2
    cx, cy = rng.uniform(r + 1, s - r - 1, size=2)
    rgb = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[colour], rng.integers(-20, 21, size=3)))
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgb)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, rng.uniform(-0.3, 0.3)), fill=rgb)
    img = img.resize((image_size, image_size), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


def _sample(index: int, seed: int, split: str, image_size: int) -> tuple[np.ndarray, dict[str, str]]:
    rng = np.random.default_rng([seed, index, 0 if split == "train" else 1])
    attrs = {
        "shape": SHAPES[rng.integers(len(SHAPES))],
        "colour": list(COLOURS)[rng.integers(len(COLOURS))],
        "size": list(SIZES)[rng.integers(len(SIZES))],
        "background": list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))],
    }
    image = render_shape(**attrs, rng=rng, image_size=image_size)
    full = split != "train" or rng.random() < 0.4
    return image, {"caption": caption_for(attrs, full=full, rng=rng), "split": split, **attrs}


def caption_for(attrs: dict[str, str], *, full: bool = True, rng: np.random.Generator | None = None) -> str:
    """ "a small red circle on a grey background", or (``full=False``) a shorter form that leaves out
    the size and/or background, as people write captions of varying detail."""
    size, bg = f"{attrs['size']} ", f" on a {attrs['background']} background"
    if not full:
        form = int(rng.integers(3)) if rng is not None else 2
        size, bg = (size, "") if form == 0 else ("", bg) if form == 1 else ("", "")
    return f"a {size}{attrs['colour']} {attrs['shape']}{bg}"


def generate_shapes(
    root: str | Path,
    n_train: int = 2000,
    n_heldout: int = 500,
    *,
    seed: int = 0,
    image_size: int = 64,
    fmt: str = "csv",
) -> ShapesDataset:
    """Write the shapes dataset under ``root``: ``images/<split>/<n>.png`` plus ``captions.<fmt>``.

    The same ``seed`` always gives the same images and captions. Existing files are overwritten.
    """
    if n_train < 0 or n_heldout < 0 or n_train + n_heldout == 0:
        raise ValueError(f"n_train and n_heldout must be >= 0 and not both 0, got {n_train}, {n_heldout}")
    if fmt not in ("csv", "jsonl"):
        raise ValueError(f"fmt must be 'csv' or 'jsonl', got {fmt!r}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16 pixels, got {image_size}")
    root = Path(root)
    rows = []
    for split, n in (("train", n_train), ("heldout", n_heldout)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image, meta = _sample(i, seed, split, image_size)
            rel = f"images/{split}/{i:06d}.png"
            Image.fromarray(image).save(root / rel)
            rows.append({"path": rel, **meta})
    captions = root / f"captions.{fmt}"
    if fmt == "csv":
        with captions.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS)
            w.writeheader()
            w.writerows(rows)
    else:
        captions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    classes = {
        "shape": SHAPES,
        "colour": tuple(COLOURS),
        "size": tuple(SIZES),
        "background": tuple(BACKGROUNDS),
    }
    return ShapesDataset(root, captions, n_train, n_heldout, seed, classes)
