"""Schemathesis hooks for the raylens services: strategies for the two image formats their OpenAPI
documents name (``raylens-image-base64`` and ``raylens-image``), so generated "valid" requests carry
real, small images. Load with ``SCHEMATHESIS_HOOKS=tests.schemathesis_hooks`` (from the repository root).
"""

from __future__ import annotations

import base64
import io

import schemathesis
from hypothesis import strategies as st

__all__ = ["image_bytes"]


@st.composite
def image_bytes(draw) -> bytes:
    """A small PNG, JPEG, WebP, GIF or BMP file of random size and colour."""
    from PIL import Image

    fmt = draw(st.sampled_from(["PNG", "JPEG", "WEBP", "GIF", "BMP"]))
    w, h = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    colour = tuple(draw(st.integers(0, 255)) for _ in range(3))
    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, fmt)
    return buf.getvalue()


schemathesis.openapi.format("raylens-image", image_bytes())
schemathesis.openapi.format("raylens-image-base64", image_bytes().map(lambda b: base64.b64encode(b).decode()))
