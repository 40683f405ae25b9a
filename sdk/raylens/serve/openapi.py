"""The search service's OpenAPI 3.1 document, built from what the running service really accepts.

The document is written here, beside the request parsers (:mod:`raylens.serve.query`), and filled
with the live service's facts when it is served (``GET /openapi.json``): the open indices' names,
their filterable metadata columns and types, the model's embedding dim, the classifier versions, the
limits and whether an API key is required. So a request the schema calls valid is one the service
accepts, and one it calls invalid is refused with a documented 4xx (checked with schemathesis, every
check enabled). The query kinds are a discriminated union (``oneOf``): exactly one of ``text``,
``image_b64`` or ``embedding`` names the kind.

Two string formats are ours: ``raylens-image-base64`` (a base64-encoded PNG, JPEG, WebP, GIF or BMP
file) and ``raylens-image`` (the raw bytes of one, in a multipart part). Validators that do not know
them treat them as plain strings; a generator needs a strategy for each to make images.
"""

from __future__ import annotations

from typing import Any

from raylens.search import DEFAULT_K
from raylens.serve.limits import ServeLimits
from raylens.serve.media import ACCEPTED_IMAGES, IMAGE_TYPES
from raylens.serve.query import (
    EMBEDDING_MAX_ABS,
    EMBEDDING_MIN_PEAK,
    MAX_EMBEDDING_DIM,
    MAX_FILTER_STRING,
    MAX_FILTER_VALUES,
    NONBLANK_PATTERN,
)

__all__ = [
    "ERROR_SCHEMA",
    "HEALTH_SCHEMA",
    "build_openapi",
    "filter_columns",
    "common_text",
    "INDEX_NAME_PATTERN",
    "AB_KEY_MAX",
]

INDEX_NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
AB_KEY_MAX = 256
"""Longest ``x-ab-key`` header value."""
_INT64 = 2**63


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["status", "code", "message"],
            "properties": {
                "status": {"type": "integer"},
                "code": {"type": "string"},
                "message": {"type": "string"},
            },
        }
    },
}
"""The body of every error answer of the raylens services: ``{"error": {"status", "code", "message"}}``."""

HEALTH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["status"],
    "properties": {"status": {"type": "string", "enum": ["up", "down"]}},
    "additionalProperties": False,
}
"""The body of every raylens service's open liveness door (``GET /healthz``): ``{"status": "up"|"down"}``."""


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _column_scalar(arrow_type: str) -> dict[str, Any] | None:
    """The JSON schema of one filter value of a column of ``arrow_type`` (None: not filterable)."""
    t = arrow_type.lower()
    if t in ("string", "large_string", "utf8", "large_utf8"):
        return {"type": ["string", "null"], "maxLength": MAX_FILTER_STRING}
    if t == "bool":
        return {"type": ["boolean", "null"]}
    if t in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32"):
        return {"type": ["integer", "null"], "minimum": -_INT64, "maximum": _INT64 - 1}
    if t in ("float", "double", "halffloat", "float16", "float32", "float64"):
        return {"type": ["number", "null"], "minimum": -1e300, "maximum": 1e300}
    return None


def filter_columns(indices: dict[str, dict[str, Any]]) -> dict[str, str]:
    """``{column: arrow type}`` that every open index has, with the same type (so a filter the schema
    allows holds for whichever index a search names)."""
    common: dict[str, str] | None = None
    for info in indices.values():
        types = dict(info.get("column_types") or {})
        common = types if common is None else {c: t for c, t in common.items() if types.get(c) == t}
    return {c: t for c, t in (common or {}).items() if _column_scalar(t) is not None}


def _filters_schema(columns: dict[str, str]) -> dict[str, Any]:
    props = {}
    for col, arrow_type in sorted(columns.items()):
        scalar = _column_scalar(arrow_type)
        values = {"type": "array", "items": scalar, "maxItems": MAX_FILTER_VALUES}
        ops = [
            {"type": "object", "required": [op], "properties": {op: scalar}, "additionalProperties": False}
            for op in ("eq", "ne")
        ] + [
            {"type": "object", "required": [op], "properties": {op: values}, "additionalProperties": False}
            for op in ("in", "not_in")
        ]
        props[col] = {"anyOf": [scalar, values, *ops], "description": f"a {arrow_type} column"}
    return {
        "type": "object",
        "description": "Metadata conditions that must all hold: column -> value, [values] (in), or "
        "{op: value} with op in eq, ne, in, not_in. The columns every open index has are listed.",
        "properties": props,
        "additionalProperties": False,
        "maxProperties": 16,
    }


def _query_variants(limits: ServeLimits, dim: int | None, common: dict[str, Any]) -> list[dict[str, Any]]:
    text = {
        "type": "string",
        "minLength": 1,
        "maxLength": limits.max_text_chars,
        "pattern": NONBLANK_PATTERN,
        "description": "A text query (text-to-image search).",
    }
    image = {
        "type": "string",
        "format": "raylens-image-base64",
        "contentEncoding": "base64",
        "description": f"A {ACCEPTED_IMAGES} file, base64-encoded (a data: URL prefix is allowed); at most "
        f"{limits.max_pixels} pixels (all frames).",
    }
    size = dim if dim else MAX_EMBEDDING_DIM
    embedding = {
        "type": "array",
        "description": f"A query vector of the model's dim ({dim or 'any'}); components within "
        f"+-{EMBEDDING_MAX_ABS:g}, not all (near) zero.",
        "items": {"type": "number", "minimum": -EMBEDDING_MAX_ABS, "maximum": EMBEDDING_MAX_ABS},
        "minItems": dim or 1,
        "maxItems": size,
        "contains": {
            "type": "number",
            "not": {"exclusiveMinimum": -EMBEDDING_MIN_PEAK, "exclusiveMaximum": EMBEDDING_MIN_PEAK},
        },
    }
    out = [
        {
            "title": f"{kind.capitalize()}Query",
            "type": "object",
            "required": [field],
            "properties": {field: schema, **common},
            "additionalProperties": False,
        }
        for kind, field, schema in (("text", "text", text), ("image", "image_b64", image))
    ]
    if dim:
        out.append(
            {
                "title": "EmbeddingQuery",
                "type": "object",
                "required": ["embedding"],
                "properties": {"embedding": embedding, **common},
                "additionalProperties": False,
            }
        )
    return out


def _error_responses(codes: list[int], auth: bool) -> dict[str, Any]:
    names = {
        400: "BadRequest",
        401: "Unauthorized",
        404: "NotFound",
        405: "MethodNotAllowed",
        409: "Conflict",
        413: "TooLarge",
        415: "UnsupportedMediaType",
        422: "Invalid",
        503: "Unavailable",
        504: "Timeout",
    }
    out = {str(c): {"$ref": f"#/components/responses/{names[c]}"} for c in codes if c != 401 or auth}
    return out


def build_openapi(
    *,
    limits: ServeLimits,
    auth_required: bool,
    indices: dict[str, dict[str, Any]],
    model: dict[str, Any] | None,
    versions: list[str],
    title: str = "raylens search",
) -> dict[str, Any]:
    """The OpenAPI document of the search service as it runs now.

    ``indices``: per open index its description (``column_types`` is read); ``model``: the
    embedding model's ``{name, checkpoint_hash, dim}`` (None: embedding queries cannot be checked);
    ``versions``: the classifier versions behind ``/classify``.
    """
    dim = int(model["dim"]) if model and model.get("dim") else None
    names = list(indices)
    index_name = (
        {"type": "string", "enum": names, "description": "An open index (GET /indices)."}
        if names
        else {"type": "string", "pattern": INDEX_NAME_PATTERN}
    )
    index_or_default = {
        "anyOf": [index_name, {"type": "null"}],
        "description": "An open index (GET /indices); null or absent: the first.",
    }
    filters = _filters_schema(filter_columns(indices))
    common = {
        "k": {
            "type": ["integer", "null"],
            "minimum": 1,
            "maximum": limits.max_k,
            "default": min(DEFAULT_K, limits.max_k),
            "description": "The most hits to return (all of them when the index holds fewer); null: the default.",
        },
        "filters": {"anyOf": [filters, {"type": "null"}]},
        "index": index_or_default,
    }
    search_json = {
        "oneOf": _query_variants(limits, dim, common),
        "description": "Exactly one of text, image_b64 or embedding: the field given names the query kind.",
        "example": {"text": "a red circle", "k": 5},
    }
    image_part = {"type": "string", "format": "raylens-image", "contentMediaType": "image/png"}
    form_common = {"k": {**common["k"], "type": "integer"}, "index": index_name, "filters": filters}
    search_form = {
        "oneOf": [
            {
                "title": "ImageUpload",
                "type": "object",
                "required": ["image"],
                "properties": {"image": image_part, **form_common},
                "additionalProperties": False,
            },
            {
                "title": "TextForm",
                "type": "object",
                "required": ["text"],
                "properties": {"text": common_text(limits), **form_common},
                "additionalProperties": False,
            },
        ]
    }
    batch = limits.max_batch
    image_b64 = {"type": "string", "format": "raylens-image-base64", "contentEncoding": "base64"}
    embed_json = {
        "oneOf": [
            {
                "title": "Texts",
                "type": "object",
                "required": ["texts"],
                "properties": {
                    "texts": {"type": "array", "items": common_text(limits), "minItems": 1, "maxItems": batch}
                },
                "additionalProperties": False,
            },
            {
                "title": "Images",
                "type": "object",
                "required": ["images_b64"],
                "properties": {"images_b64": {"type": "array", "items": image_b64, "minItems": 1, "maxItems": batch}},
                "additionalProperties": False,
            },
        ],
        "example": {"texts": ["a red circle"]},
    }
    images_json = {
        "type": "object",
        "required": ["images_b64"],
        "properties": {"images_b64": {"type": "array", "items": image_b64, "minItems": 1, "maxItems": batch}},
        "additionalProperties": False,
    }
    images_form = {
        "type": "object",
        "required": ["image"],
        "properties": {"image": {"type": "array", "items": image_part, "minItems": 1, "maxItems": batch}},
        "additionalProperties": False,
    }
    image_encoding = {"image": {"contentType": ", ".join(IMAGE_TYPES)}}
    search_encoding = {**image_encoding, "filters": {"contentType": "application/json"}}

    def body(json_schema, form_schema=None, encoding=image_encoding):
        content = _json(json_schema)
        if form_schema is not None:
            content["multipart/form-data"] = {"schema": form_schema, "encoding": encoding}
        return {"required": True, "content": content}

    secured = auth_required
    post_errors = [400, 401, 404, 413, 415, 422, 503, 504]
    classify_params = (
        [
            {
                "name": "x-model-version",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "enum": versions},
                "description": "Pin one classifier version (bypasses the A/B split).",
            },
            {
                "name": "x-ab-key",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "maxLength": AB_KEY_MAX},
                "description": "A caller key: the same key always gets the same version.",
            },
        ]
        if versions
        else []
    )
    paths = {
        "/healthz": {
            "get": {
                "summary": "Liveness: up or down, nothing else (no key needed)",
                "operationId": "healthz",
                "security": [],
                "responses": {
                    "200": {"description": "Up", "content": _json(_ref("Health"))},
                    "503": {"description": "Down", "content": _json(_ref("Health"))},
                },
            }
        },
        "/status": {
            "get": {
                "summary": "Readiness details: the model, the indices, the classifier versions",
                "operationId": "status",
                "responses": {
                    "200": {"description": "The service's state", "content": _json(_ref("Status"))},
                    **_error_responses([401, 503, 504], secured),
                },
            }
        },
        "/indices": {
            "get": {
                "summary": "The open indices: model, count, dim, metadata columns",
                "operationId": "indices",
                "responses": {
                    "200": {"description": "The open indices", "content": _json(_ref("Indices"))},
                    **_error_responses([401, 503, 504], secured),
                },
            }
        },
        "/search": {
            "post": {
                "summary": "Search an index by text, image or embedding",
                "operationId": "search",
                "requestBody": body(_ref("SearchRequest"), _ref("SearchForm"), search_encoding),
                "responses": {
                    "200": {"description": "The hits, best first", "content": _json(_ref("SearchResponse"))},
                    **_error_responses(post_errors, secured),
                },
            }
        },
        "/embed": {
            "post": {
                "summary": "Embed texts or images",
                "operationId": "embed",
                "requestBody": body(_ref("EmbedRequest"), _ref("ImagesForm")),
                "responses": {
                    "200": {"description": "One embedding per item", "content": _json(_ref("EmbedResponse"))},
                    **_error_responses(post_errors, secured),
                },
            }
        },
        "/classify": {
            "post": {
                "summary": "Classify images with one of the model versions (A/B split)",
                "operationId": "classify",
                "parameters": classify_params,
                "requestBody": body(_ref("ImagesRequest"), _ref("ImagesForm")),
                "responses": {
                    "200": {"description": "One prediction per image", "content": _json(_ref("ClassifyResponse"))},
                    **_error_responses(post_errors, secured),
                },
            }
        },
        "/images/{index}/{item_id}": {
            "get": {
                "summary": "The image file of one indexed item (from the index's data roots only)",
                "operationId": "image",
                "parameters": [
                    {"name": "index", "in": "path", "required": True, "schema": index_name},
                    {
                        "name": "item_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 0, "maximum": 2**62},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The file",
                        "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in IMAGE_TYPES},
                    },
                    **_error_responses([401, 404, 413, 422, 503, 504], secured),
                },
            }
        },
    }
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": "1",
            "description": "Text-to-image search, embeddings and classification over HTTP (Ray Serve). "
            'Every refusal is a JSON error {"error": {"status", "code", "message"}}.',
        },
        "paths": paths,
        "components": {
            "schemas": {
                "SearchRequest": search_json,
                "SearchForm": search_form,
                "EmbedRequest": embed_json,
                "ImagesRequest": images_json,
                "ImagesForm": images_form,
                **_response_schemas(),
            },
            "responses": _error_components(),
        },
    }
    if secured:
        doc["components"]["securitySchemes"] = {
            "ApiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            "Bearer": {"type": "http", "scheme": "bearer"},
        }
        doc["security"] = [{"ApiKey": []}, {"Bearer": []}]
    return doc


def common_text(limits: ServeLimits) -> dict[str, Any]:
    """The schema of one text (a query or an item of ``texts``)."""
    return {"type": "string", "minLength": 1, "maxLength": limits.max_text_chars, "pattern": NONBLANK_PATTERN}


def _error_components() -> dict[str, Any]:
    def err(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"description": description, "content": _json(_ref("Error"))}
        if headers:
            out["headers"] = headers
        return out

    text = {"schema": {"type": "string"}}
    return {
        "BadRequest": err("Unreadable input: JSON, base64, image, form, an empty text or batch"),
        "Unauthorized": err("No or a wrong API key", {"WWW-Authenticate": text}),
        "NotFound": err("An unknown index, item, route, or no classifier configured"),
        "MethodNotAllowed": err("The path does not take this method", {"Allow": text}),
        "Conflict": err("The index does not match the model"),
        "TooLarge": err("Over a limit: body bytes, pixels per request, batch, text length, file size"),
        "UnsupportedMediaType": err(f"Not JSON or a multipart form; or an image that is not {ACCEPTED_IMAGES}"),
        "Invalid": err("Well formed but not valid: k, filters, index name, embedding, unknown fields"),
        "Unavailable": err("Not ready, or at capacity (retry)", {"Retry-After": text}),
        "Timeout": err("A part of the service did not answer in time (retry)"),
    }


def _response_schemas() -> dict[str, Any]:
    hit = {
        "type": "object",
        "required": ["id", "score", "path", "caption", "metadata", "duplicates"],
        "properties": {
            "id": {"type": "integer"},
            "score": {"type": ["number", "null"]},
            "path": {"type": ["string", "null"]},
            "caption": {"type": ["string", "null"]},
            "metadata": {"type": "object"},
            "duplicates": {"type": "array", "items": {"type": "integer"}},
        },
    }
    model = {
        "type": "object",
        "required": ["name", "checkpoint_hash", "dim"],
        "properties": {"name": {"type": "string"}, "checkpoint_hash": {"type": "string"}, "dim": {"type": "integer"}},
    }
    index_info = {
        "type": "object",
        "required": ["model", "checkpoint_hash", "count", "dim", "index_factory", "columns"],
        "properties": {
            "model": {"type": "string"},
            "checkpoint_hash": {"type": "string"},
            "count": {"type": "integer"},
            "dim": {"type": "integer"},
            "index_factory": {"type": "string"},
            "columns": {"type": "array", "items": {"type": "string"}},
            "column_types": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    prediction = {
        "type": "object",
        "required": ["label", "score", "top"],
        "properties": {
            "label": {"type": "string"},
            "score": {"type": "number"},
            "top": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["label", "score"],
                    "properties": {"label": {"type": "string"}, "score": {"type": "number"}},
                },
            },
            "probabilities": {"type": ["object", "null"], "additionalProperties": {"type": "number"}},
        },
    }
    return {
        "Error": ERROR_SCHEMA,
        "Health": HEALTH_SCHEMA,
        "Status": {
            "type": "object",
            "required": ["ready", "model", "indices", "classifier_versions", "problems"],
            "properties": {
                "ready": {"type": "boolean"},
                "model": {"oneOf": [model, {"type": "null"}]},
                "indices": {"type": "array", "items": {"type": "string"}},
                "classifier_versions": {"type": "object"},
                "problems": {"type": "array", "items": {"type": "string"}},
            },
        },
        "Indices": {
            "type": "object",
            "required": ["default", "indices"],
            "properties": {
                "default": {"type": ["string", "null"]},
                "indices": {"type": "object", "additionalProperties": index_info},
                "model": {"oneOf": [model, {"type": "null"}]},
                "loading": {"type": "array", "items": {"type": "string"}, "description": "indices being swapped in"},
                "swap_error": {"type": ["string", "null"], "description": "why the last swap failed"},
            },
        },
        "SearchResponse": {
            "type": "object",
            "required": ["index", "kind", "k", "took_ms", "hits"],
            "properties": {
                "index": {"type": "string"},
                "kind": {"type": "string", "enum": ["text", "image", "embedding"]},
                "k": {"type": "integer"},
                "took_ms": {"type": "number"},
                "hits": {"type": "array", "items": hit},
            },
        },
        "EmbedResponse": {
            "type": "object",
            "required": ["model", "checkpoint_hash", "kind", "dim", "embeddings"],
            "properties": {
                "model": {"type": "string"},
                "checkpoint_hash": {"type": "string"},
                "kind": {"type": "string", "enum": ["text", "image"]},
                "dim": {"type": "integer"},
                "embeddings": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
            },
        },
        "ClassifyResponse": {
            "type": "object",
            "required": ["model_version", "kind", "predictions"],
            "properties": {
                "model_version": {"type": "string"},
                "kind": {"type": "string"},
                "checkpoint_hash": {"type": ["string", "null"]},
                "predictions": {"type": "array", "items": prediction},
            },
        },
    }
