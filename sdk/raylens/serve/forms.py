"""Multipart form bodies, read from memory into text fields and raw file bytes (no temp files).

A part named as a file field (``image``) is bytes whether or not the client gave it a filename
(OpenAPI clients often send binary parts without one); every other part is UTF-8 text. The body was
already read under the size limit (:func:`raylens.serve.http.read_body`); the counts are limited here.

>>> body = b'--b\\r\\nContent-Disposition: form-data; name="k"\\r\\n\\r\\n5\\r\\n--b--\\r\\n'
>>> parse_multipart("multipart/form-data; boundary=b", body, max_files=2)
({'k': '5'}, [])
"""

from __future__ import annotations

from python_multipart.multipart import MultipartParser, parse_options_header

from raylens.serve.limits import ServeError

__all__ = ["parse_multipart", "MAX_FIELDS"]

MAX_FIELDS = 16
"""Most text fields one form may hold."""


class _Part:
    def __init__(self) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.data = bytearray()


def parse_multipart(
    content_type: str, body: bytes, *, max_files: int, file_fields: frozenset[str] = frozenset({"image"})
) -> tuple[dict[str, str], list[bytes]]:
    """``(text fields, bytes of every file part)`` of a ``multipart/form-data`` body; 400 when the body
    is not a readable form, 413 past ``max_files`` file parts, 422 for a text field given twice."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ServeError(400, "bad_form", "the multipart Content-Type names no boundary")
    parts: list[_Part] = []
    header = [b"", b""]

    def on_part_begin() -> None:
        parts.append(_Part())
        if len(parts) > max_files + MAX_FIELDS:
            raise ServeError(413, "batch_too_large", f"the form holds over {max_files + MAX_FIELDS} parts")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header[0] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header[1] += data[start:end]

    def on_header_end() -> None:
        parts[-1].headers[header[0].strip().lower()] = header[1].strip()
        header[0], header[1] = b"", b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1].data += data[start:end]

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except ServeError:
        raise
    except Exception as e:  # python-multipart raises its own error types for malformed bodies
        raise ServeError(400, "bad_form", f"not a readable multipart form ({type(e).__name__})") from None
    fields: dict[str, str] = {}
    files: list[bytes] = []
    for part in parts:
        _, options = parse_options_header(part.headers.get(b"content-disposition", b""))
        raw_name = options.get(b"name")
        if raw_name is None:
            raise ServeError(400, "bad_form", "a form part has no name (Content-Disposition: form-data; name=...)")
        name = raw_name.decode("utf-8", "replace")
        if name in file_fields:
            files.append(bytes(part.data))
            if len(files) > max_files:
                raise ServeError(413, "batch_too_large", f"over {max_files} files (the batch limit)")
            continue
        if name in fields:
            raise ServeError(422, "repeated_field", f"the form field {name!r} is given more than once")
        if len(fields) >= MAX_FIELDS:
            raise ServeError(400, "bad_form", f"the form holds over {MAX_FIELDS} fields")
        try:
            fields[name] = bytes(part.data).decode("utf-8")
        except UnicodeDecodeError:
            raise ServeError(400, "bad_form", f"the form field {name!r} is not UTF-8 text") from None
    return fields, files
