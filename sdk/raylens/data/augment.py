"""Train-time augmentation on numpy/PIL, seedable per row: a drop-in for ``ClipPreprocess``.

``TrainAugment`` does what ``open_clip.image_transform(size, is_train=True)`` does by default
(RandomResizedCrop with scale (0.9, 1.0), bicubic, then the CLIP normalisation), optionally followed
by a horizontal flip and torchvision's RandAugment, and returns the same ``(3, S, S)`` float32 array
as ``ClipPreprocess`` (values in ``[(0 - mean) / std, (1 - mean) / std]`` per channel).

Randomness: each call draws from a generator seeded by ``(seed, epoch, hash(key))``. The readers pass
the row's path as ``key`` and the number of earlier reads of that row as ``epoch``, so a run is
reproducible from its seed, every row gets its own draw and every epoch a new one. Called without a
key, the instance's own call counter takes the key's place (reproducible from a fresh instance).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from PIL import Image

from raylens.data.images import OPENAI_MEAN, OPENAI_STD, ClipPreprocess, resize_bicubic

__all__ = ["TrainAugment", "random_resized_crop_box", "row_rng"]


def row_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    """The generator for one row: a function of ``(seed, epoch, key)`` only."""
    digest = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return np.random.default_rng([seed, epoch, digest])


def random_resized_crop_box(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` drawn as torchvision's ``RandomResizedCrop.get_params`` does, from ``rng``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    # fallback: a centre crop at the nearest allowed aspect ratio
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@dataclass(frozen=True)
class TrainAugment:
    """Random resized crop, optional flip and RandAugment, then CLIP normalisation.

    Call it like ``ClipPreprocess``: one ``(H, W, 3)`` uint8 array in, ``(3, S, S)`` float32 out.
    """

    image_size: int
    """Side of the square model input, in pixels."""
    scale: tuple[float, float] = (0.9, 1.0)
    """Range of the crop's area as a fraction of the image (open_clip's default)."""
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    """Range of the crop's aspect ratio (width / height)."""
    hflip: bool = False
    """Flip left-right with probability 0.5 (off by default: captions may say "left" or "right")."""
    randaugment: bool = False
    """Apply torchvision's RandAugment after the crop."""
    num_ops: int = 2
    """RandAugment: operations per image."""
    magnitude: int = 9
    """RandAugment: strength, 0 to 30 (``num_magnitude_bins`` is torchvision's 31)."""
    seed: int = 0
    """Seed of all randomness; the same seed, key and epoch give the same output."""
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    _calls: list[int] = field(default_factory=lambda: [0], init=False, repr=False, compare=False)

    keyed: ClassVar[bool] = True
    """Readers pass ``key=path`` and ``epoch=`` to transforms that set this."""

    def __post_init__(self):
        if not (0 < self.scale[0] <= self.scale[1] <= 1):
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {self.scale}")
        if not (0 < self.ratio[0] <= self.ratio[1]):
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {self.ratio}")
        if self.num_ops < 0 or not (0 <= self.magnitude <= 30):
            raise ValueError(
                f"RandAugment needs num_ops >= 0 and 0 <= magnitude <= 30, "
                f"got num_ops={self.num_ops}, magnitude={self.magnitude}"
            )
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
        # validates image_size, mean and std with ClipPreprocess's messages
        ClipPreprocess(self.image_size, self.mean, self.std)

    def __call__(self, image: np.ndarray, key: str | None = None, epoch: int = 0) -> np.ndarray:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 image, got shape {image.shape} dtype {image.dtype}")
        if key is None:
            key = f"#call{self._calls[0]}"
            self._calls[0] += 1
        rng = row_rng(self.seed, epoch, key)
        s = self.image_size
        top, left, h, w = random_resized_crop_box(image.shape[0], image.shape[1], self.scale, self.ratio, rng)
        crop = resize_bicubic(image[top : top + h, left : left + w], s, s)
        if self.hflip and rng.random() < 0.5:
            crop = crop[:, ::-1]
        if self.randaugment and self.num_ops > 0:
            crop = np.asarray(
                self._randaugment(Image.fromarray(np.ascontiguousarray(crop)), int(rng.integers(2**63 - 1)))
            )
        return ClipPreprocess(s, self.mean, self.std).normalize(crop)

    def _randaugment(self, img: Image.Image, torch_seed: int) -> Image.Image:
        import torch
        from torchvision.transforms import RandAugment

        # torchvision draws from torch's global generator: seed a forked copy, leave the caller's alone
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch_seed)
            return RandAugment(num_ops=self.num_ops, magnitude=self.magnitude)(img)

    def batch(self, images, keys=None, epoch: int = 0) -> np.ndarray:
        """Augment a sequence of images (keys default to the call counter) into ``(N, 3, S, S)``."""
        if len(images) == 0:
            return np.zeros((0, 3, self.image_size, self.image_size), np.float32)
        keys = keys if keys is not None else [None] * len(images)
        return np.stack([self(im, k, epoch) for im, k in zip(images, keys)])
