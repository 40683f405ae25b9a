"""Serving an indexed item's file, confined to the index's declared data roots.

An index's metadata names a file per item (its ``path`` column); the search service returns that
file (``GET /images/{index}/{id}``) only when it lies inside one of the index's data roots
(``manifest.data_roots``, see :meth:`raylens.index.VectorIndex.set_data_roots`, or the service's
config). Confinement holds against symbolic links: the path is resolved, must fall under a resolved
root, and is then opened one component at a time from the root with ``O_NOFOLLOW``, so a link swapped
in between the check and the open is refused rather than followed. Only regular files are read (no
FIFOs or devices), at most ``max_bytes`` of them, and only the image formats of
:mod:`raylens.serve.media`, told from the file's first bytes.

>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> _ = (root / "a.png").write_bytes(b"\\x89PNG\\r\\n\\x1a\\n" + b"\\0" * 8)
>>> read_confined(str(root / "a.png"), [str(root)], max_bytes=1000)[1]
'image/png'
>>> read_confined("/etc/passwd", [str(root)], max_bytes=1000)
Traceback (most recent call last):
...
raylens.serve.limits.ServeError: the file is not inside the index's data roots
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from typing import TYPE_CHECKING

from raylens.serve.limits import ServeError
from raylens.serve.media import ACCEPTED_IMAGES, sniff_image_type

if TYPE_CHECKING:
    from raylens.index import VectorIndex

__all__ = ["read_confined", "item_file"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def _no_file(message: str) -> ServeError:
    return ServeError(404, "no_image", message)


def _open_under(root: str, parts: list[str]) -> int:
    """Open ``root/parts...`` walking from ``root`` without following any link; an fd or OSError."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        for part in parts[:-1]:
            nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return os.open(parts[-1], _FILE_FLAGS, dir_fd=fd)
    finally:
        os.close(fd)


def _open_confined(path: str, roots: Sequence[str]) -> int:
    candidates = [path] if os.path.isabs(path) else [os.path.join(r, path) for r in roots]
    real_roots = [os.path.realpath(r) for r in roots]
    for candidate in candidates:
        try:
            real = os.path.realpath(candidate)
        except (ValueError, OSError):  # NUL bytes, loops
            continue
        for root in real_roots:
            if not real.startswith(root.rstrip(os.sep) + os.sep):
                continue
            parts = os.path.relpath(real, root).split(os.sep)
            try:
                return _open_under(root, parts)
            except OSError:  # gone, a link swapped in since the check (ELOOP), a directory, no access
                continue
    raise _no_file("the file is not inside the index's data roots")


def read_confined(path: str, roots: Sequence[str], *, max_bytes: int) -> tuple[bytes, str]:
    """``(bytes, media type)`` of the image file ``path`` (absolute, or relative to a root), if it lies
    inside one of ``roots``; else :class:`~raylens.serve.limits.ServeError` 404, or 413 above ``max_bytes``."""
    if not roots:
        raise _no_file("the index declares no data roots, so no file of it is served")
    if not isinstance(path, str) or not path or "\x00" in path:
        raise _no_file("the item names no file")
    fd = _open_confined(path, roots)
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise _no_file("the item's file is not a regular file")
        if info.st_size > max_bytes:
            raise ServeError(413, "image_too_large", f"the image file is over the limit of {max_bytes} bytes")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ServeError(413, "image_too_large", f"the image file is over the limit of {max_bytes} bytes")
    media = sniff_image_type(data)
    if media is None:
        raise _no_file(f"the item's file is not a {ACCEPTED_IMAGES} image")
    return data, media


def item_file(
    index: VectorIndex, item_id: int, *, max_bytes: int, roots: Sequence[str] | None = None
) -> tuple[bytes, str]:
    """The image file of item ``item_id`` of ``index`` (its ``path`` metadata), confined to ``roots``
    (default: the index's ``manifest.data_roots``). Blocking: services call it off their event loop.

    The id lookup is a binary search over the index's sorted ids (no copy, no scan).
    """
    if not index.contains(item_id):
        raise _no_file(f"item {item_id} is not in this index")
    path = index.metadata([item_id])[0].get("path")
    if not path:
        raise _no_file(f"item {item_id} names no file")
    return read_confined(str(path), list(index.manifest.data_roots if roots is None else roots), max_bytes=max_bytes)
