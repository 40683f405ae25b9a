"""FastAPI plumbing shared by the raylens services: JSON errors, bounded body reads, CORS, auth.

Plain FastAPI/Starlette (no Ray), so it is unit-tested with FastAPI's test client. Every service
calls :func:`install_error_handlers` on its app: a refused request, a validation failure, an unknown
route, a wrong method all answer ``{"error": {"status", "code", "message"}}``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from raylens.serve.limits import (
    API_KEY_HEADER,
    ServeError,
    ServeLimits,
    check_api_key,
    check_body_size,
    error_body,
    error_response,
)

__all__ = [
    "install_error_handlers",
    "json_error",
    "read_body",
    "require_api_key",
    "enable_cors",
    "CORS_ENV",
    "unwrap_remote_error",
    "returns_bad_input",
    "raise_returned",
]

CORS_ENV = "RAYLENS_CORS_ORIGINS"
"""Comma-separated origins allowed to call the API from a browser (unset: CORS off)."""

log = logging.getLogger("raylens.serve")


def unwrap_remote_error(exc: BaseException) -> BaseException:
    """The user exception inside a Ray task/actor error (a replica raised it), else ``exc`` itself."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def returns_bad_input(method):
    """For deployment methods: bad input (``ServeError``, ``ValueError``, ``TypeError``) is *returned*
    to the caller instead of raised, so the replica does not log a client's mistake as an ERROR with a
    traceback; the ingress re-raises it with :func:`raise_returned` and answers a JSON 4xx."""
    import functools

    @functools.wraps(method)
    async def wrapper(*args, **kwargs):
        try:
            return await method(*args, **kwargs)
        except (ServeError, ValueError, TypeError) as exc:
            return exc

    return wrapper


def raise_returned(value: Any) -> Any:
    """``value``, or raise it when a :func:`returns_bad_input` method returned an exception."""
    if isinstance(value, BaseException):
        raise value
    return value


def json_error(exc: BaseException) -> JSONResponse:
    """A JSON error response for any exception: 4xx for bad input, a detail-free 500 otherwise."""
    exc = unwrap_remote_error(exc)
    status, body = error_response(exc)
    if status >= 500:
        log.error("request failed: %s", type(exc).__name__, exc_info=exc)
    return JSONResponse(body, status_code=status)


def install_error_handlers(api: FastAPI) -> FastAPI:
    """Make ``api`` answer every error as JSON (:func:`raylens.serve.limits.error_body`)."""

    @api.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError):
        return JSONResponse(error_body(exc.status_code, exc.code, exc.message), status_code=exc.status_code)

    @api.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()[:5]
        )
        return JSONResponse(
            error_body(422, "invalid_request", f"the request does not match the API ({problems})"), status_code=422
        )

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(exc.status_code, code, str(exc.detail)), status_code=exc.status_code)

    return api


async def read_body(request: Request, limits: ServeLimits) -> bytes:
    """The request body, read in chunks and refused (413) as soon as it passes ``max_body_bytes``.

    The body is kept on the request, so ``request.form()``/``request.json()`` can parse it afterwards.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise ServeError(400, "bad_content_length", "Content-Length is not a number") from None
        check_body_size(n, limits)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limits.max_body_bytes:
            raise ServeError(413, "body_too_large", f"request body is over the limit of {limits.max_body_bytes} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    check_body_size(len(body), limits)
    request._body = body  # Starlette's own cache: later form()/json() calls read it instead of the stream
    return body


def require_api_key(request: Request) -> None:
    """401 unless the request carries the configured API key (``x-api-key`` or ``Authorization: Bearer``)."""
    check_api_key(request.headers.get(API_KEY_HEADER) or request.headers.get("authorization"))


def enable_cors(api: FastAPI, origins: list[str] | str | None = None) -> bool:
    """Allow browser calls from ``origins`` (default: ``RAYLENS_CORS_ORIGINS``); off when none. True if on."""
    if origins is None:
        origins = os.environ.get(CORS_ENV, "")
    if isinstance(origins, str):
        origins = [o.strip() for o in origins.split(",") if o.strip()]
    if not origins:
        return False
    from starlette.middleware.cors import CORSMiddleware

    api.add_middleware(
        CORSMiddleware,
        allow_origins=list(origins),
        allow_methods=["GET", "POST"],
        allow_headers=["content-type", API_KEY_HEADER, "authorization"],
    )
    return True
