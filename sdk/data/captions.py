"""Read a captions file (CSV or JSONL) into rows with absolute image paths.

A captions file has one row per image with at least the columns ``path`` and ``caption``; other
columns (``split``, ``label``, ...) are kept. Relative paths are resolved against the file's folder.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

__all__ = ["read_captions", "caption_columns", "REQUIRED_COLUMNS"]

REQUIRED_COLUMNS = ("path", "caption")


def _check_path(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"captions file {str(path)!r} does not exist; pass a .csv or .jsonl file")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson"):
        raise ValueError(f"captions file {str(path)!r} must end in .csv or .jsonl, not {suffix or '(none)'!r}")
    return suffix


def _check_columns(path: Path, columns) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ValueError(
            f"captions file {str(path)!r} lacks column(s) {missing}; it has {list(columns)}. "
            f"Add a header with at least {list(REQUIRED_COLUMNS)}"
        )


def caption_columns(path: str | Path) -> list[str]:
    """Check a captions file cheaply (header or first line only) and return its columns.

    Raises FileNotFoundError or ValueError (wrong extension, missing columns, no data row).
    """
    path = Path(path)
    suffix = _check_path(path)
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
