"""Safety limits shared by the raylens services: body size, pixels, batch, API key, safe zip handling.

Plain Python (no Ray, no FastAPI): a service calls these checks, which raise :class:`ServeError`.
:func:`error_response` is the one mapping from any exception (raised here, in the search core, or in
another deployment) to the JSON error body ``{"error": {"status", "code", "message"}}``. Every
malformed input must end as a 4xx JSON error, never a 500.

>>> limits = ServeLimits(max_body_bytes=10)
>>> try:
...     check_body_size(11, limits)
... except ServeError as e:
...     e.status_code, e.code
(413, 'body_too_large')
>>> is_safe_member_name("../etc/passwd"), is_safe_member_name("series/1.dcm")
(False, True)
"""

from __future__ import annotations

import hmac
import io
import os
import posixpath
import stat
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from raylens.errors import RaylensError

__all__ = [
    "ServeLimits",
    "ServeError",
    "ServeConfigError",
    "API_KEY_ENV",
    "API_KEY_HEADER",
    "check_body_size",
    "check_pixels",
    "check_batch",
    "check_k",
    "check_text",
    "check_api_key",
    "configured_api_key",
    "read_key_file",
    "API_KEY_FILE_ENV",
    "is_safe_member_name",
    "declared_entries",
    "safe_zip_members",
    "safe_extract_zip",
    "error_body",
    "error_response",
    "unwrap_remote_error",
]

API_KEY_ENV = "RAYLENS_API_KEY"
"""When this environment variable is set, requests must carry its value (see :func:`check_api_key`)."""
API_KEY_FILE_ENV = "RAYLENS_API_KEY_FILE"
"""Or a file holding the key (first line; read when no ``RAYLENS_API_KEY`` is set)."""
API_KEY_HEADER = "x-api-key"
"""Request header holding the API key (``Authorization: Bearer <key>`` is accepted too)."""


_INT_FIELDS = (
    "max_body_bytes",
    "max_pixels",
    "max_batch",
    "max_files",
    "max_uncompressed_bytes",
    "max_k",
    "max_text_chars",
)


@dataclass(frozen=True)
class ServeLimits:
    """Limits of one service. The defaults suit a single-machine deployment."""

    max_body_bytes: int = 64 * 2**20
    """Largest request body accepted (413 above)."""
    max_pixels: int = 64_000_000
    """Most pixels (or voxels) one request may make the service decode (413 above)."""
    max_batch: int = 32
    """Most items in one request (413 above)."""
    max_files: int = 4096
    """Most members in an uploaded archive (413 above)."""
    max_uncompressed_bytes: int = 512 * 2**20
    """Most bytes an uploaded archive may expand to (413 above)."""
    max_compression_ratio: float = 200.0
    """Largest uncompressed/compressed ratio of one archive member (zip-bomb guard; 413 above)."""
    max_k: int = 100
    """Most results one search may ask for (422 above)."""
    max_text_chars: int = 1000
    """Longest text query, in characters (413 above)."""
    request_timeout_s: float = 60.0
    """Longest a request may wait on the model and index deployments (504 past it)."""

    def __post_init__(self):
        for name in _INT_FIELDS:
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not self.max_compression_ratio >= 1:
            raise ValueError(f"max_compression_ratio must be >= 1, got {self.max_compression_ratio}")
        if isinstance(self.request_timeout_s, bool) or not (
            isinstance(self.request_timeout_s, (int, float)) and 0 < self.request_timeout_s <= 3600
        ):
            raise ValueError(
                f"request_timeout_s must be a number of seconds in (0, 3600], got {self.request_timeout_s!r}"
            )

    @classmethod
    def from_env(cls, prefix: str = "RAYLENS_") -> ServeLimits:
        """Defaults overridden by ``RAYLENS_MAX_BODY_BYTES``, ``RAYLENS_MAX_PIXELS``, ... when set."""
        kw: dict[str, Any] = {}
        for name in _INT_FIELDS:
            v = os.environ.get(prefix + name.upper())
            if v:
                try:
                    kw[name] = int(v)
                except ValueError:
                    raise ValueError(f"{prefix + name.upper()} must be an integer, got {v!r}") from None
        for name in ("max_compression_ratio", "request_timeout_s"):
            v = os.environ.get(prefix + name.upper())
            if v:
                try:
                    kw[name] = float(v)
                except ValueError:
                    raise ValueError(f"{prefix + name.upper()} must be a number, got {v!r}") from None
        return cls(**kw)


class ServeError(RaylensError):
    """A request refused with an HTTP status (4xx, or 503 when the service is not ready), a short
    machine code and a readable message; the client gets all three. It pickles, so a deployment can
    raise it and the ingress that called it catches the same error.
    """

    def __init__(self, status_code: int, code: str, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status_code = int(status_code)
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        """Response headers the refusal needs (``WWW-Authenticate`` on a 401, ``Allow`` on a 405)."""

    def __reduce__(self):
        return (type(self), (self.status_code, self.code, self.message), self.__dict__)


class ServeConfigError(RaylensError, ValueError):
    """A service is configured in a way that would not be safe (an empty API key, an unreadable key
    file, no key on a public address): it refuses to start, or answers 500 without details."""

    code = "misconfigured"


def check_body_size(n_bytes: int | None, limits: ServeLimits) -> None:
    """413 when the body (or its declared Content-Length) is over ``max_body_bytes``; 400 when empty."""
    if n_bytes is None:
        return
    if n_bytes > limits.max_body_bytes:
        raise ServeError(
            413, "body_too_large", f"request body of {n_bytes} bytes is over the limit of {limits.max_body_bytes}"
        )
    if n_bytes <= 0:
        raise ServeError(400, "empty_body", "the request body is empty")


def check_pixels(n_pixels: int, limits: ServeLimits) -> None:
    """413 when a request would decode more than ``max_pixels`` pixels/voxels."""
    if n_pixels > limits.max_pixels:
        raise ServeError(413, "too_many_pixels", f"{n_pixels} pixels is over the limit of {limits.max_pixels}")


def check_batch(n_items: int, limits: ServeLimits) -> None:
    """413 when a request holds more than ``max_batch`` items; 400 when it holds none."""
    if n_items > limits.max_batch:
        raise ServeError(413, "batch_too_large", f"{n_items} items is over the batch limit of {limits.max_batch}")
    if n_items < 1:
        raise ServeError(400, "empty_batch", "the request holds no items")


def check_k(k: int, limits: ServeLimits) -> None:
    """422 unless ``k`` is an int in ``[1, max_k]``."""
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= limits.max_k:
        raise ServeError(422, "bad_k", f"k must be an integer from 1 to {limits.max_k}, got {k!r}")


def check_text(text: str, limits: ServeLimits, *, field: str = "text") -> None:
    """400 for a blank text, 413 for one over ``max_text_chars``."""
    if not text.strip():
        raise ServeError(400, "empty_text", f"`{field}` is empty; type some words, e.g. 'a red circle'")
    if len(text) > limits.max_text_chars:
        raise ServeError(
            413, "text_too_long", f"`{field}` has {len(text)} characters, over the limit of {limits.max_text_chars}"
        )


def read_key_file(path: str | os.PathLike, *, what: str = "API key file") -> str:
    """The key on the first line of ``path``; an unreadable or empty file is a :class:`ServeConfigError`."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or type(e).__name__
        raise ServeConfigError(f"{what} {str(path)!r} cannot be read ({reason}); fix the path") from None
    key = lines[0].strip() if lines else ""
    if not key:
        raise ServeConfigError(f"{what} {str(path)!r} is empty; write the key on its first line")
    return key


def configured_api_key(env_var: str = API_KEY_ENV, file_env_var: str = API_KEY_FILE_ENV) -> str | None:
    """The API key from ``env_var``, else the first line of the file named by ``file_env_var``, else None.

    Fails closed, never open: ``env_var`` set to an empty value, or a key file that is named but
    unreadable or empty, raises :class:`ServeConfigError` (a ``ValueError``).
    """
    key = os.environ.get(env_var)
    if key is not None:
        if not key.strip():
            raise ServeConfigError(
                f"{env_var} is set but empty, which would turn auth off; set it to the key, or unset it"
            )
        return key.strip()
    path = os.environ.get(file_env_var)
    if path is None:
        return None
    if not path.strip():
        raise ServeConfigError(f"{file_env_var} is set but empty; set it to the key file's path, or unset it")
    return read_key_file(path, what=file_env_var)


def check_api_key(provided: str | None, *, env_var: str = API_KEY_ENV, expected: str | None = None) -> None:
    """401 unless ``provided`` equals the configured key (see :func:`configured_api_key`; none: every
    request passes).

    ``provided`` may be the raw key or an ``Authorization`` value ``"Bearer <key>"``.
    The comparison takes constant time.
    """
    key = expected if expected is not None else configured_api_key(env_var)
    if key is None:
        return
    if not key.strip():
        raise ServeConfigError("the expected API key is empty, which would turn auth off; configure a key")
    if provided and provided[:7].lower() == "bearer ":
        provided = provided[7:].strip()
    if not provided or not hmac.compare_digest(provided.encode("utf-8"), key.encode("utf-8")):
        raise ServeError(
            401,
            "unauthorized",
            f"a valid API key is required (header {API_KEY_HEADER!r} or 'Authorization: Bearer <key>')",
            headers={"www-authenticate": 'Bearer realm="raylens"'},
        )


def is_safe_member_name(name: str) -> bool:
    """True for a relative archive path that stays inside the extraction folder."""
    if not name or "\x00" in name or "\\" in name:
        return False
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return False
    norm = posixpath.normpath(name)
    if norm.startswith("../") or norm == ".." or norm.startswith("/"):
        return False
    return ".." not in PurePosixPath(name).parts


def _members(zf: zipfile.ZipFile, limits: ServeLimits) -> list[zipfile.ZipInfo]:
    infos = zf.infolist()
    files = [i for i in infos if not i.is_dir()]
    if len(files) > limits.max_files:
        raise ServeError(
            413, "too_many_files", f"archive holds {len(files)} files, over the limit of {limits.max_files}"
        )
    total = 0
    for info in infos:
        if not is_safe_member_name(info.filename):
            raise ServeError(400, "unsafe_archive_path", f"archive member {info.filename!r} points outside the archive")
        mode = (info.external_attr >> 16) & 0xFFFF
        if stat.S_ISLNK(mode):
            raise ServeError(400, "unsafe_archive_link", f"archive member {info.filename!r} is a symbolic link")
        if info.flag_bits & 0x1:
            raise ServeError(400, "encrypted_archive", "encrypted archives are not accepted")
        total += info.file_size
        if total > limits.max_uncompressed_bytes:
            raise ServeError(413, "archive_too_large", f"archive expands to over {limits.max_uncompressed_bytes} bytes")
        if info.file_size > 1024 and info.file_size > limits.max_compression_ratio * max(info.compress_size, 1):
            raise ServeError(
                413, "archive_ratio", f"archive member {info.filename!r} has a suspicious compression ratio"
            )
    return files


_EOCD = struct.Struct(
    "<4s4H2LH"
)  # end of central directory: sig, disk, cd disk, entries here, entries, size, offset, comment
_EOCD64_LOCATOR = struct.Struct("<4sLQL")  # sig, disk, offset of the zip64 end record, disks
_EOCD64 = struct.Struct("<4sQ2H2L4Q")  # sig, size, versions, disks, entries here, entries, cd size, cd offset
_MAX_COMMENT = 0xFFFF


def declared_entries(data: bytes) -> int:
    """How many entries the archive's end-of-central-directory record declares (zip64 included), read
    from the last bytes alone, before any central directory entry is parsed. 400 when there is no such
    record (not a zip archive).

    >>> import io, zipfile
    >>> buf = io.BytesIO()
    >>> with zipfile.ZipFile(buf, "w") as zf:
    ...     zf.writestr("a", b"1"); zf.writestr("b", b"2")
    >>> declared_entries(buf.getvalue())
    2
    """
    tail_start = max(0, len(data) - _EOCD.size - _MAX_COMMENT)
    pos = bytes(data[tail_start:]).rfind(b"PK\x05\x06")
    if pos < 0 or tail_start + pos + _EOCD.size > len(data):
        raise ServeError(400, "bad_archive", "not a readable zip archive (no end of central directory record)")
    pos += tail_start
    _, _, _, _, entries, _, _, _ = _EOCD.unpack_from(data, pos)
    loc = pos - _EOCD64_LOCATOR.size
    if loc >= 0 and bytes(data[loc : loc + 4]) == b"PK\x06\x07":
        _, _, offset64, _ = _EOCD64_LOCATOR.unpack_from(data, loc)
        # the zip64 record sits right before its locator (a prefix before the archive shifts offsets)
        start = loc - _EOCD64.size
        if start >= 0 and bytes(data[start : start + 4]) == b"PK\x06\x06":
            entries = max(entries, _EOCD64.unpack_from(data, start)[6])
        elif offset64 + _EOCD64.size <= len(data) and bytes(data[offset64 : offset64 + 4]) == b"PK\x06\x06":
            entries = max(entries, _EOCD64.unpack_from(data, offset64)[6])
    return int(entries)


def _open_zip(data: bytes, limits: ServeLimits) -> zipfile.ZipFile:
    """The archive opened in memory, after its declared entry count passed the limit: zipfile parses
    the whole central directory when it opens, so a directory of millions of entries is refused first."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected the archive as bytes, got {type(data).__name__}")
    entries = declared_entries(data)
    max_entries = 2 * limits.max_files  # files, plus as many folder entries
    if entries > max_entries:
        raise ServeError(
            413,
            "too_many_files",
            f"archive declares {entries} entries, over the limit of {max_entries} "
            f"({limits.max_files} files and as many folders)",
        )
    try:
        return zipfile.ZipFile(io.BytesIO(bytes(data)))
    except Exception as e:  # BadZipFile, LargeZipFile, struct.error, ValueError, ...: whatever junk makes it raise
        raise ServeError(400, "bad_archive", f"not a readable zip archive ({type(e).__name__})") from None


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: list[int]) -> bytes:
    """Read one member, never more than its declared size plus the remaining budget (lying headers)."""
    try:
        with zf.open(info) as f:
            out = f.read(info.file_size + 1)
    except Exception as e:  # a corrupt deflate stream raises zlib.error; a bad CRC BadZipFile; and more
        raise ServeError(
            400, "bad_archive", f"archive member {info.filename!r} cannot be read ({type(e).__name__})"
        ) from None
    if len(out) > info.file_size:
        raise ServeError(400, "bad_archive", f"archive member {info.filename!r} is larger than declared")
    budget[0] -= len(out)
    if budget[0] < 0:
        raise ServeError(413, "archive_too_large", "archive expands past the size limit")
    return out


def safe_zip_members(data: bytes, limits: ServeLimits = ServeLimits()) -> dict[str, bytes]:
    """Read a zip archive from memory into ``{member name: bytes}``, checked, without touching disk.

    Refused (400): not a zip, unsafe member paths (absolute, ``..``, drive letters, backslashes),
    symbolic links, encryption, a member that cannot be read (a corrupt deflate stream, a bad CRC).
    Refused (413): too many files (the declared entry count is checked before the central directory
    is parsed), too many bytes, zip-bomb ratios.
    """
    zf = _open_zip(data, limits)
    with zf:
        infos = _members(zf, limits)
        budget = [limits.max_uncompressed_bytes]
        return {info.filename: _read_member(zf, info, budget) for info in infos}


def safe_extract_zip(data: bytes, target: str | os.PathLike, limits: ServeLimits = ServeLimits()) -> list[Path]:
    """Extract a zip archive (bytes) below ``target`` with the checks of :func:`safe_zip_members`.

    Every written path is resolved and must lie inside ``target``. Returns the written files.
    """
    root = Path(target).resolve()
    root.mkdir(parents=True, exist_ok=True)
    zf = _open_zip(data, limits)
    written: list[Path] = []
    with zf:
        infos = _members(zf, limits)
        budget = [limits.max_uncompressed_bytes]
        for info in infos:
            dest = (root / info.filename).resolve()
            if root != dest and root not in dest.parents:
                raise ServeError(
                    400, "unsafe_archive_path", f"archive member {info.filename!r} points outside the target"
                )
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(_read_member(zf, info, budget))
            written.append(dest)
    return written


def error_body(status_code: int, code: str, message: str) -> dict[str, Any]:
    """The JSON body of every error response: ``{"error": {"status", "code", "message"}}``."""
    return {"error": {"status": int(status_code), "code": code, "message": message}}


def unwrap_remote_error(exc: BaseException) -> BaseException:
    """The exception a Ray task, actor or Serve replica raised, from the error its caller caught
    (Ray's ``RayTaskError`` holds it as ``cause``); any other exception is returned as it is."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def error_response(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """``(status, body)`` for an exception: the one mapping from errors to the client's JSON error.

    A :class:`~raylens.errors.RaylensError` (:class:`ServeError` included) keeps its ``status_code``
    and ``code``, and its message goes to the client, unless the status is 500. ``ValueError`` and
    ``TypeError`` (bad input found deeper down, e.g. in the search core) become 422. A full queue or no
    live replica (Serve's ``BackPressureError`` ...) is 503 ``overloaded``, a timeout 504. Anything else,
    and any 500, answers ``internal_error`` with no details. An error raised in another deployment is
    mapped as the error it was there.

    >>> error_response(ServeError(404, "unknown_index", "no index named 'x'"))[1]["error"]["code"]
    'unknown_index'
    >>> error_response(RuntimeError("a secret path"))
    (500, {'error': {'status': 500, 'code': 'internal_error', 'message': 'internal error'}})
    """
    exc = unwrap_remote_error(exc)
    if isinstance(exc, RaylensError):
        if exc.status_code != 500:
            return exc.status_code, error_body(exc.status_code, exc.code, str(exc)[:1000])
    elif type(exc).__name__ in _OVERLOAD_ERRORS:
        return 503, error_body(503, "overloaded", "the service is at capacity; retry in a moment")
    elif isinstance(exc, TimeoutError) or type(exc).__name__ in _TIMEOUT_ERRORS:
        return 504, error_body(504, "timeout", "the service did not answer in time; retry in a moment")
    elif isinstance(exc, (ValueError, TypeError)):
        return 422, error_body(422, "invalid_input", str(exc)[:500])
    return 500, error_body(500, "internal_error", "internal error")


# Ray Serve's own errors, named (this module does not import Ray): a full queue (``max_queued_requests``),
# no live replica, a cancelled request; a handle call that ran past its timeout.
_OVERLOAD_ERRORS = frozenset({"BackPressureError", "DeploymentUnavailableError", "RequestCancelledError"})
_TIMEOUT_ERRORS = frozenset({"GetTimeoutError"})
