"""Image decoding and open_clip-equivalent preprocessing, as plain numpy/PIL functions.

``decode_image`` turns bytes into an ``(H, W, 3)`` uint8 array or raises :class:`BadImage` with a
reason. ``ClipPreprocess`` resizes the shortest side (bicubic), centre-crops and normalises as
``open_clip.image_transform(size, is_train=False)`` does, on numpy arrays, with torch's uint8 resize
kernel (:func:`resize_bicubic`, within a grey level of open_clip's PIL resize on photos).

Pillow decodes every format. Two faster PNG decoders were tried and left out: torchvision's
``decode_png`` (libpng) kills the process with a segmentation fault on a PNG with a bad filter byte
(torchvision 0.29.1; the first mutated case of ``tests/unit/test_fuzz_decoders.py``): a crashed worker
loses its rows. libspng through ``pyspng`` (115 against 162 us for a 128 px PNG) skips zlib's
Adler-32 check, so a flipped byte in stored (incompressible) image data under a mended CRC decodes
to wrong pixels where Pillow refuses the file (``tests/ray/test_reliability_ingest.py``).
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "BadImage",
    "decode_image",
    "read_image_file",
    "ClipPreprocess",
    "resize_bicubic",
    "MAX_IMAGE_PIXELS",
    "MAX_IMAGE_BYTES",
    "BATCH_PIXELS",
    "OPENAI_MEAN",
    "OPENAI_STD",
]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_IMAGE_PIXELS = 64_000_000
"""Images with more pixels than this are refused (decompression-bomb guard)."""
MAX_IMAGE_BYTES = 256 * 2**20
"""Image files larger than this are refused before they are read."""


_ORIENTATION = 0x0112  # the EXIF Orientation tag


class BadImage(ValueError):
    """Raised by :func:`decode_image` for bytes that are not a usable image; ``str(e)`` is the reason."""


def read_image_file(
    path: str | os.PathLike, *, max_bytes: int = MAX_IMAGE_BYTES, root: str | os.PathLike | None = None
) -> bytes:
    """The bytes of the image file ``path``: a regular file of at most ``max_bytes``.

    A path a captions table names may be ``/dev/zero``, a FIFO or a huge file; each is refused
    (:class:`BadImage`) without reading more than ``max_bytes + 1`` bytes. A missing file raises
    ``FileNotFoundError``, an unreadable one ``OSError``. With ``root``, the file must also lie inside
    that directory once every symbolic link is resolved (``../``, absolute paths elsewhere and links
    pointing out are refused), and it is opened by that resolved path without following a link at
    its last component, so a link swapped in after the check is refused too.

    >>> read_image_file("/dev/zero")
    Traceback (most recent call last):
    ...
    raylens.data.images.BadImage: not a regular file (a device, FIFO or socket)
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)  # a FIFO with no writer would otherwise wait forever
    if root is not None:
        real_root = os.path.realpath(root)
        real = os.path.realpath(path)
        if os.path.commonpath([real_root, real]) != real_root or real == real_root:
            raise BadImage(f"outside the dataset root {os.fspath(root)!r} (image_root confines reads to it)")
        path, flags = real, flags | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb", buffering=0) as f:
        info = os.fstat(f.fileno())
        if stat.S_ISDIR(info.st_mode):
            raise BadImage("a directory, not an image file")
        if not stat.S_ISREG(info.st_mode):
            raise BadImage("not a regular file (a device, FIFO or socket)")
        if info.st_size > max_bytes:
            raise BadImage(f"{info.st_size} bytes is over the file limit of {max_bytes}")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew since the check
        raise BadImage(f"over the file limit of {max_bytes} bytes")
    return data


def decode_image(data: bytes, *, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode image bytes (PNG, JPEG, WebP, ...) into an RGB ``(H, W, 3)`` uint8 array, upright.

    The EXIF orientation is applied (a phone photo stored landscape with Orientation=6 comes back
    portrait, as a viewer shows it); 16-bit grey keeps its high byte. Any decoder failure is a
    :class:`BadImage` with the reason.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"decode_image expects bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise BadImage("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # reads the header only
        with img:
            w, h = img.size
            if w * h > max_pixels:
                raise BadImage(f"{w}x{h} pixels is over the limit of {max_pixels}")
            img.load()  # forces a full decode, so truncated files fail here
            if img.getexif().get(_ORIENTATION, 1) != 1:
                img = ImageOps.exif_transpose(img)
            if img.mode.startswith("I;16"):  # Pillow's RGB clips 16-bit grey at 255 (mid-grey came out white)
                return np.repeat((np.asarray(img) >> 8).astype(np.uint8)[..., None], 3, axis=2)
            return np.asarray(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8)
    except BadImage:
        raise
    except (Image.UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(f"not a readable image ({type(e).__name__}: {e})") from None
    except MemoryError:
        raise BadImage("the image does not fit in memory") from None
    except Exception as e:  # PIL's plug-ins raise OSError, SyntaxError, struct.error, IndexError, ... on junk
        raise BadImage(f"corrupt or truncated image ({type(e).__name__}: {e})") from None


def resize_bicubic(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an ``(H, W, 3)`` uint8 array, or an ``(N, H, W, 3)`` stack of them, to ``height`` x
    ``width``: antialiased bicubic, as PIL's ``resize(BICUBIC)`` and torchvision's tensor ``Resize``
    do, about 3x faster than PIL (torch's uint8 kernel), and a stack of small images in one call
    faster still. Photos come out within one grey level of PIL's; on high-contrast noise a few pixels
    differ by more, where PIL clips the bicubic overshoot between its two passes.

    >>> resize_bicubic(np.zeros((64, 48, 3), np.uint8), 32, 24).shape, resize_bicubic(np.zeros((5, 8, 8, 3), np.uint8), 4, 4).shape
    ((32, 24, 3), (5, 4, 4, 3))
    """
    import torch

    if image.shape[-3:-1] == (height, width):
        return image
    if not image.flags.writeable:
        image = image.copy()  # torch refuses read-only memory (Ray hands those out)
    x = torch.from_numpy(image)
    x = (x[None] if image.ndim == 3 else x).permute(0, 3, 1, 2)
    y = torch.nn.functional.interpolate(x, size=(height, width), mode="bicubic", antialias=True).permute(0, 2, 3, 1)
    return (y[0] if image.ndim == 3 else y).numpy()


BATCH_PIXELS = 1 << 16
"""Images up to this many pixels (256 x 256) are resized together by :meth:`ClipPreprocess.batch` and
wait for it in a decode batch (3x faster for small images, the same result); bigger ones go one by
one, so no batch holds a stacked copy of many decoded photos."""


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
        self._check(image)
        return self.normalize(self._resize_crop(image))

    def _check(self, image: np.ndarray) -> None:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 image, got shape {image.shape} dtype {image.dtype}")

    def _resize_crop(self, images: np.ndarray) -> np.ndarray:
        """``(..., H, W, 3)`` -> ``(..., S, S, 3)`` uint8."""
        s = self.image_size
        h, w = images.shape[-3:-1]
        if (h, w) == (s, s):
            return images
        # torchvision's Resize(int): the short side becomes s, the long side is truncated
        nh, nw = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
        left, top = int(round((nw - s) / 2.0)), int(round((nh - s) / 2.0))
        return resize_bicubic(images, nh, nw)[..., top : top + s, left : left + s, :]

    def normalize(self, image: np.ndarray) -> np.ndarray:
        """An ``(S, S, 3)`` uint8 array -> ``(3, S, S)`` float32 (a stack ``(N, S, S, 3)`` ->
        ``(N, 3, S, S)``), scaled to [0, 1] then normalised."""
        scale = (1.0 / (255.0 * np.asarray(self.std, np.float32)))[:, None, None]
        shift = (-np.asarray(self.mean, np.float32) / np.asarray(self.std, np.float32))[:, None, None]
        axes = (2, 0, 1) if image.ndim == 3 else (0, 3, 1, 2)
        x = np.ascontiguousarray(image.transpose(axes), dtype=np.float32)
        x *= scale
        x += shift
        return x

    def batch(self, images) -> np.ndarray:
        """Preprocess a sequence of images into an ``(N, 3, S, S)`` float32 array, the same as one by
        one. Small images (:data:`BATCH_PIXELS`) of one size are resized in one call: 10 µs an image
        instead of 35 for 128 px PNGs to 32 px (one torch thread)."""
        s = self.image_size
        out = np.empty((len(images), 3, s, s), np.float32)
        sizes: dict[tuple[int, ...], list[int]] = {}
        for i, im in enumerate(images):
            self._check(im)
            if im.shape[0] * im.shape[1] <= BATCH_PIXELS:
                sizes.setdefault(im.shape, []).append(i)
            else:  # a photo alone: no stacked copy of many big images
                out[i] = self(im)
        for idx in sizes.values():
            out[idx] = self.normalize(self._resize_crop(np.stack([images[i] for i in idx])))
        return out
