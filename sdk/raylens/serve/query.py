"""Request parsing for the search, embed and classify endpoints: plain Python, every mistake a 4xx.

A search names exactly one query: ``text``, an image (``image_b64`` in JSON, or an ``image`` file in a
multipart form) or an ``embedding``; plus ``k``, optional metadata ``filters`` and an ``index`` name.
It becomes a :class:`raylens.search.SearchQuery`, the query type of the one search core, which the
index deployment runs (``k`` above the index size returns every hit, as in the SDK).

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
from typing import Any

import numpy as np

from raylens.search import DEFAULT_K, SearchQuery
from raylens.serve.limits import ServeError, ServeLimits, check_batch, check_k, check_text
from raylens.serve.media import ACCEPTED_IMAGES, IMAGE_TYPES, PixelBudget, sniff_image_type

__all__ = [
    "SearchQuery",
    "parse_search",
    "parse_search_form",
    "parse_texts_or_images",
    "decode_upload",
    "decode_b64",
    "check_filters",
    "check_index_name",
    "check_unicode",
    "DEFAULT_K",
    "MAX_EMBEDDING_DIM",
]

MAX_EMBEDDING_DIM = 8192
MAX_FILTER_STRING = 256
"""Longest string a filter value may be."""
MAX_FILTER_VALUES = 256
"""Most values one filter condition may list."""
EMBEDDING_MAX_ABS = 1e6
"""Largest magnitude of an embedding component."""
EMBEDDING_MIN_PEAK = 1e-6
"""An embedding needs one component at least this large in magnitude (it cannot be all zero)."""
_WHITE_SPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000\x1c\x1d\x1e\x1f"
)
NONBLANK_PATTERN = "[^" + _WHITE_SPACE + "]"
"""A text must hold a character that is not white space (Python's ``str.isspace``). The characters
are listed literally, so every regex engine (the OpenAPI schema's readers too) reads the class alike."""
_INT64 = 2**63
_INDEX_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SCALAR = (str, int, float, bool, type(None))
_FILTER_OPS = ("eq", "ne", "in", "not_in")


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


def check_unicode(text: str, field: str, code: str = "bad_text") -> str:
    """400 unless ``text`` is valid Unicode (JSON may carry lone surrogates, which no encoder takes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad(code, f"`{field}` holds invalid Unicode (a lone surrogate); send UTF-8 text", 400) from None
    return text


def _check_scalar(col: str, v: Any) -> None:
    if not isinstance(v, _SCALAR) or (isinstance(v, float) and not math.isfinite(v)):
        raise _bad("bad_filters", f"`filters[{col!r}]` values must be strings, numbers, booleans or null, got {v!r}")
    if isinstance(v, int) and not isinstance(v, bool) and not -_INT64 <= v < _INT64:
        raise _bad("bad_filters", f"`filters[{col!r}]` value {v} is out of the 64-bit integer range")
    if isinstance(v, str):
        check_unicode(v, f"filters[{col!r}]", "bad_filters")
        if len(v) > MAX_FILTER_STRING:
            raise _bad("bad_filters", f"`filters[{col!r}]` values are at most {MAX_FILTER_STRING} characters")


def check_filters(filters: Any) -> dict[str, Any] | None:
    """``{column: value | [values] | {op: value}}`` with scalar values; ``op`` in eq, ne, in, not_in."""
    if filters is None:
        return None
    if not isinstance(filters, dict):
        raise _bad("bad_filters", f"`filters` must be an object of column -> value, got {type(filters).__name__}")
    if len(filters) > 16:
        raise _bad("bad_filters", f"`filters` names {len(filters)} columns; at most 16")
    for col, cond in filters.items():
        check_unicode(col, "filters", "bad_filters")
        if isinstance(cond, dict):
            if len(cond) != 1 or next(iter(cond)) not in _FILTER_OPS:
                raise _bad(
                    "bad_filters", f"`filters[{col!r}]` must be {{op: value}} with op in {_FILTER_OPS}, got {cond!r}"
                )
            op, cond = next(iter(cond.items()))
            if op in ("in", "not_in") and not isinstance(cond, list):
                raise _bad("bad_filters", f"`filters[{col!r}]` with {op!r} needs a list of values")
        values = cond if isinstance(cond, list) else [cond]
        if len(values) > MAX_FILTER_VALUES:
            raise _bad("bad_filters", f"`filters[{col!r}]` lists {len(values)} values; at most {MAX_FILTER_VALUES}")
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


def decode_upload(data: bytes, limits: ServeLimits, budget: PixelBudget | None = None) -> np.ndarray:
    """Image file bytes -> ``(H, W, 3)`` uint8.

    415 unless the first bytes say PNG, JPEG, WebP, GIF or BMP (:mod:`raylens.serve.media`); 413 when
    its pixels (all frames) would overrun ``budget``, the request's pixel budget (default: a fresh one
    of ``max_pixels``), read from the header before any decoding, so decompression bombs never decode;
    400 for anything unreadable. Blocking: services call it off their event loop.
    """
    from PIL import Image

    from raylens.data.images import decode_image

    if not data:
        raise _bad("bad_image", "the image is empty", 400)
    media = sniff_image_type(data)
    if media is None:
        raise _bad(
            "unsupported_image_type",
            f"not a {ACCEPTED_IMAGES} image (the type is read from the file's first bytes)",
            415,
        )
    budget = budget if budget is not None else PixelBudget(limits.max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[IMAGE_TYPES[media]]) as img:
                w, h = img.size
                frames = getattr(img, "n_frames", 1)
    except Image.DecompressionBombError:
        raise _bad("too_many_pixels", f"the image is over the limit of {limits.max_pixels} pixels", 413) from None
    except Exception as e:  # PIL raises many types for junk bytes
        raise _bad(
            "bad_image", f"not a readable {media.split('/')[1].upper()} image ({type(e).__name__})", 400
        ) from None
    budget.spend(int(w) * int(h) * max(1, int(frames)))
    try:
        return decode_image(data, max_pixels=limits.max_pixels)
    except Exception as e:  # BadImage, and whatever else a corrupt file makes a decoder raise
        detail = str(e) if type(e).__name__ == "BadImage" else type(e).__name__
        raise _bad("bad_image", f"{detail}; send a {ACCEPTED_IMAGES} file", 400) from None


def _k(value: Any, limits: ServeLimits) -> int:
    if value is None:
        return min(DEFAULT_K, limits.max_k)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**31:
        value = int(value)  # JSON Schema's integer: 5.0 is 5
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() and len(value.strip()) <= 9:
        value = int(value)  # a multipart form's k
    check_k(value, limits)
    return value


def _embedding(value: Any) -> np.ndarray:
    if not isinstance(value, list) or not value:
        raise _bad("bad_embedding", "`embedding` must be a non-empty list of numbers")
    if len(value) > MAX_EMBEDDING_DIM:
        raise _bad("bad_embedding", f"`embedding` has {len(value)} numbers; at most {MAX_EMBEDDING_DIM}", 413)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise _bad("bad_embedding", "`embedding` must hold only numbers")
    if any(isinstance(v, int) and abs(v) > EMBEDDING_MAX_ABS for v in value):
        raise _bad("bad_embedding", f"`embedding` components must lie within +-{EMBEDDING_MAX_ABS:g}")
    x = np.asarray(value, dtype=np.float64)
    if not np.isfinite(x).all() or np.abs(x).max() > EMBEDDING_MAX_ABS:
        raise _bad("bad_embedding", f"`embedding` components must lie within +-{EMBEDDING_MAX_ABS:g}")
    if np.abs(x).max() < EMBEDDING_MIN_PEAK:
        raise _bad(
            "bad_embedding", "`embedding` is all zeros (or nearly: every |value| < 1e-6); it cannot be normalised"
        )
    return x.astype(np.float32)


def _common(body: dict[str, Any], limits: ServeLimits) -> dict[str, Any]:
    """The fields every search shares: ``k``, ``filters``, ``index``."""
    return {
        "k": _k(body.get("k"), limits),
        "filters": check_filters(body.get("filters")),
        "index": check_index_name(body.get("index")),
    }


def parse_search(body: Any, limits: ServeLimits = ServeLimits()) -> SearchQuery:
    """A JSON search body (already parsed) -> :class:`SearchQuery`, or a 4xx :class:`ServeError`.
    Decodes an image query (blocking: services call it off their event loop)."""
    if not isinstance(body, dict):
        raise _bad("bad_request", f"the body must be a JSON object, got {type(body).__name__}", 400)
    unknown = set(body) - {"text", "image_b64", "embedding", "k", "filters", "index"}
    if unknown:
        raise _bad(
            "unknown_fields", f"unknown field(s) {sorted(unknown)}; use text, image_b64, embedding, k, filters, index"
        )
    given = [f for f in ("text", "image_b64", "embedding") if f in body]
    if len(given) != 1:
        raise _bad("one_query", f"give exactly one of `text`, `image_b64` or `embedding` (got {given or 'none'})")
    if body[given[0]] is None:
        raise _bad("one_query", f"`{given[0]}` is null; give the query itself")
    common = _common(body, limits)
    if given[0] == "text":
        if not isinstance(body["text"], str):
            raise _bad("bad_text", f"`text` must be a string, got {type(body['text']).__name__}")
        check_text(check_unicode(body["text"], "text"), limits)
        return SearchQuery(text=body["text"], **common)
    if given[0] == "image_b64":
        return SearchQuery(image=decode_upload(decode_b64(body["image_b64"]), limits), **common)
    return SearchQuery(embedding=_embedding(body["embedding"]), **common)


def parse_search_form(fields: dict[str, Any], image: bytes | None, limits: ServeLimits = ServeLimits()) -> SearchQuery:
    """A multipart search: form fields (``text``, ``k``, ``index``, ``filters`` as a JSON object's text)
    and an optional ``image`` file's bytes."""
    unknown = set(fields) - {"text", "k", "index", "filters"}
    if unknown:
        raise _bad("unknown_fields", f"unknown form field(s) {sorted(unknown)}; use text, image, k, filters, index")
    body: dict[str, Any] = {name: fields[name] for name in ("text", "k", "index") if name in fields}
    if "filters" in fields:
        try:
            body["filters"] = json.loads(fields["filters"])
        except (TypeError, ValueError, RecursionError):
            raise _bad(
                "bad_filters", 'the `filters` form field must be a JSON object, e.g. {"shape": "circle"}'
            ) from None
    if image is not None:
        if "text" in body:
            raise _bad("one_query", "give either `text` or an `image` file, not both")
        common = _common(body, limits)
        return SearchQuery(image=decode_upload(image, limits), **common)
    return parse_search(body, limits)


def parse_texts_or_images(
    body: Any, limits: ServeLimits = ServeLimits(), *, allow_texts: bool = True
) -> tuple[str, list[Any]]:
    """``{"texts": [...]}`` or ``{"images_b64": [...]}`` -> ``("text", texts)`` or ``("image", arrays)``.

    The images of one request share one pixel budget (``max_pixels``); decoding blocks.
    """
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
            check_text(check_unicode(t, "texts[]"), limits, field="texts[]")
        return "text", list(items)
    budget = PixelBudget(limits.max_pixels)
    return "image", [decode_upload(decode_b64(b, field_name="images_b64[]"), limits, budget) for b in items]
