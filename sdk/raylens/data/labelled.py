"""Labelled images for classification, before any image is read: label tables, class lists,
validation splits and scikit-learn's digits written as class folders.

A *label table* is a CSV/TSV, JSONL or parquet file with one row per image: a column naming the image
(a path relative to the file's folder, absolute, or ``file://``; or, in parquet, the encoded bytes)
and a label column holding the class name (or number). :func:`inspect_label_table` finds the
columns from the header alone; :func:`read_label_columns` reads only the small columns (labels and
paths), so the class list and the per-class counts are known before the images are decoded.

>>> class_list(["cat", "dog", "cat"]), class_list(["10", "9", "2"])
(['cat', 'dog'], ['2', '9', '10'])
>>> encode_labels(["dog", "cow", "cat"], ["cat", "dog"]).tolist()
[1, -1, 0]
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "LabelTableLayout",
    "LABEL_TABLE_SUFFIXES",
    "PATH_CANDIDATES",
    "BYTES_CANDIDATES",
    "is_label_table",
    "inspect_label_table",
    "read_label_columns",
    "label_text",
    "class_list",
    "encode_labels",
    "in_validation",
    "write_digits_folders",
]

LABEL_TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".parquet")
PATH_CANDIDATES = ("path", "image_path", "filepath", "file_path", "filename", "file_name", "file", "image", "url")
"""Column names tried for the image reference, in order (exact spelling first, then ignoring case)."""
BYTES_CANDIDATES = ("image_bytes", "jpg", "jpeg", "png", "webp", "image", "bytes")
"""Binary parquet columns tried for embedded encoded images."""


def is_label_table(spec: str | Path) -> bool:
    """Does ``spec`` look like a label table (by its suffix, or a folder of parquet files)?"""
    p = Path(spec).expanduser()
    return p.suffix.lower() in LABEL_TABLE_SUFFIXES or (p.is_dir() and next(p.glob("*.parquet"), None) is not None)


@dataclass(frozen=True)
class LabelTableLayout:
    """Where a label table's image reference and label live."""

    path: str
    """The table (a file, or a folder of parquet files), absolute."""
    format: str
    """``csv`` (also TSV), ``jsonl`` or ``parquet``."""
    columns: list[str]
    """The table's own column names."""
    label_column: str
    """The column holding each row's class name or number."""
    path_column: str | None
    """The column naming each image (None: parquet with embedded bytes and no path; rows are named by number)."""
    bytes_column: str | None = None
    """A binary parquet column with the encoded image (read instead of the path)."""
    delimiter: str = ","

    @property
    def base(self) -> str:
        """The folder relative image paths are resolved against."""
        p = Path(self.path)
        return str(p if p.is_dir() else p.parent)


def _find(present: Sequence[str], candidates: Iterable[str], exclude: Iterable[str] = ()) -> str | None:
    free = [c for c in present if c not in set(exclude)]
    for cand in candidates:
        if cand in free:
            return cand
    lowered = {c.lower(): c for c in reversed(free)}
    return next((lowered[c] for c in candidates if c in lowered), None)


def inspect_label_table(
    path: str | Path, *, label_column: str = "label", path_column: str | None = None
) -> LabelTableLayout:
    """Find a label table's columns from its header (CSV/TSV), first line (JSONL) or schema (parquet).

    Raises:
        FileNotFoundError: no such file.
        ValueError: another suffix, no data row, no ``label_column``, or no image column; the
            message lists the table's columns and the argument that fixes it.
    """
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise FileNotFoundError(f"label table {str(p)!r} does not exist; give a .csv/.tsv/.jsonl/.parquet file")
    suffix = ".parquet" if p.is_dir() else p.suffix.lower()
    if suffix not in LABEL_TABLE_SUFFIXES:
        raise ValueError(f"label table {str(p)!r} must end in {', '.join(LABEL_TABLE_SUFFIXES)}, not {suffix!r}")
    binary: list[str] = []
    delimiter = ","
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        from raylens.data.captions import parquet_files

        files = parquet_files(p)
        schema = pq.read_schema(files[0])
        present = list(schema.names)
        binary = [f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
        if sum(pq.ParquetFile(f).metadata.num_rows for f in files) == 0:
            raise ValueError(f"label table {str(p)!r} has no rows")
        fmt = "parquet"
    else:
        with p.open(newline="", encoding="utf-8") as f:
            head = f.readline()
            first = next((ln for ln in f if ln.strip()), None)
        if suffix in (".csv", ".tsv"):
            delimiter = "\t" if suffix == ".tsv" or head.count("\t") > head.count(",") else ","
            present = next(csv.reader([head], delimiter=delimiter), [])
            fmt = "csv"
        else:
            first, fmt = head if head.strip() else first, "jsonl"
            try:
                present = list(json.loads(first)) if first else []
            except (json.JSONDecodeError, TypeError):
                raise ValueError(f"{str(p)!r}: the first line is not a JSON object; each line must be one") from None
        if first is None:
            raise ValueError(f"label table {str(p)!r} has no data rows")
    if label_column not in present:
        raise ValueError(
            f"label table {str(p)!r} has no {label_column!r} column; it has {present}. "
            "Name the label column with label_column='YOUR_COLUMN' (--label-column)"
        )
    if path_column is not None and path_column not in present:
        raise ValueError(f"label table {str(p)!r} has no {path_column!r} column (path_column); it has {present}")
    bytes_column = _find(binary, BYTES_CANDIDATES) if binary else None
    # with embedded images a path only names the row in reports: a key column will do
    candidates = PATH_CANDIDATES + (("key", "__key__") if bytes_column else ())
    found = path_column or _find(present, candidates, exclude=[label_column, *binary])
    if found is None and bytes_column is None:
        raise ValueError(
            f"label table {str(p)!r} has no image column: none of {list(PATH_CANDIDATES)} matched; it has "
            f"{present}. Name it with path_column='YOUR_COLUMN' (--path-column)"
        )
    return LabelTableLayout(str(p), fmt, present, label_column, found, bytes_column, delimiter)


def read_label_columns(layout: LabelTableLayout) -> dict[str, list[str]]:
    """The table's ``label`` (as text) and ``path`` columns (paths resolved; ``row:<i>`` without one)."""
    from raylens.data.captions import parquet_files, resolve_image_path

    cols = [c for c in (layout.label_column, layout.path_column) if c]
    if layout.format == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.concat_tables([pq.read_table(f, columns=cols) for f in parquet_files(Path(layout.path))])
    elif layout.format == "csv":
        import pyarrow.csv as pacsv

        table = pacsv.read_csv(
            layout.path,
            parse_options=pacsv.ParseOptions(delimiter=layout.delimiter),
            convert_options=pacsv.ConvertOptions(include_columns=cols, column_types={c: "string" for c in cols}),
        )
    else:
        rows = [json.loads(ln) for ln in Path(layout.path).read_text(encoding="utf-8").splitlines() if ln.strip()]
        table = {c: [r.get(c) for r in rows] for c in cols}
    labels = [label_text(v) for v in _column(table, layout.label_column)]
    if layout.path_column:
        paths = [resolve_image_path(str(v), layout.base) for v in _column(table, layout.path_column)]
    else:
        paths = [f"{layout.path}#row:{i}" for i in range(len(labels))]
    return {"label": labels, "path": paths}


def _column(table, name: str) -> list:
    return list(table[name]) if isinstance(table, dict) else table.column(name).to_pylist()


def label_text(value) -> str:
    """A label as text: ``3`` and ``3.0`` both read ``"3"``; missing reads ``""``."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def class_list(labels: Iterable[str], classes: Sequence[str] | None = None) -> list[str]:
    """The class names: ``classes`` when given (checked), else the distinct labels sorted (numerically
    when every label is an integer, so ``"10"`` comes after ``"9"``).

    Raises:
        ValueError: fewer than 2 classes, repeated or empty names.
    """
    if classes is not None:
        out = [str(c).strip() for c in classes]
    else:
        distinct = {str(x) for x in labels if str(x) != ""}
        numeric = all(s.lstrip("-").isdigit() for s in distinct)
        out = sorted(distinct, key=(lambda s: (int(s), s)) if numeric else None)
    if len(out) < 2 or len(set(out)) != len(out) or any(not c for c in out):
        raise ValueError(f"a classifier needs 2 or more distinct, non-empty class names, got {out[:20]}")
    return out


def encode_labels(labels: Iterable[str], classes: Sequence[str]) -> np.ndarray:
    """Each label's index in ``classes``; -1 for a label outside the class list."""
    index = {c: i for i, c in enumerate(classes)}
    return np.asarray([index.get(str(x), -1) for x in labels], dtype=np.int64)


def in_validation(keys: Iterable[str], fraction: float, seed: int = 0) -> np.ndarray:
    """Which rows go to validation: a stable hash of each key (the image path) and ``seed`` against ``fraction``.

    The same key always lands on the same side, so train and validation never share an image, a
    resumed run splits as the first did, and the split does not depend on row order.

    >>> in_validation(["a.png", "b.png", "a.png"], 0.5).tolist()
    [False, True, False]
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    out = []
    for key in keys:
        h = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
        out.append(int.from_bytes(h, "little") / 2**64 < fraction)
    return np.asarray(out, dtype=bool)


def write_digits_folders(root: str | Path, *, image_size: int = 32, seed: int = 0) -> tuple[Path, Path]:
    """scikit-learn's digits as PNG class folders, upsampled (bicubic) to ``image_size``: ``root/train``
    (75%) and ``root/test`` (the 25% held out, stratified with ``seed``). Written once; an existing
    complete copy is reused. Returns the two folders."""
    from PIL import Image

    from raylens.data.digits import load_digits_split

    root = Path(root)
    done = root / f".complete-{image_size}-{seed}"
    parts = (root / "train", root / "test")
    if done.is_file():
        return parts
    for part, split in zip(parts, ("train", "heldout")):
        d = load_digits_split(split, seed=seed)
        for image, label, i in zip(d.images, d.labels, d.ids):
            folder = part / str(int(label))
            folder.mkdir(parents=True, exist_ok=True)
            big = Image.fromarray(image).resize((image_size, image_size), Image.Resampling.BICUBIC)
            big.save(folder / f"{int(i):04d}.png")
    done.write_text("ok")
    return parts
