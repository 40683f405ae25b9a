"""The image formats the services accept, told from the file's first bytes, and a per-request pixel budget.

Only the formats we mean are decoded (PNG, JPEG, WebP, GIF, BMP): the type comes from the file
header (its magic bytes), never from a name or a declared content type, and Pillow is then asked to
open that one format only, so none of its other parsers (TIFF, PSD, EPS, ICO, ...) ever sees
uploaded bytes. :class:`PixelBudget` counts the pixels one request makes the service decode, across
all its images, so a request of many mid-sized images cannot add up past ``max_pixels``.

>>> sniff_image_type(b"\\x89PNG\\r\\n\\x1a\\n...."), sniff_image_type(b"II*\\x00 a TIFF")
('image/png', None)
>>> budget = PixelBudget(1_000)
>>> budget.spend(600); budget.left
400
"""

from __future__ import annotations

from raylens.serve.limits import ServeError

__all__ = ["IMAGE_TYPES", "PIL_FORMATS", "sniff_image_type", "PixelBudget", "ACCEPTED_IMAGES"]

IMAGE_TYPES: dict[str, str] = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/webp": "WEBP",
    "image/gif": "GIF",
    "image/bmp": "BMP",
}
"""Accepted media types -> their Pillow format name."""
PIL_FORMATS: tuple[str, ...] = tuple(IMAGE_TYPES.values())
ACCEPTED_IMAGES = "PNG, JPEG, WebP, GIF or BMP"
"""The accepted formats, as messages name them."""


def sniff_image_type(data: bytes) -> str | None:
    """The media type of an accepted image format from its first bytes, None for anything else."""
    head = bytes(data[:16])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:2] == b"BM" and len(head) >= 14:
        return "image/bmp"
    return None


class PixelBudget:
    """The pixels one request may still make the service decode (413 ``too_many_pixels`` past it)."""

    def __init__(self, max_pixels: int):
        if not isinstance(max_pixels, int) or max_pixels < 1:
            raise ValueError(f"`max_pixels` must be a positive int, got {max_pixels!r}")
        self.max_pixels = max_pixels
        self.left = max_pixels

    def spend(self, n_pixels: int) -> None:
        """Take ``n_pixels`` from the budget, or refuse the request (nothing is taken then)."""
        if n_pixels > self.left:
            spent = self.max_pixels - self.left
            raise ServeError(
                413,
                "too_many_pixels",
                f"this request's images hold {spent + n_pixels} pixels, over the limit of {self.max_pixels} "
                "per request; send fewer or smaller images",
            )
        self.left -= n_pixels
