"""Request parsing for the search, embed and classify endpoints: plain Python, every mistake a 4xx.

A search names exactly one query: ``text``, an image (``image_b64`` in JSON, or an ``image`` file in a
multipart form) or an ``embedding``; plus ``k``, optional metadata ``filters`` and an ``index`` name.

>>> q = parse_search({"text": "a red circle", "k": 3})
>>> q.kind, q.k, q.index
('text', 3, None)
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raylens.serve.limits import ServeError, ServeLimits, check_batch, check_k, check_pixels, check_text

__all__ = [
    "SearchQuery",
    "parse_search",
    "parse_search_form",
    "parse_texts_or_images",
    "decode_upload",
    "decode_b64",
    "check_filters",
    "check_index_name",
    "SEARCH_JSON_SCHEMA",
    "SEARCH_FORM_SCHEMA",
    "ITEMS_JSON_SCHEMA",
    "DEFAULT_K",
    "MAX_EMBEDDING_DIM",
]

DEFAULT_K = 10
MAX_EMBEDDING_DIM = 8192
_INDEX_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SCALAR = (str, int, float, bool, type(None))
_FILTER_OPS = ("eq", "ne", "in", "not_in")


@dataclass
class SearchQuery:
    """One validated search request."""

    kind: str
    """``"text"``, ``"image"`` or ``"embedding"``."""
    k: int = DEFAULT_K
    text: str | None = None
    image: np.ndarray | None = None
    """The decoded ``(H, W, 3)`` uint8 query image."""
    embedding: np.ndarray | None = None
    filters: dict[str, Any] | None = None
    index: str | None = None
    """Index name; None means the service's default index."""
    extra: dict[str, Any] = field(default_factory=dict)


def _bad(code: str, message: str, status: int = 422) -> ServeError:
    return ServeError(status, code, message)


def check_index_name(name: Any) -> str | None:
    """None (the default index) or a short name of letters, digits, ``_.-``."""
    if name is None:
        return None
    if not isinstance(name, str) or not _INDEX_NAME.match(name):
        raise _bad(
            "bad_index_name",
            f"`index` must be a name such as 'natural' (letters, digits, _ . -; at most 64), "
            f"got {name!r}; GET /indices lists them",
        )
    return name


def _check_scalar(col: str, v: Any) -> None:
    if not isinstance(v, _SCALAR) or (isinstance(v, float) and not math.isfinite(v)):
        raise _bad("bad_filters", f"`filters[{col!r}]` values must be strings, numbers, booleans or null, got {v!r}")


def check_filters(filters: Any) -> dict[str, Any] | None:
    """``{column: value | [values] | {op: value}}`` with scalar values; ``op`` in eq, ne, in, not_in."""
    if filters is None:
        return None
    if not isinstance(filters, dict):
        raise _bad("bad_filters", f"`filters` must be an object of column -> value, got {type(filters).__name__}")
    if len(filters) > 16:
        raise _bad("bad_filters", f"`filters` names {len(filters)} columns; at most 16")
    for col, cond in filters.items():
        if isinstance(cond, dict):
            if len(cond) != 1 or next(iter(cond)) not in _FILTER_OPS:
                raise _bad(
                    "bad_filters", f"`filters[{col!r}]` must be {{op: value}} with op in {_FILTER_OPS}, got {cond!r}"
                )
            op, cond = next(iter(cond.items()))
            if op in ("in", "not_in") and not isinstance(cond, list):
                raise _bad("bad_filters", f"`filters[{col!r}]` with {op!r} needs a list of values")
        values = cond if isinstance(cond, list) else [cond]
        if len(values) > 1000:
            raise _bad("bad_filters", f"`filters[{col!r}]` lists {len(values)} values; at most 1000")
        kinds = {type(v) for v in values if v is not None}
        for v in values:
            _check_scalar(col, v)
        if len(kinds - {int, float}) > 1 or (kinds & {int, float} and kinds - {int, float}):
            raise _bad(
                "bad_filters", f"`filters[{col!r}]` mixes value types {sorted(t.__name__ for t in kinds)}; use one"
            )
    return filters or None


def decode_b64(data: Any, *, field_name: str = "image_b64") -> bytes:
    """Standard base64 (a ``data:image/...;base64,`` prefix is allowed) -> bytes, or 400."""
    if not isinstance(data, str):
        raise _bad("bad_base64", f"`{field_name}` must be a base64 string, got {type(data).__name__}", 400)
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        return base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise _bad(
            "bad_base64", f"`{field_name}` is not valid base64; encode the image file bytes with base64", 400
        ) from None


def decode_upload(data: bytes, limits: ServeLimits) -> np.ndarray:
    """Image file bytes -> ``(H, W, 3)`` uint8; 413 past ``max_pixels`` (read from the header before any
    decoding: decompression bombs never decode), 400 for anything that is not a readable image."""
    from PIL import Image

    from raylens.data.images import BadImage, decode_image

    if not data:
        raise _bad("bad_image", "the image is empty", 400)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
                frames = getattr(img, "n_frames", 1)
    except Image.DecompressionBombError:
        raise _bad("too_many_pixels", f"the image is over the limit of {limits.max_pixels} pixels", 413) from None
    except Exception as e:  # PIL raises many types for junk bytes
        raise _bad(
            "bad_image", f"not a readable image ({type(e).__name__}); send a PNG, JPEG or WebP file", 400
        ) from None
    check_pixels(int(w) * int(h), limits)
    if frames > 1:
        check_pixels(int(w) * int(h) * int(frames), limits)
    try:
        return decode_image(data, max_pixels=limits.max_pixels)
    except BadImage as e:
        raise _bad("bad_image", f"{e}; send a PNG, JPEG or WebP file", 400) from None


def _k(value: Any, limits: ServeLimits) -> int:
    if value is None:
        return min(DEFAULT_K, limits.max_k)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    check_k(value, limits)
    return value


def _embedding(value: Any) -> np.ndarray:
    if not isinstance(value, list) or not value:
        raise _bad("bad_embedding", "`embedding` must be a non-empty list of numbers")
    if len(value) > MAX_EMBEDDING_DIM:
        raise _bad("bad_embedding", f"`embedding` has {len(value)} numbers; at most {MAX_EMBEDDING_DIM}", 413)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise _bad("bad_embedding", "`embedding` must hold only numbers")
    x = np.asarray(value, dtype=np.float64)
    if not np.isfinite(x).all() or np.abs(x).max() > 1e30:
        raise _bad("bad_embedding", "`embedding` holds NaN, infinite or huge values")
    if not np.any(x):
        raise _bad("bad_embedding", "`embedding` is all zeros; it cannot be normalised")
    return x.astype(np.float32)


def parse_search(body: Any, limits: ServeLimits = ServeLimits()) -> SearchQuery:
    """A JSON search body (already parsed) -> :class:`SearchQuery`, or a 4xx :class:`ServeError`."""
    if not isinstance(body, dict):
        raise _bad("bad_request", f"the body must be a JSON object, got {type(body).__name__}", 400)
    unknown = set(body) - {"text", "image_b64", "embedding", "k", "filters", "index"}
    if unknown:
        raise _bad(
            "unknown_fields", f"unknown field(s) {sorted(unknown)}; use text, image_b64, embedding, k, filters, index"
        )
    given = [f for f in ("text", "image_b64", "embedding") if body.get(f) is not None]
    if len(given) != 1:
        raise _bad("one_query", f"give exactly one of `text`, `image_b64` or `embedding` (got {given or 'none'})")
    q = SearchQuery(
        kind={"image_b64": "image"}.get(given[0], given[0]),
        k=_k(body.get("k"), limits),
        filters=check_filters(body.get("filters")),
        index=check_index_name(body.get("index")),
    )
    if q.kind == "text":
        if not isinstance(body["text"], str):
            raise _bad("bad_text", f"`text` must be a string, got {type(body['text']).__name__}")
        check_text(body["text"], limits)
        q.text = body["text"]
    elif q.kind == "image":
        q.image = decode_upload(decode_b64(body["image_b64"]), limits)
    else:
        q.embedding = _embedding(body["embedding"])
    return q


def parse_search_form(fields: dict[str, Any], image: bytes | None, limits: ServeLimits = ServeLimits()) -> SearchQuery:
    """A multipart search: form fields (``text``, ``k``, ``index``, ``filters`` as a JSON string) and an
    optional ``image`` file's bytes."""
    body: dict[str, Any] = {}
    for name in ("text", "k", "index"):
        if fields.get(name) not in (None, ""):
            body[name] = fields[name]
    if fields.get("filters") not in (None, ""):
        try:
            body["filters"] = json.loads(fields["filters"])
        except (TypeError, ValueError):
            raise _bad(
                "bad_filters", 'the `filters` form field must be a JSON object, e.g. {"shape": "circle"}'
            ) from None
    if image is not None:
        if "text" in body:
            raise _bad("one_query", "give either `text` or an `image` file, not both")
        q = parse_search({**body, "text": "x"}, limits)  # validates k, filters, index
        q.kind, q.text, q.image = "image", None, decode_upload(image, limits)
        return q
    return parse_search(body, limits)


def parse_texts_or_images(
    body: Any, limits: ServeLimits = ServeLimits(), *, allow_texts: bool = True
) -> tuple[str, list[Any]]:
    """``{"texts": [...]}`` or ``{"images_b64": [...]}`` -> ``("text", texts)`` or ``("image", arrays)``."""
    if not isinstance(body, dict):
        raise _bad("bad_request", f"the body must be a JSON object, got {type(body).__name__}", 400)
    allowed = {"texts", "images_b64"} if allow_texts else {"images_b64"}
    unknown = set(body) - allowed
    if unknown:
        raise _bad("unknown_fields", f"unknown field(s) {sorted(unknown)}; use {sorted(allowed)}")
    given = [f for f in allowed if body.get(f) is not None]
    if len(given) != 1:
        raise _bad("one_input", f"give exactly one of {sorted(allowed)} (got {given or 'none'})")
    items = body[given[0]]
    if not isinstance(items, list):
        raise _bad("bad_items", f"`{given[0]}` must be a list")
    check_batch(len(items), limits)
    if given[0] == "texts":
        for t in items:
            if not isinstance(t, str):
                raise _bad("bad_text", f"`texts` must hold strings, got {type(t).__name__}")
            check_text(t, limits, field="texts[]")
        return "text", list(items)
    return "image", [decode_upload(decode_b64(b, field_name="images_b64[]"), limits) for b in items]


_FILTERS_SCHEMA = {
    "type": "object",
    "additionalProperties": True,
    "description": "column -> value, [values] or {op: value} with op in eq, ne, in, not_in",
    "example": {"shape": "circle"},
}
SEARCH_JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "description": "Exactly one of text, image_b64 or embedding.",
    "properties": {
        "text": {"type": "string", "example": "a red circle"},
        "image_b64": {"type": "string", "description": "an image file, base64-encoded"},
        "embedding": {"type": "array", "items": {"type": "number"}},
        "k": {"type": "integer", "default": DEFAULT_K},
        "filters": _FILTERS_SCHEMA,
        "index": {"type": "string", "description": "index name (GET /indices); default: the first"},
    },
}
SEARCH_FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "text": {"type": "string"},
        "image": {"type": "string", "format": "binary"},
        "k": {"type": "integer"},
        "filters": {"type": "string", "description": "a JSON object"},
        "index": {"type": "string"},
    },
}
ITEMS_JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "description": "Exactly one of texts or images_b64.",
    "properties": {
        "texts": {"type": "array", "items": {"type": "string"}},
        "images_b64": {"type": "array", "items": {"type": "string"}},
    },
}
