"""Ray Data reader for captioned images: a captions file (CSV/TSV/JSONL/parquet) plus the images.

Streaming: the captions file is read by Ray Data, images are decoded and preprocessed in
``map_batches`` tasks, and bad rows are skipped and sent to an :class:`IngestReporter` (one actor per session), so
the job goes on and the report lists every skipped path with its reason. The reporter,
:class:`ActorReport` and :func:`decode_and_report` are shared with the other readers
(``ray_folders``, ``ray_webdataset``); every reader returns a :class:`~raylens.data.result.ReadResult`.
"""

from __future__ import annotations

import functools
import hashlib
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import ray

from raylens.data.captions import inspect_captions, parquet_files, parquet_rows, resolve_image_path
from raylens.data.decode import ImageTransform, decode_captioned_batch
from raylens.data.report import IngestReport, SkippedRow
from raylens.data.result import ReadResult

__all__ = [
    "IngestReporter",
    "IngestReports",
    "ActorReport",
    "read_captioned_images",
    "decode_and_report",
    "decoded",
    "blocks_for",
]


def _digest(path: str) -> bytes:
    return hashlib.blake2b(path.encode(), digest_size=8).digest()


class _Counts:
    """One read's ok/skip counts. A pass over the data may run more than once (one per epoch); rows are
    counted once each, keyed by a hash of their path. It also counts the passes over each row, which
    seed random transforms (a new draw each epoch, reproducibly)."""

    def __init__(self, source: str):
        self.source = source
        self.ok: set[bytes] = set()
        self.visits: dict[bytes, int] = {}
        self.skipped: dict[str, str] = {}

    def visit(self, paths: list[str]) -> list[int]:
        seen = []
        for d in map(_digest, paths):
            seen.append(self.visits.get(d, 0))
            self.visits[d] = seen[-1] + 1
        return seen

    def record(self, ok_paths: list[str], skipped: list[tuple[str, str]]) -> None:
        self.ok.update(map(_digest, ok_paths))
        for path, reason in skipped:
            self.skipped.setdefault(path, reason)

    def report(self) -> IngestReport:
        return IngestReport(self.source, len(self.ok), [SkippedRow(p, r) for p, r in self.skipped.items()])


@ray.remote(num_cpus=0)
class IngestReports:
    """Every read's counts in this Ray job, in one actor: started once per session (a reader then
    costs a method call, not an actor's process start-up)."""

    def __init__(self):
        self._reads: dict[str, _Counts] = {}

    def open(self, key: str, source: str) -> None:
        self._reads[key] = _Counts(source)

    def visit(self, key: str, paths: list[str]) -> list[int]:
        return self._reads[key].visit(paths)

    def record(self, key: str, ok_paths: list[str], skipped: list[tuple[str, str]]) -> None:
        self._reads[key].record(ok_paths, skipped)

    def report(self, key: str) -> IngestReport:
        return self._reads[key].report()

    def close(self, key: str) -> None:
        self._reads.pop(key, None)


class _Method:
    """``reporter.record.remote(...)``: one read's call on the session's :class:`IngestReports`."""

    def __init__(self, actor: ray.actor.ActorHandle, name: str, key: str):
        self._call = getattr(actor, name)
        self._key = key

    def remote(self, *args) -> ray.ObjectRef:
        return self._call.remote(self._key, *args)


class IngestReporter:
    """One read's reporter, called like an actor: ``visit.remote(paths)`` (passes over each row so far),
    ``record.remote(ok_paths, skipped)`` and ``report.remote()``; its counts live in the session's
    :class:`IngestReports` actor. Picklable, so decode tasks get it as an argument."""

    ACTOR_NAME = "raylens-ingest-reports"

    def __init__(self, source: str):
        self.actor = _session_actor(self.ACTOR_NAME)
        self.key = uuid.uuid4().hex
        ray.get(self.actor.open.remote(self.key, source))

    @property
    def visit(self) -> _Method:
        return _Method(self.actor, "visit", self.key)

    @property
    def record(self) -> _Method:
        return _Method(self.actor, "record", self.key)

    @property
    def report(self) -> _Method:
        return _Method(self.actor, "report", self.key)


_SESSION_ACTORS: dict[str, ray.actor.ActorHandle] = {}


def _session_actor(name: str) -> ray.actor.ActorHandle:
    """The session's :class:`IngestReports`, its first handle kept for the life of this process's Ray
    connection. A named actor dies when its creator's handles are gone, even while handles got by
    name (``get_if_exists``) are in use; so the handle that created it must never be dropped."""
    key = ray.get_runtime_context().get_worker_id()  # new on every ray.init
    actor = _SESSION_ACTORS.get(key)
    if actor is None:
        _SESSION_ACTORS.clear()  # handles of an earlier, shut-down session
        actor = _SESSION_ACTORS[key] = IngestReports.options(name=name, get_if_exists=True).remote()
    return actor


class ActorReport:
    """``ReadResult.reporter`` for the streaming readers: asks their :class:`IngestReporter`; the
    read's counts are dropped from the session's actor when this is garbage-collected."""

    def __init__(self, reporter: IngestReporter):
        self.reporter = reporter
        close = weakref.finalize(self, _close, reporter.actor, reporter.key)
        close.atexit = False

    def __call__(self) -> IngestReport:
        return ray.get(self.reporter.report.remote())


def _close(actor: ray.actor.ActorHandle, key: str) -> None:
    try:
        actor.close.remote(key)
    except Exception:  # Ray already shut down: the actor and its counts are gone anyway
        pass


def _select_split(batch: dict[str, np.ndarray], *, split: str) -> dict[str, np.ndarray]:
    keep = np.asarray([str(s) == split for s in batch["split"]], dtype=bool)
    return {k: np.asarray(v)[keep] for k, v in batch.items()}


def decode_and_report(
    batch: dict[str, np.ndarray], *, preprocess: ImageTransform, reporter, root: str | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """:func:`decode_captioned_batch` inside a Ray task: skips and ok rows go to ``reporter``, and
    keyed (random) transforms get each row's pass count as its epoch. Yields the decoded batch
    unless every row was skipped (an empty tensor column does not convert to Arrow). ``root``: read
    image files only inside this directory."""
    paths = [str(p) for p in batch["path"]]
    epochs = ray.get(reporter.visit.remote(paths)) if getattr(preprocess, "keyed", False) else None
    out, skipped = decode_captioned_batch(batch, preprocess, epochs=epochs, root=root)
    ray.get(reporter.record.remote([str(p) for p in out["path"]], [(s.path, s.reason) for s in skipped]))
    if len(out["path"]):
        yield out


def _decode_udf(
    batch: dict[str, np.ndarray], *, preprocess: ImageTransform, base: str, reporter, root: str | None = None
) -> Iterator[dict[str, np.ndarray]]:
    batch["path"] = np.asarray([resolve_image_path(p, base) for p in map(str, batch["path"])])
    yield from decode_and_report(batch, preprocess=preprocess, reporter=reporter, root=root)


def decoded(
    rows_in: Callable[[int], ray.data.Dataset],
    fn,
    *,
    batch_size: int,
    rows_estimate: float | None = None,
    blocks: int | None = None,
    **kwargs,
) -> dict:
    """The ``dataset``, ``rows``, ``rows_in``, ``decode`` and ``rows_estimate`` fields of a
    :class:`~raylens.data.result.ReadResult`: ``rows_in(blocks)`` (default: about one block per
    ``batch_size`` rows, :func:`blocks_for`) mapped through ``fn(batch, **kwargs)`` in batches of
    ``batch_size``."""
    decode = functools.partial(fn, **kwargs)
    rows = rows_in(blocks or blocks_for(rows_estimate or 0, batch_size))
    return {
        "dataset": rows.map_batches(decode, batch_size=batch_size, batch_format="numpy"),
        "rows": rows,
        "rows_in": rows_in,
        "decode": decode,
        "rows_estimate": None if rows_estimate is None else int(rows_estimate),
    }


def blocks_for(rows: float, batch_size: int) -> int:
    """About one read block per ``batch_size`` rows, so decoded tensors stream downstream batch by
    batch instead of piling up in one huge block."""
    return int(min(4096, max(1, rows // batch_size + 1)))


def _estimate_rows(path: Path) -> float:
    """Rows of a text captions file, from its size and its first lines."""
    with path.open("rb") as f:
        head = f.read(1 << 16)
    lines = max(1, head.count(b"\n"))
    return path.stat().st_size / (len(head) / lines)


def read_captioned_images(
    captions: str | Path,
    preprocess: ImageTransform,
    *,
    columns: Mapping[str, str] | None = None,
    split: str | None = None,
    batch_size: int = 128,
    override_num_blocks: int | None = None,
    image_root: str | Path | None = None,
) -> ReadResult:
    """Read a captions file and its images as a streaming Ray dataset.

    Args:
        captions: a ``.csv``/``.tsv``, ``.jsonl`` or ``.parquet`` file (or a folder of parquet files)
            naming each image (paths relative to the file's folder, absolute, or ``file://``) with a
            caption. Parquet may embed the images in a binary column, decoded instead of reading the
            path (which then only names the row in the report).
        preprocess: the model's preprocessing (``model.preprocess``), or a
            :class:`~raylens.data.augment.TrainAugment` for training.
        columns: which of the file's columns fills each role, e.g. ``{"path": "url", "caption":
            "text"}``; roles left out are found by name (see :mod:`raylens.data.captions`).
        split: keep only rows with this ``split`` value.
        batch_size: rows per decode task batch.
        override_num_blocks: read blocks (default: about one per ``batch_size`` rows).
        image_root: read image files only inside this directory (e.g. the captions file's folder): a
            row naming a file elsewhere (``../``, an absolute path, a symbolic link out) is a skipped row.
            Default None: any local regular file the table names (each still at most 256 MiB).

    Returns:
        A :class:`~raylens.data.result.ReadResult`; rows: ``image`` (3, S, S) float32, ``path``,
        ``caption`` and the file's other columns (mapped ones under their role's name).

    Raises:
        FileNotFoundError, ValueError: missing file, wrong format or columns that fill no role
            (the message lists the file's columns), checked here, before any task runs.
    """
    layout = inspect_captions(captions, columns)
    path = Path(layout.path)
    if image_root is not None and not Path(image_root).is_dir():
        raise NotADirectoryError(
            f"image_root {str(image_root)!r} is not a directory; pass the folder holding the images"
        )
    root = None if image_root is None else str(Path(image_root).resolve())
    if split is not None and "split" not in layout.roles and "split" not in layout.columns:
        raise ValueError(f"split={split!r} was asked for but {str(path)!r} has no 'split' column")
    is_parquet = layout.format == "parquet"
    files = parquet_files(path) if is_parquet else [path]
    estimate = parquet_rows(files) if is_parquet else _estimate_rows(path)
    reporter = IngestReporter(str(path))

    def rows_in(blocks: int) -> ray.data.Dataset:
        if is_parquet:
            ds = ray.data.read_parquet([str(f) for f in files], override_num_blocks=blocks)
        elif layout.format == "csv":
            import pyarrow.csv as pacsv

            # every column as string: a caption like "7" must stay text
            convert = pacsv.ConvertOptions(column_types={c: "string" for c in layout.columns})
            parse = pacsv.ParseOptions(delimiter=layout.delimiter)
            ds = ray.data.read_csv(str(path), convert_options=convert, parse_options=parse, override_num_blocks=blocks)
        else:
            ds = ray.data.read_json(str(path), lines=True, override_num_blocks=blocks)
        if layout.displaced:
            ds = ds.drop_columns(layout.displaced)
        if layout.renames:
            ds = ds.rename_columns(layout.renames)
        if split is not None:  # before decoding, so no image tensor column is ever empty
            ds = ds.map_batches(_select_split, batch_format="numpy", fn_kwargs={"split": split})
        return ds

    parts = decoded(
        rows_in,
        _decode_udf,
        batch_size=batch_size,
        rows_estimate=estimate,
        blocks=override_num_blocks,
        preprocess=preprocess,
        base=str(path if path.is_dir() else path.parent),
        reporter=reporter,
        root=root,
    )
    return ReadResult(name=str(path), reporter=ActorReport(reporter), **parts)
