"""Ray Data reader of labelled images for classification: class folders or a label table, one class list.

:func:`read_labelled_images` lists the data first (folder tree, or the table's label and path
columns: no image is opened), fixes the class list, splits off validation rows by a hash of their
path, and only then decodes, in streaming ``map_batches`` tasks. Nothing bad stops the job; each
of these is skipped and listed in the report with its path and reason:

* a label outside the class list (a table row, or a whole class folder of a validation set);
* an image that does not decode (or a file that is not an image, or is missing).

A class folder with no images is an error before any task runs (``allow_empty=True`` keeps the class).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray

from raylens.data.captions import parquet_files
from raylens.data.decode import ImageTransform, decode_captioned_batch
from raylens.data.folders import list_image_folder
from raylens.data.labelled import (
    class_list,
    encode_labels,
    in_validation,
    inspect_label_table,
    is_label_table,
    label_text,
    read_label_columns,
)
from raylens.data.ray_reader import ActorReport, IngestReporter, blocks_for
from raylens.data.result import ReadResult

__all__ = ["LabelledRead", "read_labelled_images", "PARTS"]

PARTS = ("all", "train", "val")
"""Which rows to read: all of them, or the training or validation side of the hash split."""
_COLUMNS = ("image", "path", "label", "class_name")


@dataclass
class LabelledRead(ReadResult):
    """A :class:`~raylens.data.result.ReadResult` of labelled images, with what is known before decoding."""

    class_counts: list[int] = field(default_factory=list)
    """Rows per class (``class_counts[label]``) in the part read, before decoding."""
    rows: int = 0
    """Rows in the part read, before decoding (those that fail to decode are skipped later)."""


def _decode_labelled(
    batch: dict[str, np.ndarray], *, preprocess: ImageTransform, reporter
) -> Iterator[dict[str, np.ndarray]]:
    """Decode one batch of labelled rows (``path``, ``label``, ``class_name``, maybe ``image_bytes``)."""
    paths = [str(p) for p in batch["path"]]
    epochs = ray.get(reporter.visit.remote(paths)) if getattr(preprocess, "keyed", False) else None
    out, skipped = decode_captioned_batch(batch, preprocess, require_caption=False, epochs=epochs)
    ray.get(reporter.record.remote([str(p) for p in out["path"]], [(s.path, s.reason) for s in skipped]))
    if len(out["path"]):
        yield {k: out[k] for k in _COLUMNS}


def _select_table_rows(
    batch: dict[str, np.ndarray],
    *,
    classes: list[str],
    label_column: str,
    path_column: str,
    bytes_column: str,
    part: str,
    val_fraction: float,
    seed: int,
) -> dict[str, np.ndarray]:
    """Embedded-bytes parquet rows of the class list and of ``part``, before any decoding."""
    labels = [label_text(v) for v in batch[label_column]]
    paths = [str(p) for p in batch[path_column]]
    index = encode_labels(labels, classes)
    keep = index >= 0
    if part != "all":
        val = in_validation(paths, val_fraction, seed)
        keep &= val if part == "val" else ~val
    return {
        "path": np.asarray(paths, dtype=object)[keep],
        "image_bytes": np.asarray(batch[bytes_column], dtype=object)[keep],
        "label": index[keep],
        "class_name": np.asarray([classes[i] for i in index[keep]], dtype=object),
    }


def _listing(
    spec: Path, classes: Sequence[str] | None, label_column: str, path_column: str | None, allow_empty: bool
) -> tuple[dict[str, list], list[str], list[tuple[str, str]], Any]:
    """Rows (path, label text), the class list, rows skipped already, and the table layout (None: a folder)."""
    if spec.is_dir() and not is_label_table(spec):
        listing = list_image_folder(spec, allow_empty=allow_empty)
        rows = {"path": listing.rows["path"], "label": listing.rows["class_name"]}
        return rows, class_list(listing.classes, classes), [(s.path, s.reason) for s in listing.skipped], None
    layout = inspect_label_table(spec, label_column=label_column, path_column=path_column)
    if layout.bytes_column is not None and layout.path_column is None:
        raise ValueError(
            f"label table {layout.path!r} embeds images but has no column naming each row (path, key or url); "
            "add one, or name it with path_column='YOUR_COLUMN'"
        )
    rows = read_label_columns(layout)
    return rows, class_list(rows["label"], classes), [], layout


def read_labelled_images(
    spec: str | Path,
    preprocess: ImageTransform,
    *,
    classes: Sequence[str] | None = None,
    part: str = "all",
    val_fraction: float = 0.0,
    seed: int = 0,
    label_column: str = "label",
    path_column: str | None = None,
    allow_empty: bool = False,
    batch_size: int = 128,
) -> LabelledRead:
    """Read labelled images (class folders or a label table) as a streaming Ray dataset.

    Args:
        spec: a folder of class subfolders (``root/<class>/<image>``), or a label table
            (``.csv``/``.tsv``/``.jsonl``/``.parquet``, see :mod:`raylens.data.labelled`).
        preprocess: ``ClipPreprocess`` (eval) or a ``TrainAugment`` (train; new draws every epoch).
        classes: the class list (a validation set takes the training set's); default: the folder
            names, or the table's distinct labels, sorted. Rows of other classes are skipped and reported.
        part: ``all``, or the ``train``/``val`` side of the split by a hash of each image's path.
        val_fraction: the share of rows on the ``val`` side.
        seed: seed of the split.
        label_column: a table's label column.
        path_column: a table's image column (default: found by name: path, filepath, image, url, ...).
        allow_empty: allow class folders without images.
        batch_size: rows per decode task batch.

    Returns:
        A :class:`LabelledRead`: rows ``image`` (3, S, S) float32, ``path``, ``label`` (index into
        ``classes``), ``class_name``; ``class_counts`` and ``rows`` of the part, known before decoding.

    Raises:
        FileNotFoundError, ValueError: no such data, a class folder without images, a table
            without its label or image column, fewer than 2 classes; all before any task runs.
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    if part != "all" and not 0 < val_fraction < 1:
        raise ValueError(f"part={part!r} needs val_fraction in (0, 1), got {val_fraction}")
    path = Path(spec).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(
            f"labelled data {str(path)!r} does not exist; give a folder of class subfolders or a label table "
            "(.csv/.tsv/.jsonl/.parquet with a label column)"
        )
    rows, names, skipped, layout = _listing(path, classes, label_column, path_column, allow_empty)
    index = encode_labels(rows["label"], names)
    outside = np.flatnonzero(index < 0)
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    skipped += [(rows["path"][i], f"label {rows['label'][i]!r} is not in the class list ({shown})") for i in outside]
    keep = index >= 0
    if part != "all":
        val = in_validation(rows["path"], val_fraction, seed)
        keep &= val if part == "val" else ~val
    n = int(keep.sum())
    counts = np.bincount(index[keep], minlength=len(names)).tolist()
    if n == 0:
        raise ValueError(f"{str(path)!r} ({part}) has no rows of the classes {shown}; nothing to read")
    reporter = IngestReporter(str(path))
    ray.get(reporter.record.remote([], skipped))
    decode = {"preprocess": preprocess, "reporter": reporter}
    if layout is not None and layout.bytes_column is not None:
        files = [str(f) for f in parquet_files(Path(layout.path))]
        ds = (
            ray.data.read_parquet(files, override_num_blocks=blocks_for(n, batch_size))
            .select_columns([layout.bytes_column, layout.label_column, layout.path_column])  # read only these
            .map_batches(
                _select_table_rows,
                batch_format="numpy",
                fn_kwargs={
                    "classes": names,
                    "label_column": layout.label_column,
                    "path_column": layout.path_column,
                    "bytes_column": layout.bytes_column,
                    "part": part,
                    "val_fraction": val_fraction,
                    "seed": seed,
                },
            )
        )
    else:
        # listings come class by class: shuffle (seeded) so every worker's shard holds every class
        chosen = np.random.default_rng(seed).permutation(np.flatnonzero(keep))
        items = [{"path": rows["path"][i], "label": int(index[i]), "class_name": names[index[i]]} for i in chosen]
        ds = ray.data.from_items(items, override_num_blocks=blocks_for(n, batch_size))
    ds = ds.map_batches(_decode_labelled, batch_size=batch_size, batch_format="numpy", fn_kwargs=decode)
    name = str(path) if part == "all" else f"{path} ({part})"
    return LabelledRead(ds, name, ActorReport(reporter), classes=names, class_counts=counts, rows=n, stats={"rows": n})
