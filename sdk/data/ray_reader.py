"""Ray Data reader for captioned images: a captions file (CSV/JSONL) plus the image files.

Streaming: the captions file is read by Ray Data, images are decoded and preprocessed in
``map_batches`` tasks, and bad rows are skipped and sent to an :class:`IngestReporter` actor, so
the job goes on and the report lists every skipped path with its reason.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray

from raylens.data.captions import caption_columns
from raylens.data.decode import decode_captioned_batch
from raylens.data.images import ClipPreprocess
from raylens.data.report import IngestReport, SkippedRow

__all__ = ["IngestReporter", "CaptionedImages", "read_captioned_images"]


@ray.remote(num_cpus=0)
class IngestReporter:
    """Collects ok/skip counts from the decode tasks. A pass over the data may run more than once
    (one per epoch); rows are counted once each, keyed by a hash of their path."""

    def __init__(self, source: str):
        self._source = source
        self._ok: set[bytes] = set()
        self._skipped: dict[str, str] = {}

    def record(self, ok_paths: list[str], skipped: list[tuple[str, str]]) -> None:
        self._ok.update(hashlib.blake2b(p.encode(), digest_size=8).digest() for p in ok_paths)
        for path, reason in skipped:
            self._skipped.setdefault(path, reason)

    def report(self) -> IngestReport:
        return IngestReport(self._source, len(self._ok), [SkippedRow(p, r) for p, r in self._skipped.items()])


def _select_split(batch: dict[str, np.ndarray], *, split: str) -> dict[str, np.ndarray]:
    keep = np.asarray([str(s) == split for s in batch["split"]], dtype=bool)
    return {k: np.asarray(v)[keep] for k, v in batch.items()}


def _decode_udf(batch: dict[str, np.ndarray], *, preprocess: ClipPreprocess, base: str,
                reporter) -> dict[str, np.ndarray]:
    batch["path"] = np.asarray([p if Path(p).is_absolute() else str(Path(base) / p) for p in map(str, batch["path"])])
    out, skipped = decode_captioned_batch(batch, preprocess)
    ray.get(reporter.record.remote([str(p) for p in out["path"]], [(s.path, s.reason) for s in skipped]))
    return out


def _blocks_for(path: Path, batch_size: int) -> int:
    """About one read block per ``batch_size`` rows (from the file size and its first lines), so
    decoded tensors stream downstream batch by batch instead of piling up in one huge block."""
    with path.open("rb") as f:
        head = f.read(1 << 16)
    lines = max(1, head.count(b"\n"))
    rows = path.stat().st_size / (len(head) / lines)
    return int(min(4096, max(1, rows // batch_size + 1)))


@dataclass
class CaptionedImages:
    """A lazy Ray dataset of preprocessed captioned images, and the reporter of its skipped rows."""

    dataset: "ray.data.Dataset"
    """Rows: ``image`` (3, S, S) float32, ``path``, ``caption`` and the captions file's other columns."""
    reporter: "ray.actor.ActorHandle"
    source: str

    def report(self) -> IngestReport:
        """The ingest report so far (complete once the dataset has been consumed)."""
        return ray.get(self.reporter.report.remote())


def read_captioned_images(
    captions: str | Path,
    preprocess: ClipPreprocess,
    *,
    split: str | None = None,
    batch_size: int = 128,
    override_num_blocks: int | None = None,
) -> CaptionedImages:
    """Read a captions file and its images as a streaming Ray dataset.

    Args:
        captions: a ``.csv`` or ``.jsonl`` file with columns ``path`` and ``caption`` (paths relative
            to the file's folder, or absolute).
        preprocess: the model's preprocessing (``model.preprocess``).
        split: keep only rows with this ``split`` value.
        batch_size: rows per decode task batch.

    Raises:
        FileNotFoundError, ValueError: missing file, wrong format or missing columns, checked here,
            before any task runs.
    """
    path = Path(captions).resolve()
    columns = caption_columns(path)
    override_num_blocks = override_num_blocks or _blocks_for(path, batch_size)
    if split is not None and "split" not in columns:
        raise ValueError(f"split={split!r} was asked for but {str(path)!r} has no 'split' column")
    if path.suffix.lower() == ".csv":
        import pyarrow.csv as pacsv

        # every column as string: a caption like "7" must stay text
        convert = pacsv.ConvertOptions(column_types={c: "string" for c in columns})
        ds = ray.data.read_csv(str(path), convert_options=convert, override_num_blocks=override_num_blocks)
    else:
        ds = ray.data.read_json(str(path), lines=True, override_num_blocks=override_num_blocks)
    reporter = IngestReporter.remote(str(path))
    if split is not None:  # before decoding, so no image tensor column is ever empty
        ds = ds.map_batches(_select_split, batch_format="numpy", fn_kwargs={"split": split})
    ds = ds.map_batches(
        _decode_udf,
        batch_size=batch_size,
        batch_format="numpy",
        fn_kwargs={"preprocess": preprocess, "base": str(path.parent), "reporter": reporter},
    )
    return CaptionedImages(ds, reporter, str(path))
