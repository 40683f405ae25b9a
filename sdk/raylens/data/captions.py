"""Captions files (CSV/TSV, JSONL, parquet): find their columns, check them, read them as rows.

A captions file has one row per image: a column naming the image (a path relative to the file's
folder, an absolute path or a ``file://`` URL), a caption column, and optionally embedded image
bytes (parquet), ``split`` and ``label``; other columns are kept. Files written by other tools load
without renaming: the columns are matched by role (:data:`COLUMN_CANDIDATES`) or mapped by hand with
``columns={"path": "url", "caption": "text"}`` (a column named like a role that another column
fills is left out), as in these layouts:

* raylens' own: ``path``, ``caption`` (+ ``image_bytes`` in parquet);
* img2dataset: an input list with ``url`` + ``caption``/``text``, or its parquet output with the
  image in a binary ``jpg`` column (``url``, ``key``, ``caption``, ``status``, ...);
* clip-retrieval: ``image_path`` + ``caption`` (its inference metadata), LAION-style ``URL`` + ``TEXT``;
* open_clip's CSV: tab-separated ``filepath`` + ``title``.

>>> resolve_columns(["url", "TEXT", "similarity"])
{'path': 'url', 'caption': 'TEXT'}
>>> resolve_columns(["key", "jpg", "caption", "url"], binary=["jpg"])
{'path': 'url', 'caption': 'caption', 'image_bytes': 'jpg'}
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

__all__ = [
    "BYTES_COLUMN",
    "COLUMN_CANDIDATES",
    "COLUMN_ROLES",
    "REQUIRED_COLUMNS",
    "CaptionsLayout",
    "displaced_columns",
    "inspect_captions",
    "parquet_files",
    "parquet_rows",
    "read_captions",
    "resolve_columns",
    "resolve_image_path",
]

REQUIRED_COLUMNS = ("path", "caption")
"""The roles every captions file must fill (under these names or mapped)."""
BYTES_COLUMN = "image_bytes"
"""Role (and raylens' column name) of embedded encoded images (JPEG/PNG/WebP bytes) in parquet."""
COLUMN_ROLES = ("path", "caption", BYTES_COLUMN, "split", "label")
"""The roles ``columns=`` may map: the reader renames the mapped column to the role's name."""
COLUMN_CANDIDATES: dict[str, tuple[str, ...]] = {
    "path": (
        "path",
        "image_path",
        "filepath",
        "file_path",
        "filename",
        "file_name",
        "file",
        "image",
        "url",
        "image_url",
    ),
    "caption": ("caption", "text", "title", "prompt", "alt"),
    BYTES_COLUMN: (BYTES_COLUMN, "jpg", "jpeg", "png", "webp", "image", "bytes"),
}
"""Column names tried for each role, in order: exact spelling first, then ignoring case."""
_TEXT_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson")


def _check_path(path: Path, *, parquet: bool = False) -> str:
    kinds = ".csv, .tsv, .jsonl or .parquet" if parquet else ".csv, .tsv or .jsonl"
    if parquet and path.is_dir():
        return ".parquet"
    if not path.is_file():
        raise FileNotFoundError(f"captions file {str(path)!r} does not exist; pass a {kinds} file")
    suffix = path.suffix.lower()
    if suffix not in _TEXT_SUFFIXES + ((".parquet",) if parquet else ()):
        raise ValueError(f"captions file {str(path)!r} must end in {kinds}, not {suffix or '(none)'!r}")
    return suffix


def _find(present: list[str], candidates: Iterable[str], taken: set[str]) -> str | None:
    free = [c for c in present if c not in taken]
    for cand in candidates:
        if cand in free:
            return cand
    lowered = {c.lower(): c for c in reversed(free)}
    return next((lowered[c.lower()] for c in candidates if c.lower() in lowered), None)


def resolve_columns(
    present: Iterable[str],
    columns: Mapping[str, str] | None = None,
    *,
    binary: Iterable[str] = (),
    source: str = "captions file",
) -> dict[str, str]:
    """Which of a file's columns plays each role: ``{role: column}`` for ``path``, ``caption`` and,
    when present, ``image_bytes`` (plus ``split``/``label`` when mapped by hand).

    Args:
        present: the file's column names.
        columns: roles mapped by hand (``{"path": "url", "caption": "text"}``); roles left out are
            found among :data:`COLUMN_CANDIDATES`.
        binary: the columns holding bytes (parquet): only these can be ``image_bytes``, and none of
            them is taken as ``path``.
        source: how error messages name the file.

    Raises:
        ValueError: an unknown role, a mapped column the file lacks, two roles mapped to one
            column, or a required role with no matching column. The message lists the file's
            columns and shows the ``columns=`` argument that fixes it.
    """
    present = list(present)
    binary = set(binary)
    columns = dict(columns or {})
    unknown = sorted(set(columns) - set(COLUMN_ROLES))
    if unknown:
        raise ValueError(f"columns= maps unknown role(s) {unknown}; the roles are {list(COLUMN_ROLES)}")
    for role, col in columns.items():
        if not isinstance(col, str) or col not in present:
            raise ValueError(f"columns= maps {role!r} to {col!r}, but {source} has no such column; it has {present}")
    if len(set(columns.values())) < len(columns):
        raise ValueError(f"columns= maps two roles to one column: {columns}; give each role its own column")
    out: dict[str, str] = {}
    taken = set(columns.values())
    for role in (BYTES_COLUMN, "path", "caption"):
        if role in columns:
            out[role] = columns[role]
            continue
        if role == BYTES_COLUMN:
            found = _find(present, COLUMN_CANDIDATES[role], taken | (set(present) - binary))
        else:
            # with embedded images the path only names the row: a sample key will do
            extra = ("key", "__key__") if role == "path" and BYTES_COLUMN in out else ()
            found = _find(present, COLUMN_CANDIDATES[role] + extra, taken | binary)
        if found is not None:
            out[role] = found
            taken.add(found)
    out.update({r: c for r, c in columns.items() if r not in out})
    missing = [r for r in REQUIRED_COLUMNS if r not in out]
    if missing:
        role = missing[0]
        why = ""
        if role == "path" and BYTES_COLUMN in out:
            why = " (with embedded images the path only names each row in reports: a key or url column will do)"
        candidates = list(COLUMN_CANDIDATES[role]) + (["key"] if why else [])
        raise ValueError(
            f"{source} has no {role!r} column{why}: none of {candidates} matched; it has "
            f"{present}. Name the column with columns={{{role!r}: 'YOUR_COLUMN'}}"
        )
    return {r: out[r] for r in (*REQUIRED_COLUMNS, BYTES_COLUMN, "split", "label") if r in out}


def resolve_image_path(value: str, base: Path | str) -> str:
    """An image reference as the decoder reads it: ``file://`` URLs and relative paths become
    absolute paths (relative to ``base``); absolute paths and remote URLs are returned unchanged."""
    value = str(value)
    if "://" in value:
        url = urlparse(value)
        return unquote(url.path) if url.scheme == "file" else value
    p = Path(value)
    return str(p if p.is_absolute() else Path(base) / p)


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


@dataclass(frozen=True)
class CaptionsLayout:
    """What :func:`inspect_captions` found out about a captions file without reading its rows."""

    path: str
    """The file (or parquet folder), absolute."""
    format: str
    """``"csv"`` (also TSV), ``"jsonl"`` or ``"parquet"``."""
    columns: list[str]
    """The file's own column names."""
    roles: dict[str, str]
    """Role -> the file's column (see :func:`resolve_columns`)."""
    delimiter: str = ","
    """CSV field separator (a tab for ``.tsv`` files and tab-separated headers)."""

    @property
    def renames(self) -> dict[str, str]:
        """``{file column: role}`` for the columns a reader renames."""
        return {col: role for role, col in self.roles.items() if col != role}

    @property
    def displaced(self) -> list[str]:
        """Columns named like a role that another column fills (``caption`` when ``columns=`` maps
        the caption to ``alt_text``): readers leave them out, so no two columns share a name."""
        return displaced_columns(self.columns, self.roles)


def displaced_columns(present: Iterable[str], roles: Mapping[str, str]) -> list[str]:
    """The columns of ``present`` named like a role that another column fills (see :attr:`CaptionsLayout.displaced`)."""
    return [r for r, c in roles.items() if c != r and r in present and r not in roles.values()]


def _delimiter(path: Path, header: str) -> str:
    if path.suffix.lower() == ".tsv":
        return "\t"
    return "\t" if header.count("\t") > header.count(",") else ","


def _parquet_layout(path: Path, columns: Mapping[str, str] | None) -> CaptionsLayout:
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = parquet_files(path)
    try:
        schema = pq.read_schema(files[0])
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"{str(path)!r} is not a readable parquet file ({e})") from None
    if parquet_rows(files) == 0:
        raise ValueError(f"captions file {str(path)!r} has no rows; nothing to ingest")
    present = list(schema.names)
    binary = [f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
    roles = resolve_columns(present, columns, binary=binary, source=f"captions file {str(path)!r}")
    named = roles.get(BYTES_COLUMN, BYTES_COLUMN if BYTES_COLUMN in present else None)
    if named is not None and named not in binary:
        t = schema.field(named).type
        raise ValueError(
            f"{str(path)!r}: column {named!r} must be binary (encoded image bytes) to be read as "
            f"{BYTES_COLUMN!r}, not {t}"
        )
    return CaptionsLayout(str(path), "parquet", present, roles)


def inspect_captions(path: str | Path, columns: Mapping[str, str] | None = None) -> CaptionsLayout:
    """Check a captions file cheaply (header, first line or parquet footer) and find its columns.

    Args:
        path: a ``.csv``/``.tsv``, ``.jsonl`` or ``.parquet`` file, or a folder of parquet files.
        columns: roles mapped by hand (see :func:`resolve_columns`).

    Raises:
        FileNotFoundError: no such file.
        ValueError: wrong extension, no data row, or columns that do not fill the roles.
    """
    path = Path(path).resolve()
    suffix = _check_path(path, parquet=True)
    if suffix == ".parquet":
        return _parquet_layout(path, columns)
    delimiter = ","
    with path.open(newline="", encoding="utf-8") as f:
        if suffix in (".csv", ".tsv"):
            header = f.readline()
            delimiter = _delimiter(path, header)
            present = next(csv.reader([header], delimiter=delimiter), [])
            first = next((ln for ln in f if ln.strip()), None)
        else:
            first = next((ln for ln in f if ln.strip()), None)
            try:
                present = list(json.loads(first)) if first else []
            except (json.JSONDecodeError, TypeError):
                raise ValueError(f"{path}: the first line is not a JSON object; each line must be one") from None
    if first is None:
        raise ValueError(f"captions file {str(path)!r} has no rows; nothing to ingest")
    roles = resolve_columns(present, columns, source=f"captions file {str(path)!r}")
    fmt = "csv" if suffix in (".csv", ".tsv") else "jsonl"
    return CaptionsLayout(str(path), fmt, present, roles, delimiter)


def read_captions(
    path: str | Path, *, split: str | None = None, columns: Mapping[str, str] | None = None
) -> list[dict[str, str]]:
    """Return the rows of a ``.csv``/``.tsv`` or ``.jsonl`` captions file, under the role names, with
    image paths made absolute.

    Args:
        path: the captions file.
        split: keep only rows whose ``split`` column equals this (the column must exist).
        columns: roles mapped by hand (``{"path": "url", "caption": "text"}``); see :func:`resolve_columns`.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unknown extension, missing columns, bad JSON line, or no rows left.
    """
    path = Path(path)
    suffix = _check_path(path)
    if suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as f:
            header = f.readline()
            f.seek(0)
            reader = csv.DictReader(f, delimiter=_delimiter(path, header))
            present = list(reader.fieldnames or [])
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
        present = list(dict.fromkeys(k for r in rows for k in r))
    roles = resolve_columns(present, columns, source=f"captions file {str(path)!r}")
    renames, dropped = {col: role for role, col in roles.items()}, set(displaced_columns(present, roles))
    rows = [{renames.get(k, k): v for k, v in r.items() if k not in dropped} for r in rows]
    if split is not None:
        if "split" not in renames.values() and "split" not in present:
            raise ValueError(f"split={split!r} was asked for but {str(path)!r} has no 'split' column")
        rows = [r for r in rows if r.get("split") == split]
    if not rows:
        where = f" with split={split!r}" if split is not None else ""
        raise ValueError(f"captions file {str(path)!r} has no rows{where}; nothing to ingest")
    base = path.parent.resolve()
    out = []
    for r in rows:
        r = {k: ("" if v is None else str(v)) for k, v in r.items()}
        r["path"] = resolve_image_path(r["path"], base)
        out.append(r)
    return out
