"""The embedded default scene: textured spheres and boxes, ray-traced analytically in numpy.

The scene (:data:`DEFAULT_SCENE`) is a checkered slab with two spheres and two boxes on it, each with
a checker or stripe texture in two distinct colours, lit by one directional light (Lambert + ambient,
with hard shadows). Shading depends on the surface point only, never on the view, so a NeRF can fit
it exactly. World frame: ``+z`` is up; everything lies inside :attr:`Scene.aabb` = ``[-1, 1]^3``.

* :func:`trace` shades any rays (``origins``, unit ``directions``) and returns colour, alpha, depth:
  the exact ground truth for a NeRF's rays.
* :func:`render_gt` renders a camera (``c2w``, :class:`~raylens_domains.multiview.cameras.Intrinsics`).
* :func:`generate_scene` renders views on a hemisphere around the scene and writes a capture:
  a nerfstudio ``transforms.json`` (one file; the split of each frame is in its
  ``train_filenames`` / ``val_filenames`` / ``test_filenames`` lists, and the scene's ``aabb`` and
  ``background`` under ``"raylens"``), or, with ``layout="blender"``, the NeRF-synthetic layout
  (``transforms_{train,val,test}.json`` + RGBA PNGs).

Everything is deterministic: the same arguments write the same pixels.

Public API: :class:`Sphere`, :class:`Box`, :class:`Scene`, :data:`DEFAULT_SCENE`,
:func:`background_rgb`, :func:`trace`, :func:`render_gt`, :class:`GeneratedScene`, :func:`generate_scene`.

>>> from raylens_domains.multiview.cameras import Intrinsics, look_at
>>> img = render_gt(look_at((0, -4, 2), (0, 0, -0.25)), Intrinsics.from_fov(0.6911, 32, 32))
>>> img.shape, img.dtype.name, float(img[0, 0, 0])  # the corner sees the white background
((32, 32, 3), 'float32', 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from raylens_domains.multiview.cameras import Intrinsics, hemisphere_poses
from raylens_domains.multiview.frames import Frame
from raylens_domains.multiview.rays import camera_rays
from raylens_domains.multiview.writer import write_blender, write_transforms

__all__ = [
    "Sphere",
    "Box",
    "Scene",
    "DEFAULT_SCENE",
    "background_rgb",
    "trace",
    "render_gt",
    "GeneratedScene",
    "generate_scene",
]

RGB = tuple[float, float, float]
_EPS = 1e-5
_TEXTURES = ("checker", "stripes")


def _check_common(kind: str, colors, texture: str, frequency: float) -> None:
    if len(colors) != 2 or any(len(c) != 3 or not all(0 <= v <= 1 for v in c) for c in colors):
        raise ValueError(f"{kind}.colors must be two RGB triples in [0, 1], got {colors!r}.")
    if texture not in _TEXTURES:
        raise ValueError(f"{kind}.texture must be one of {_TEXTURES}, got {texture!r}.")
    if not frequency > 0:
        raise ValueError(f"{kind}.frequency must be > 0, got {frequency!r}.")


@dataclass(frozen=True)
class Sphere:
    """A textured sphere."""

    center: tuple[float, float, float]
    """Centre, world units."""
    radius: float
    """Radius, world units (> 0)."""
    colors: tuple[RGB, RGB]
    """The texture's two colours, RGB in [0, 1]."""
    texture: str = "checker"
    """``checker`` (longitude x latitude cells) or ``stripes`` (latitude bands)."""
    frequency: float = 8.0
    """Cells around the equator (checker) or bands from pole to pole (stripes)."""

    def __post_init__(self) -> None:
        if not self.radius > 0:
            raise ValueError(f"Sphere.radius must be > 0, got {self.radius!r}.")
        _check_common("Sphere", self.colors, self.texture, self.frequency)

    def bounds(self) -> np.ndarray:
        c = np.asarray(self.center, dtype=np.float64)
        return np.stack([c - self.radius, c + self.radius])

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Nearest hit distance along each unit ray (``inf`` where none)."""
        oc = o - np.asarray(self.center)
        b = np.einsum("ij,ij->i", oc, d)
        cc = np.einsum("ij,ij->i", oc, oc) - self.radius**2
        disc = b * b - cc
        hit = disc >= 0
        sq = np.sqrt(np.where(hit, disc, 0.0))
        t0, t1 = -b - sq, -b + sq
        t = np.where(t0 > _EPS, t0, np.where(t1 > _EPS, t1, np.inf))
        return np.where(hit, t, np.inf)

    def shade_info(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unit normals and albedo at surface points ``p``."""
        n = (p - np.asarray(self.center)) / self.radius
        n /= np.linalg.norm(n, axis=-1, keepdims=True)
        lat = np.arccos(np.clip(n[:, 2], -1, 1)) / math.pi  # 0 (top) .. 1 (bottom)
        if self.texture == "checker":
            lon = (np.arctan2(n[:, 1], n[:, 0]) / (2 * math.pi)) % 1.0
            cell = np.floor(lon * self.frequency) + np.floor(lat * self.frequency / 2)
        else:
            cell = np.floor(lat * self.frequency)
        colors = np.asarray(self.colors)
        return n, colors[(cell.astype(np.int64) % 2)]


@dataclass(frozen=True)
class Box:
    """A textured box, turned by ``yaw_deg`` about the vertical (z) axis."""

    center: tuple[float, float, float]
    """Centre, world units."""
    half_size: tuple[float, float, float]
    """Half the side lengths along the box's own x, y, z (> 0)."""
    colors: tuple[RGB, RGB]
    """The texture's two colours, RGB in [0, 1]."""
    yaw_deg: float = 0.0
    """Rotation about world z, degrees."""
    texture: str = "checker"
    """``checker`` (square cells on each face) or ``stripes`` (diagonal stripes on each face)."""
    frequency: float = 6.0
    """Cells (or stripes) per world unit."""

    def __post_init__(self) -> None:
        if len(self.half_size) != 3 or not all(h > 0 for h in self.half_size):
            raise ValueError(f"Box.half_size must be three positive lengths, got {self.half_size!r}.")
        _check_common("Box", self.colors, self.texture, self.frequency)

    @property
    def _rot(self) -> np.ndarray:
        a = math.radians(self.yaw_deg)
        return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])

    def bounds(self) -> np.ndarray:
        corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * self.half_size
        w = corners @ self._rot.T + np.asarray(self.center)
        return np.stack([w.min(0), w.max(0)])

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        r = self._rot
        ol = (o - np.asarray(self.center)) @ r  # world -> local: R^T x, written row-wise
        dl = d @ r
        h = np.asarray(self.half_size)
        with np.errstate(divide="ignore", invalid="ignore"):
            t1, t2 = (-h - ol) / dl, (h - ol) / dl
        t1 = np.where(np.isnan(t1), -np.inf, t1)
        t2 = np.where(np.isnan(t2), np.inf, t2)
        tmin = np.minimum(t1, t2).max(axis=1)
        tmax = np.maximum(t1, t2).min(axis=1)
        t = np.where(tmin > _EPS, tmin, tmax)
        return np.where((tmax >= tmin) & (t > _EPS), t, np.inf)

    def shade_info(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = self._rot
        h = np.asarray(self.half_size)
        pl = (p - np.asarray(self.center)) @ r
        axis = np.argmax(np.abs(pl) / h, axis=1)
        rows = np.arange(len(p))
        nl = np.zeros_like(pl)
        nl[rows, axis] = np.sign(pl[rows, axis])
        # the two in-face coordinates, measured from the box's corner so cells line up across faces
        c = (pl + h) * self.frequency
        u = c[rows, (axis + 1) % 3]
        v = c[rows, (axis + 2) % 3]
        cell = np.floor(u) + np.floor(v) if self.texture == "checker" else np.floor((u + v) / 2)
        colors = np.asarray(self.colors)
        return nl @ r.T, colors[(cell.astype(np.int64) % 2)]


@dataclass(frozen=True)
class Scene:
    """Objects, one directional light, and the box the scene is inside."""

    objects: tuple[Sphere | Box, ...]
    """The spheres and boxes."""
    light_dir: tuple[float, float, float] = (0.45, -0.35, 0.82)
    """Direction *towards* the light (normalised on use)."""
    ambient: float = 0.35
    """Ambient fraction in [0, 1]: shade = albedo * (ambient + (1 - ambient) * max(0, n.l) * lit)."""
    shadows: bool = True
    """Cast hard shadows from the light."""
    aabb: tuple[tuple[float, float, float], tuple[float, float, float]] = ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))
    """The scene's bounding box ``(min, max)``; every object must lie inside it."""

    def __post_init__(self) -> None:
        if not self.objects:
            raise ValueError("Scene.objects is empty; add at least one Sphere or Box.")
        if not 0 <= self.ambient <= 1:
            raise ValueError(f"Scene.ambient must be in [0, 1], got {self.ambient!r}.")
        if np.linalg.norm(self.light_dir) < 1e-9:
            raise ValueError("Scene.light_dir must be a non-zero vector.")
        lo, hi = np.asarray(self.aabb, dtype=np.float64)
        for obj in self.objects:
            b = obj.bounds()
            if (b[0] < lo - 1e-9).any() or (b[1] > hi + 1e-9).any():
                raise ValueError(f"Scene: {obj} sticks out of Scene.aabb {self.aabb}; move it or grow the aabb.")


DEFAULT_SCENE = Scene(
    objects=(
        Box((0.0, 0.0, -0.55), (0.9, 0.9, 0.05), ((0.85, 0.84, 0.78), (0.22, 0.28, 0.36)), frequency=2.5),
        Sphere((-0.35, -0.3, -0.15), 0.35, ((0.9, 0.15, 0.1), (0.98, 0.8, 0.2)), "checker", 8),
        Sphere((0.45, 0.4, -0.25), 0.25, ((0.15, 0.35, 0.9), (0.95, 0.95, 0.95)), "stripes", 10),
        Box((0.35, -0.45, -0.25), (0.2, 0.2, 0.25), ((0.1, 0.7, 0.3), (0.05, 0.3, 0.15)), 30.0, "checker", 6),
        Box((-0.45, 0.5, -0.35), (0.15, 0.25, 0.15), ((0.6, 0.2, 0.8), (0.95, 0.9, 0.95)), -20.0, "stripes", 8),
    )
)
"""The embedded default scene (see the module docstring)."""


def background_rgb(background: str | Sequence[float]) -> np.ndarray:
    """``"white"``, ``"black"`` or an RGB triple in [0, 1] -> a float32 (3,) array."""
    if isinstance(background, str):
        named = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}
        if background not in named:
            raise ValueError(f"background must be 'white', 'black' or an RGB triple in [0, 1], got {background!r}.")
        return np.asarray(named[background], dtype=np.float32)
    rgb = np.asarray(background, dtype=np.float32)
    if rgb.shape != (3,) or not ((rgb >= 0) & (rgb <= 1)).all():
        raise ValueError(f"background must be 'white', 'black' or an RGB triple in [0, 1], got {background!r}.")
    return rgb


def _nearest(scene: Scene, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ts = np.stack([obj.intersect(o, d) for obj in scene.objects])
    which = np.argmin(ts, axis=0)
    return ts[which, np.arange(len(o))], which


def trace(
    origins: np.ndarray,
    directions: np.ndarray,
    scene: Scene = DEFAULT_SCENE,
    background: str | Sequence[float] = "white",
) -> dict[str, np.ndarray]:
    """Shade rays analytically.

    Args:
        origins: (N, 3) ray origins.
        directions: (N, 3) ray directions (normalised here).
        scene: what to trace.
        background: colour where a ray hits nothing.

    Returns:
        ``rgb`` (N, 3) float32 composited on ``background``; ``alpha`` (N,) float32, 1 where the ray
        hits; ``depth`` (N,) float32, the distance to the hit (``inf`` where none); ``albedo_rgb``
        (N, 3) the shaded colour before compositing (0 where none).
    """
    o = np.asarray(origins, dtype=np.float64).reshape(-1, 3)
    d = np.asarray(directions, dtype=np.float64).reshape(-1, 3)
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    t, which = _nearest(scene, o, d)
    hit = np.isfinite(t)
    color = np.zeros_like(o)
    light = np.asarray(scene.light_dir, dtype=np.float64)
    light /= np.linalg.norm(light)
    idx = np.nonzero(hit)[0]
    if len(idx):
        p = o[idx] + t[idx, None] * d[idx]
        normals = np.zeros_like(p)
        albedo = np.zeros_like(p)
        for k, obj in enumerate(scene.objects):
            mine = which[idx] == k
            if mine.any():
                normals[mine], albedo[mine] = obj.shade_info(p[mine])
        lambert = np.clip(normals @ light, 0, None)
        if scene.shadows:
            lit_idx = np.nonzero(lambert > 0)[0]
            if len(lit_idx):
                ps = p[lit_idx] + 1e-4 * normals[lit_idx]
                ts, _ = _nearest(scene, ps, np.broadcast_to(light, ps.shape).copy())
                lambert[lit_idx[np.isfinite(ts)]] = 0.0
        color[idx] = albedo * (scene.ambient + (1 - scene.ambient) * lambert)[:, None]
    alpha = hit.astype(np.float64)
    rgb = color + (1 - alpha)[:, None] * background_rgb(background)
    return {
        "rgb": np.clip(rgb, 0, 1).astype(np.float32),
        "alpha": alpha.astype(np.float32),
        "depth": t.astype(np.float32),
        "albedo_rgb": np.clip(color, 0, 1).astype(np.float32),
    }


def _render(c2w, intrinsics: Intrinsics, scene: Scene, background, supersample: int) -> dict[str, np.ndarray]:
    if int(supersample) != supersample or supersample < 1:
        raise ValueError(f"supersample must be a whole number >= 1, got {supersample!r}.")
    s = int(supersample)
    k = intrinsics
    big = Intrinsics(k.fx * s, k.fy * s, k.cx * s, k.cy * s, k.width * s, k.height * s)
    o, d = camera_rays(c2w, big)
    out = trace(o.reshape(-1, 3), d.reshape(-1, 3), scene, background)
    res = {}
    for name in ("rgb", "alpha", "albedo_rgb"):
        a = out[name].reshape(k.height, s, k.width, s, -1).mean(axis=(1, 3))
        res[name] = a[..., 0] if name == "alpha" else a
    return res


def render_gt(
    c2w,
    intrinsics: Intrinsics,
    *,
    scene: Scene = DEFAULT_SCENE,
    background: str | Sequence[float] = "white",
    supersample: int = 1,
) -> np.ndarray:
    """The exact render of ``scene`` from one camera: (H, W, 3) float32 RGB in [0, 1].

    Args:
        c2w: 4x4 camera-to-world (OpenGL convention).
        intrinsics: the camera.
        scene: what to render.
        background: colour where a pixel sees no object.
        supersample: ``s`` traces ``s x s`` rays per pixel and averages them (anti-aliasing);
            ``1`` traces the pixel centre only, exactly the rays of :mod:`.rays`.
    """
    return _render(c2w, intrinsics, scene, background, supersample)["rgb"]


@dataclass(frozen=True)
class GeneratedScene:
    """What :func:`generate_scene` wrote."""

    root: Path
    """The capture folder (pass it to a reader)."""
    layout: str
    """``nerfstudio`` (one ``transforms.json``) or ``blender``."""
    files: tuple[Path, ...]
    """The JSON files written."""
    intrinsics: Intrinsics
    """The one camera every view shares."""
    aabb: np.ndarray
    """(2, 3) scene bounding box, world units."""
    background: tuple[float, float, float]
    """The background colour (RGB in [0, 1])."""
    counts: dict[str, int] = field(default_factory=dict)
    """Frames per split."""


def generate_scene(
    out_dir: str | Path,
    n_train: int = 60,
    n_val: int = 10,
    n_test: int = 10,
    size: int = 100,
    seed: int = 0,
    background: str | Sequence[float] = "white",
    *,
    layout: str = "nerfstudio",
    camera_angle_x: float = 0.6911112070083618,
    radius: float = 3.5,
    supersample: int = 1,
    scene: Scene = DEFAULT_SCENE,
) -> GeneratedScene:
    """Render the scene from views on the upper hemisphere and write a capture to ``out_dir``.

    Cameras sit at ``radius`` from ``(0, 0, -0.25)`` (the scene's middle), at random azimuths and
    elevations between 10 and 70 degrees (seeded; each split has its own draws), and look at it.

    Args:
        out_dir: the capture folder (created).
        n_train, n_val, n_test: views per split (``n_train >= 1``).
        size: image width = height, pixels.
        seed: the seed of the camera draws.
        background: ``white``, ``black`` or an RGB triple.
        layout: ``nerfstudio`` writes ``images/*.png`` + ``transforms.json`` (split lists inside);
            ``blender`` writes ``{train,val,test}/r_*.png`` (RGBA) + ``transforms_{split}.json``.
        camera_angle_x: horizontal field of view, radians (the NeRF-synthetic scenes' value).
        radius: camera distance from the scene's middle.
        supersample: rays per pixel side (1 = pixel centres, exactly what the rays module casts).
        scene: what to render.

    >>> import tempfile
    >>> g = generate_scene(tempfile.mkdtemp(), n_train=2, n_val=1, n_test=1, size=16)
    >>> g.counts, [p.name for p in g.files], g.aabb.tolist()
    ({'train': 2, 'val': 1, 'test': 1}, ['transforms.json'], [[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    """
    if n_train < 1 or n_val < 0 or n_test < 0:
        raise ValueError(f"generate_scene: need n_train >= 1 and n_val, n_test >= 0; got {n_train}, {n_val}, {n_test}.")
    if int(size) != size or size < 4:
        raise ValueError(f"generate_scene: size must be a whole number of pixels >= 4, got {size!r}.")
    if layout not in ("nerfstudio", "blender"):
        raise ValueError(f"generate_scene: layout must be 'nerfstudio' or 'blender', got {layout!r}.")
    bg = background_rgb(background)
    k = Intrinsics.from_fov(camera_angle_x, int(size), int(size))
    target = (0.0, 0.0, -0.25)
    rngs = np.random.default_rng(seed).spawn(3)
    frames, alphas = [], []
    for split, n, rng in zip(("train", "val", "test"), (n_train, n_val, n_test), rngs):
        for c2w in hemisphere_poses(n, rng, radius=radius, target=target):
            out = _render(c2w, k, scene, bg, supersample)
            if layout == "blender":  # straight colour + alpha; the reader composites
                a = out["alpha"]
                straight = np.where(a[..., None] > 0, out["albedo_rgb"] / np.maximum(a, 1e-6)[..., None], 0.0)
                frames.append(Frame(np.clip(straight, 0, 1).astype(np.float32), c2w, k, split, "", len(frames)))
                alphas.append(a)
            else:
                frames.append(Frame(out["rgb"], c2w, k, split, "", len(frames)))
    aabb = np.asarray(scene.aabb, dtype=np.float64)
    info = {"aabb": aabb.tolist(), "background": bg.tolist(), "generator": "raylens procedural scene", "seed": seed}
    root = Path(out_dir)
    if layout == "blender":
        files = tuple(write_blender(frames, root, alphas=alphas, extra=info))
    else:
        files = (
            write_transforms(
                frames, root, aabb=aabb, background=bg, extra={"generator": info["generator"], "seed": seed}
            ),
        )
    counts = {"train": n_train, "val": n_val, "test": n_test}
    return GeneratedScene(root, layout, files, k, aabb, tuple(float(c) for c in bg), counts)
