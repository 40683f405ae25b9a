"""Read a captions file (CSV or JSONL) into rows with absolute image paths; check parquet ones.

A captions file has one row per image with at least the columns ``path`` and ``caption``; other
columns (``split``, ``label``, ...) are kept. Relative paths are resolved against the file's folder.

Parquet captions (a ``.parquet`` file or a folder of them) follow the same contract and may also
embed the images: a binary ``image_bytes`` column is decoded instead of reading ``path``, which then
only names the row in reports. :func:`caption_columns` checks them from the footer alone.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

__all__ = ["read_captions", "caption_columns", "parquet_files", "parquet_rows", "REQUIRED_COLUMNS", "BYTES_COLUMN"]

REQUIRED_COLUMNS = ("path", "caption")
BYTES_COLUMN = "image_bytes"
"""Parquet column with embedded encoded images (JPEG/PNG/WebP bytes), used instead of ``path``."""
_OTHER_BYTES_NAMES = ("image", "jpg", "png", "webp", "bytes")


def _check_path(path: Path, *, parquet: bool = False) -> str:
    kinds = ".csv, .jsonl or .parquet" if parquet else ".csv or .jsonl"
    if parquet and path.is_dir():
        return ".parquet"
    if not path.is_file():
        raise FileNotFoundError(f"captions file {str(path)!r} does not exist; pass a {kinds} file")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson") + ((".parquet",) if parquet else ()):
        raise ValueError(f"captions file {str(path)!r} must end in {kinds}, not {suffix or '(none)'!r}")
    return suffix


def _check_columns(path: Path, columns, *, parquet: bool = False) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        hint = ""
        embedded = [c for c in columns if c.lower() in (BYTES_COLUMN, *_OTHER_BYTES_NAMES)]
        if parquet and "path" in missing and embedded:
            rename = f"rename {embedded[0]!r} to {BYTES_COLUMN!r} and " if embedded[0] != BYTES_COLUMN else ""
            hint = (
                f". Embedded images go in a binary {BYTES_COLUMN!r} column and 'path' still names each"
                f" row in reports: {rename}add a 'path' column (a file name or key)"
            )
        raise ValueError(
            f"captions file {str(path)!r} lacks column(s) {missing}; it has {list(columns)}. "
            f"Add a header with at least {list(REQUIRED_COLUMNS)}{hint}"
        )


def parquet_files(path: str | Path) -> list[Path]:
    """The parquet files of ``path`` (a ``.parquet`` file, or a folder searched recursively), sorted."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
        if not files:
            raise ValueError(f"folder {str(path)!r} holds no .parquet files; pass a captions file or such a folder")
        return files
    _check_path(path, parquet=True)
    return [path]


def parquet_rows(files: list[Path]) -> int:
    """Rows in these parquet files, from their footers."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"{[str(f) for f in files][:3]}: not readable parquet ({e})") from None


def _parquet_columns(path: Path) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = parquet_files(path)
    try:
        schema = pq.read_schema(files[0])
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"{str(path)!r} is not a readable parquet file ({e})") from None
    if parquet_rows(files) == 0:
        raise ValueError(f"captions file {str(path)!r} has no rows; nothing to ingest")
    columns = list(schema.names)
    _check_columns(path, columns, parquet=True)
    if (
        BYTES_COLUMN in columns
        and not pa.types.is_binary(t := schema.field(BYTES_COLUMN).type)
        and not pa.types.is_large_binary(t)
    ):
        raise ValueError(f"{str(path)!r}: column {BYTES_COLUMN!r} must be binary (encoded image bytes), not {t}")
    return columns


def caption_columns(path: str | Path) -> list[str]:
    """Check a captions file cheaply (header, first line or parquet footer) and return its columns.

    ``path`` is a ``.csv``, ``.jsonl`` or ``.parquet`` file, or a folder of parquet files.
    Raises FileNotFoundError or ValueError (wrong extension, missing columns, no data row).
    """
    path = Path(path)
    suffix = _check_path(path, parquet=True)
    if suffix == ".parquet":
        return _parquet_columns(path)
    with path.open(newline="", encoding="utf-8") as f:
        if suffix == ".csv":
            reader = csv.reader(f)
            columns = next(reader, [])
            first = next(reader, None)
        else:
            first = next((ln for ln in f if ln.strip()), None)
            try:
                columns = list(json.loads(first)) if first else []
            except (json.JSONDecodeError, TypeError):
                raise ValueError(f"{path}: the first line is not a JSON object; each line must be one") from None
    if first is None:
        raise ValueError(f"captions file {str(path)!r} has no rows; nothing to ingest")
    _check_columns(path, columns)
    return columns


def read_captions(path: str | Path, *, split: str | None = None) -> list[dict[str, str]]:
    """Return the rows of a ``.csv`` or ``.jsonl`` captions file, paths made absolute.

    Args:
        path: the captions file.
        split: keep only rows whose ``split`` column equals this (the column must exist).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unknown extension, missing columns, bad JSON line, or no rows left.
    """
    path = Path(path)
    suffix = _check_path(path)
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            rows = list(reader)
    else:
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg}); each line must be one JSON object") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object per line, got {type(row).__name__}")
            rows.append(row)
        columns = sorted({k for r in rows for k in r})
    _check_columns(path, columns)
    if split is not None:
        if "split" not in columns:
            raise ValueError(f"split={split!r} was asked for but {str(path)!r} has no 'split' column")
        rows = [r for r in rows if r.get("split") == split]
    if not rows:
        where = f" with split={split!r}" if split is not None else ""
        raise ValueError(f"captions file {str(path)!r} has no rows{where}; nothing to ingest")
    base = path.parent.resolve()
    out = []
    for r in rows:
        r = {k: ("" if v is None else str(v)) for k, v in r.items()}
        p = Path(r["path"])
        r["path"] = str(p if p.is_absolute() else base / p)
        out.append(r)
    return out
