"""FastAPI plumbing shared by the raylens services: JSON errors, bounded body reads, CORS, auth.

Plain FastAPI/Starlette (no Ray), so it is unit-tested with FastAPI's test client. Every service
calls :func:`install_error_handlers` on its app, and its endpoints answer any exception they catch
with :func:`json_error`: a refused request, a validation failure, an unknown route, a wrong method,
an error raised in another deployment all answer ``{"error": {"status", "code", "message"}}``
through the one mapping :func:`raylens.serve.limits.error_response`.

Errors cross deployments as exceptions: a deployment raises (every raylens error pickles), the
ingress awaiting it catches the same error and answers it here. Deployments call
:func:`raylens.serve.observe.quiet_client_errors` so that a client's mistake is not logged as a
replica ERROR with a traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from raylens.errors import RaylensError
from raylens.serve.limits import (
    API_KEY_HEADER,
    ServeError,
    ServeLimits,
    check_api_key,
    check_body_size,
    error_response,
    unwrap_remote_error,
)
from raylens.serve.observe import quiet_client_errors

if TYPE_CHECKING:
    from raylens.serve.auth import ServeAuth

__all__ = [
    "install_error_handlers",
    "json_error",
    "json_response",
    "read_body",
    "require_api_key",
    "enable_cors",
    "CORS_ENV",
    "unwrap_remote_error",
    "returns_bad_input",
]

CORS_ENV = "RAYLENS_CORS_ORIGINS"
"""Comma-separated origins allowed to call the API from a browser (unset: CORS off)."""

log = logging.getLogger("raylens.serve")


def returns_bad_input(method):
    """Deprecated, kept for deployments not yet moved to :func:`~raylens.serve.observe.quiet_client_errors`.

    Bad input is no longer returned as a value: the method raises it and its caller catches the same
    exception. This decorator only installs the log filter, so the replica logs a client's mistake
    as one INFO line instead of an ERROR with a traceback.
    """

    @functools.wraps(method)
    async def wrapper(*args, **kwargs):
        quiet_client_errors()
        return await method(*args, **kwargs)

    return wrapper


def json_error(exc: BaseException, *, logger: logging.Logger | None = None, details: bool = True) -> JSONResponse:
    """The JSON error response for any exception (:func:`~raylens.serve.limits.error_response`):
    4xx for bad input, a detail-free 500 otherwise. A 5xx is logged on ``logger`` (default
    ``raylens.serve``) with its traceback, or with its type only when ``details`` is False (errors
    that may carry private data)."""
    exc = unwrap_remote_error(exc)
    status, body = error_response(exc)
    if status >= 500 and status not in (503, 504):
        if details:
            (logger or log).error("request failed: %s", type(exc).__name__, exc_info=exc)
        else:
            (logger or log).error("request failed: %s", type(exc).__name__)
    headers = dict(getattr(exc, "headers", None) or {}) if status != 500 else {}
    if status == 503:
        headers.setdefault("retry-after", "1")
    return JSONResponse(body, status_code=status, headers=headers or None)


def _plain(value: Any) -> Any:
    """``value`` with every non-finite float made null (JSON has no NaN) and numpy scalars made Python."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and hasattr(value, "dtype"):  # a numpy scalar
        return _plain(value.item())
    return value


def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response that never fails on data: NaN/inf become null, other odd values their text."""
    body = json.dumps(_plain(content), ensure_ascii=False, allow_nan=False, default=str, separators=(",", ":"))
    return Response(body.encode("utf-8"), status_code=status_code, media_type="application/json", headers=headers)


def install_error_handlers(api: FastAPI) -> FastAPI:
    """Make ``api`` answer every error as JSON through :func:`json_error`."""

    @api.exception_handler(RaylensError)
    async def _raylens_error(request: Request, exc: RaylensError):
        return json_error(exc)

    @api.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()[:5]
        )
        return json_error(ServeError(422, "invalid_request", f"the request does not match the API ({problems})"))

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return json_error(ServeError(exc.status_code, code, str(exc.detail), headers=exc.headers))  # 405: Allow

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


def require_api_key(request: Request, auth: ServeAuth | None = None) -> None:
    """401 unless the request carries the API key (``x-api-key`` or ``Authorization: Bearer``).

    ``auth``: the service's resolved :class:`~raylens.serve.auth.ServeAuth` (the way to go: resolved
    when the app is built, the same in every replica). Without it the key is read from this process's
    environment (``RAYLENS_API_KEY``/``RAYLENS_API_KEY_FILE``; none set: open).
    """
    provided = request.headers.get(API_KEY_HEADER) or request.headers.get("authorization")
    if auth is not None:
        auth.check(provided)
    else:
        check_api_key(provided)


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
