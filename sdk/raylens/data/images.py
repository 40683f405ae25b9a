"""Image decoding and open_clip-equivalent preprocessing, as plain numpy/PIL functions.

``decode_image`` turns bytes into an ``(H, W, 3)`` uint8 array or raises :class:`BadImage` with a
reason. ``ClipPreprocess`` resizes the shortest side (bicubic), centre-crops and normalises, exactly
as ``open_clip.image_transform(size, is_train=False)`` does, but on numpy arrays and in batches.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = ["BadImage", "decode_image", "ClipPreprocess", "MAX_IMAGE_PIXELS", "OPENAI_MEAN", "OPENAI_STD"]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_IMAGE_PIXELS = 64_000_000
"""Images with more pixels than this are refused (decompression-bomb guard)."""


class BadImage(ValueError):
    """Raised by :func:`decode_image` for bytes that are not a usable image; ``str(e)`` is the reason."""


def decode_image(data: bytes, *, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode image bytes (PNG, JPEG, WebP, ...) into an RGB ``(H, W, 3)`` uint8 array."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"decode_image expects bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise BadImage("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise BadImage(f"{w}x{h} pixels is over the limit of {max_pixels}")
                img.load()  # forces a full decode, so truncated files fail here
                return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except BadImage:
        raise
    except (Image.UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(f"not a readable image ({type(e).__name__}: {e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImage(f"corrupt or truncated image ({type(e).__name__}: {e})") from None


@dataclass(frozen=True)
class ClipPreprocess:
    """open_clip's eval preprocessing on numpy: shortest side to ``image_size``, centre crop, normalise.

    Calling it on one ``(H, W, 3)`` uint8 array returns a ``(3, S, S)`` float32 array.
    """

    image_size: int
    """Side of the square model input, in pixels."""
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD

    def __post_init__(self):
        if not isinstance(self.image_size, int) or self.image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {self.image_size!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values with std > 0, got mean={self.mean}, std={self.std}")

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 image, got shape {image.shape} dtype {image.dtype}")
        s = self.image_size
        h, w = image.shape[:2]
        img = Image.fromarray(image)
        if (h, w) != (s, s):
            # torchvision's Resize(int): the short side becomes s, the long side is truncated
            nh, nw = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
            if (nh, nw) != (h, w):
                img = img.resize((nw, nh), Image.Resampling.BICUBIC)
            left, top = int(round((nw - s) / 2.0)), int(round((nh - s) / 2.0))
            img = img.crop((left, top, left + s, top + s))
        x = np.asarray(img, dtype=np.float32) * (1.0 / 255.0)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def batch(self, images) -> np.ndarray:
        """Preprocess a sequence of images into an ``(N, 3, S, S)`` float32 array."""
        if len(images) == 0:
            return np.zeros((0, 3, self.image_size, self.image_size), np.float32)
        return np.stack([self(im) for im in images])
