"""WebDataset tar shards in the layout img2dataset writes, read and written with the stdlib ``tarfile``.

A shard is a tar whose members are grouped by key: ``KEY.jpg`` (or ``.jpeg``/``.png``/``.webp``)
plus ``KEY.txt`` (the caption) and/or ``KEY.json`` (with a ``"caption"`` field), members of one key
next to each other. A key is the member name up to the first dot of its file name, as webdataset's
``base_plus_ext`` splits it. Shards are read as a stream, one sample at a time, so a shard never
sits in memory whole; a sample without image or caption, and a truncated or unreadable tar, become
skipped rows named ``SHARD.tar:KEY``. So does a sample whose ``.txt``/``.json`` member is not text
(NUL bytes or invalid UTF-8): tar keeps no checksum of member data, so a corrupt size field makes
one member swallow the next members' headers and data, and the sample would otherwise come out with
that binary junk as its caption.
"""

from __future__ import annotations

import glob
import io
import json
import math
import re
import tarfile
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from raylens.data.report import SkippedRow

__all__ = [
    "IMAGE_EXTS",
    "TEXT_EXTS",
    "MAX_MEMBER_BYTES",
    "WdsSample",
    "expand_shards",
    "iter_shard",
    "shard_batches",
    "write_tar",
    "write_webdataset_shards",
]

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
"""Member extensions read as the image, in this order of preference."""
TEXT_EXTS = ("txt", "json")
"""Member extensions read for the caption; members of any other extension are not read at all."""
MAX_MEMBER_BYTES = {"image": 64 * 2**20, "text": 2**20}
"""Largest image and caption member read; a bigger one (a sparse or gzip bomb, or junk) skips its sample."""
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(\d+)\.\.(\d+)$")


def _expand_braces(pattern: str) -> list[str]:
    """``a{00..02}b`` -> ``a00b a01b a02b``; ``{x,y}`` -> ``x y``; several groups multiply out."""
    m = _BRACE.search(pattern)
    if not m:
        return [pattern]
    body = m.group(1)
    if r := _RANGE.match(body):
        lo, hi = r.groups()
        width = len(lo) if lo.startswith("0") else 0
        if int(hi) < int(lo):
            raise ValueError(f"shard pattern {pattern!r}: range {body!r} runs backwards")
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    head, tail = pattern[: m.start()], pattern[m.end() :]
    return [s for o in options for s in _expand_braces(head + o + tail)]


def expand_shards(shards: str | Path | Iterable[str | Path]) -> list[str]:
    """Shard paths from a brace pattern (``data/{00000..00009}.tar``), a glob, a path, or a list of them.

    Raises:
        FileNotFoundError: a named shard (not a glob) does not exist.
        ValueError: nothing matched.
    """
    specs = [shards] if isinstance(shards, (str, Path)) else list(shards)
    out: list[str] = []
    missing: list[str] = []
    for spec in specs:
        for name in _expand_braces(str(spec)):
            if glob.has_magic(name):
                out.extend(sorted(glob.glob(name)))
            elif Path(name).is_file():
                out.append(name)
            else:
                missing.append(name)
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} shard(s) do not exist, e.g. {missing[:3]}; "
            "check the path or brace pattern (like data/{00000..00009}.tar)"
        )
    if not out:
        raise ValueError(f"no shard matched {shards!r}; pass .tar files, a glob or a brace pattern")
    return [str(Path(p).resolve()) for p in out]


@dataclass(frozen=True)
class WdsSample:
    """One usable sample of a shard: the image still encoded, its caption and ``SHARD:KEY``."""

    path: str
    key: str
    caption: str
    image_bytes: bytes


def _split_name(name: str) -> tuple[str, str]:
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (ext.lower() if dot else "")


def _not_text(members: dict[str, bytes]) -> str | None:
    """Why a caption member is not text (None when every one is): binary data where a caption
    should be means the shard is corrupt (a member's size field swallowing the next members)."""
    for ext in TEXT_EXTS:
        data = members.get(ext)
        if data is None:
            continue
        if b"\0" in data:
            return f"{ext} member is not text (NUL bytes): the shard may be corrupt; re-create or re-download it"
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as e:
            return (
                f"{ext} member is not UTF-8 text (byte {e.start}): the shard may be corrupt; "
                "re-create it, writing captions as UTF-8"
            )
    return None


def _caption(members: dict[str, bytes]) -> str | None:
    if "txt" in members:
        text = members["txt"].decode("utf-8").strip()
        if text:
            return text
    if "json" in members:
        try:
            meta = json.loads(members["json"])
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        caption = meta.get("caption") if isinstance(meta, dict) else None
        if isinstance(caption, str) and caption.strip():
            return caption.strip()
    return None


def _sample(shard: str, key: str, members: dict[str, bytes]) -> WdsSample | SkippedRow:
    path = f"{shard}:{key}"
    if "__oversize__" in members:
        return SkippedRow(path, members["__oversize__"].decode())
    if "__duplicate__" in members:
        return SkippedRow(path, f"duplicate member ({key}.{members['__duplicate__'].decode()})")
    not_text = _not_text(members)
    if not_text is not None:
        return SkippedRow(path, not_text)
    image_ext = next((e for e in IMAGE_EXTS if e in members), None)
    caption = _caption(members)
    if image_ext is None:
        return SkippedRow(path, "missing image" if caption is not None else f"no image or caption ({sorted(members)})")
    if caption is None:
        return SkippedRow(path, "missing caption")
    return WdsSample(path, key, caption, members[image_ext])


def _ends_cleanly(tf: tarfile.TarFile) -> bool:
    """True when the archive stops at an end-of-archive (zero) block, not in the middle of a header:
    ``tarfile`` ends its iteration silently on a header cut short, so a truncated shard needs this."""
    tf.fileobj.seek(tf.offset)
    block = tf.fileobj.read(tarfile.BLOCKSIZE)
    return len(block) == tarfile.BLOCKSIZE and not block.strip(b"\0")


def iter_shard(shard: str | Path) -> Iterator[WdsSample | SkippedRow]:
    """Stream the samples of one shard; bad samples and tar errors come out as skipped rows.

    A shard cut short loses only the sample it was cut in (or, cut inside a header, the sample
    before it), reported as truncated; the samples before that are read.
    """
    shard = str(shard)
    key, members = None, {}
    try:
        with open(shard, "rb") as f, tarfile.open(fileobj=f, mode="r:*") as tf:
            for info in tf:
                if not info.isfile():
                    continue
                name_key, ext = _split_name(info.name)
                if name_key != key:
                    if key is not None:
                        yield _sample(shard, key, members)
                    key, members = name_key, {}
                if ext not in IMAGE_EXTS and ext not in TEXT_EXTS:
                    continue  # nobody asked for it: not read (tarfile skips its data)
                cap = MAX_MEMBER_BYTES["image" if ext in IMAGE_EXTS else "text"]
                data = tf.extractfile(info).read(cap + 1)  # never more than the cap, whatever the header says
                if len(data) > cap:
                    members["__oversize__"] = f"{ext} member over {cap} bytes".encode()
                elif ext in members:  # the same member twice: the sample is ambiguous
                    members["__duplicate__"] = ext.encode()
                else:
                    members[ext] = data
            intact = _ends_cleanly(tf)
    except FileNotFoundError:
        yield SkippedRow(shard, "file not found")
        return
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        where = f"{shard}:{key}" if key is not None else shard
        what = "truncated or corrupt tar" if key is not None else "not a readable tar file"
        detail = str(e).strip().splitlines()[-1].strip("- ")  # tarfile lists every method it tried
        yield SkippedRow(where, f"{what} ({type(e).__name__}: {detail})")
        return
    if not intact:
        where = f"{shard}:{key}" if key is not None else shard
        yield SkippedRow(where, "truncated or corrupt tar (no end-of-archive block after this sample)")
    elif key is not None:
        yield _sample(shard, key, members)


def shard_batches(shard: str | Path, batch_size: int) -> Iterator[tuple[dict[str, np.ndarray], list[SkippedRow]]]:
    """The samples of a shard as column batches (``path``, ``key``, ``caption``, ``image_bytes``) of at
    most ``batch_size`` rows, each with the rows skipped since the previous batch."""
    rows: list[WdsSample] = []
    skipped: list[SkippedRow] = []

    def flush():
        cols = {
            "path": np.array([r.path for r in rows], dtype=object),
            "key": np.array([r.key for r in rows], dtype=object),
            "caption": np.array([r.caption for r in rows], dtype=object),
            "image_bytes": np.array([r.image_bytes for r in rows], dtype=object),
        }
        return cols, list(skipped)

    for item in iter_shard(shard):
        if isinstance(item, SkippedRow):
            skipped.append(item)
            continue
        rows.append(item)
        if len(rows) == batch_size:
            yield flush()
            rows, skipped = [], []
    if rows or skipped:
        yield flush()


def write_tar(path: str | Path, members: Iterable[tuple[str, bytes]]) -> Path:
    """Write ``(name, data)`` members into an uncompressed tar at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    now = int(time.time())
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), now, 0o644
            tf.addfile(info, io.BytesIO(data))
    return path


def _encode(image: np.ndarray | bytes, fmt: str) -> bytes:
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    buf = io.BytesIO()
    pil_format = "JPEG" if fmt in ("jpg", "jpeg") else fmt.upper()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format=pil_format, quality=95)
    return buf.getvalue()


def write_webdataset_shards(
    pairs: Iterable[tuple[np.ndarray | bytes, str]],
    out_dir: str | Path,
    shard_size: int = 10_000,
    *,
    image_format: str = "jpg",
) -> list[Path]:
    """Write ``(image, caption)`` pairs as img2dataset does: ``00000.tar``, ``00001.tar``, ... each
    holding ``KEY.jpg``, ``KEY.txt`` and ``KEY.json`` per sample (``KEY`` = shard number and index).

    ``image`` is an ``(H, W, 3)`` uint8 array (encoded as ``image_format``) or already-encoded bytes.
    Returns the shard paths; the pairs are consumed lazily, one shard at a time.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if image_format not in IMAGE_EXTS:
        raise ValueError(f"image_format must be one of {IMAGE_EXTS}, got {image_format!r}")
    out_dir = Path(out_dir)
    digits = max(1, math.ceil(math.log10(shard_size))) if shard_size > 1 else 1
    shards: list[Path] = []
    members: list[tuple[str, bytes]] = []
    for n, (image, caption) in enumerate(pairs):
        shard_id, i = divmod(n, shard_size)
        key = f"{shard_id:05d}{i:0{digits}d}"
        meta = {"key": key, "caption": caption, "status": "success"}
        members += [
            (f"{key}.{image_format}", _encode(image, image_format)),
            (f"{key}.txt", caption.encode()),
            (f"{key}.json", json.dumps(meta).encode()),
        ]
        if i == shard_size - 1:
            shards.append(write_tar(out_dir / f"{shard_id:05d}.tar", members))
            members = []
    if members:
        shards.append(write_tar(out_dir / f"{len(shards):05d}.tar", members))
    return shards
