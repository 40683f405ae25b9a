"""Ray glue for DICOM: a reader (one row per series), MONAI normalisation, and CT+MR pairing.

Only glue lives here; every step calls a plain function of this pack:

1. the driver lists the files (:func:`~.dicom_scan.list_dicom_files`, folders or a DICOMDIR);
2. Ray tasks read the headers without pixel data, pseudonymising ids on the worker
   (:func:`~.dicom_scan.read_header`); unreadable files become report entries;
3. the driver groups the (small, PHI-free) header records by pseudonymised SeriesInstanceUID;
4. Ray tasks build one volume per series (:func:`~.ingest.load_series_row`: check, sort by
   position along the normal, decode, modality LUT, geometry), one Ray Data block per task (or
   ``map_batches`` on the caller's ``compute`` strategy); bad series become report entries;
5. the blocks are the dataset (materialised, so the report is complete); the good series rows are
   returned as a :class:`~raylens.data.result.ReadResult`, the result type of every raylens reader.

Steps 2 and 4 are plain tasks, not Ray Data jobs: on a pass of a few seconds a Ray Data (2.60) job's
start-up ramp and per-task scheduling (~0.1-0.2 s a task) cost as much as the work.

Normalisation happens once per volume, either while reading (``read_dicom(transform=...)``) or
later (:func:`normalize_dataset`, or :func:`fusion_dataset` on raw pairs); rows say which
(``normalization``), and a second normalisation is refused or skipped (see :mod:`.transforms`).

On Ray with a DICOM folder (skipped as a doctest: it needs both):

>>> from raylens_domains.medical import DicomIngestConfig, DeidConfig   # doctest: +SKIP
>>> result = read_dicom("/data/dicom", DicomIngestConfig(deid=DeidConfig(key=...)))  # doctest: +SKIP
>>> result.report().summary(); ds = normalize_dataset(result.dataset)   # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from raylens.data.report import IngestReport, SkippedRow
from raylens.data.result import FixedReport, ReadResult

from .dicom_scan import SliceHeader, list_dicom_files, read_header
from .errors import DicomError
from .geometry import VolumeGeometry
from .ingest import DicomIngestConfig, load_series_row, series_skip_path
from .pairing import pair_group
from .transforms import FusionInputsd, NormalizeVolumed, VolumeTransformConfig
from .volume import ROW_COLUMNS

__all__ = ["read_dicom", "normalize_dataset", "pair_dataset", "fusion_dataset"]

log = logging.getLogger(__name__)
_SKIP = ("skip_path", "skip_reason")


def _header_batch(batch: dict[str, np.ndarray], config: DicomIngestConfig) -> dict[str, np.ndarray]:
    pseudo = config.deid.pseudonymizer()
    headers, skips = [], []
    for path in batch["path"]:
        try:
            headers.extend(
                h.to_dict()
                for h in read_header(
                    str(path), pseudo, labels=config.labels, label_key=config.label_key, max_voxels=config.max_voxels
                )
            )
        except DicomError as e:
            skips.append((config.deid.report_path(str(path)), str(e)))
    # one JSON string per record keeps the schema trivial (optional/None fields, tuples); the series
    # column lets the driver group without parsing the records
    recs = [json.dumps(h) for h in headers] + [json.dumps({"skip_path": p, "skip_reason": r}) for p, r in skips]
    series = [h["series_uid"] for h in headers] + [""] * len(skips)
    return {"series_uid": np.asarray(series, dtype=object), "record": np.asarray(recs, dtype=object)}


def _series_batch(
    batch: dict[str, np.ndarray], config: DicomIngestConfig, transform: VolumeTransformConfig | None = None
) -> dict[str, np.ndarray]:
    normalize = NormalizeVolumed(transform) if transform is not None else None
    rows = []
    for payload in batch["headers"]:
        headers = [SliceHeader.from_dict(d) for d in json.loads(payload)]
        try:
            row = load_series_row(headers, config)
            if normalize is not None:
                row = normalize.row(row)
            row.update(skip_path="", skip_reason="")
        except Exception as e:  # one bad series is a skipped row with a reason; the ingest goes on
            # a DicomError's message is ours; anything else may quote header values (PHI): its type only
            reason = str(e) if isinstance(e, DicomError) else f"unexpected error in this series ({type(e).__name__})"
            row = _empty_row(headers[0])
            row.update(skip_path=series_skip_path(headers, config.deid), skip_reason=reason)
        rows.append(row)
    out: dict[str, np.ndarray] = {}
    for c in (*ROW_COLUMNS, *_SKIP):
        vals = [r[c] for r in rows]
        if c == "volume":
            arr = np.empty(len(vals), dtype=object)
            arr[:] = vals
            out[c] = arr if len({v.shape for v in vals}) > 1 else np.stack(vals)
        elif isinstance(vals[0], np.ndarray):
            out[c] = np.stack(vals)
        else:
            out[c] = np.asarray(vals)
    return out


def _series_block(headers: list[str], config: DicomIngestConfig, transform: VolumeTransformConfig | None):
    """:func:`_series_batch` over these series' JSON header lists: ``(block, [(skip_path, skip_reason)])``,
    one Ray Data block and its rows' status (two returns: the driver reads the status without the block)."""
    from ray.data.block import BlockAccessor

    batch = {"headers": np.asarray(headers, dtype=object)}
    block = BlockAccessor.batch_to_block(_series_batch(batch, config, transform))
    return block, _skip_rows_impl(block)


def _empty_row(h: SliceHeader) -> dict[str, Any]:
    return {
        "volume": np.zeros((1, 1, 1), np.float32),
        "geometry": VolumeGeometry((1, 1, 1), (0, 0, 0), np.eye(3), (1, 1, 1)).to_dict(),
        "modality": h.modality,
        "study_uid": h.study_uid,
        "series_uid": h.series_uid,
        "patient_id": h.patient_id,
        "frame_of_reference_uid": h.frame_of_reference_uid,
        "label": -1,
        "n_slices": 0,
        "warnings": "",
        "transfer_syntax": h.transfer_syntax,
        "normalization": "",
    }


def read_dicom(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    config: DicomIngestConfig | None = None,
    *,
    files_per_task: int = 64,
    series_per_task: int | None = None,
    num_cpus: float = 1.0,
    compute=None,
    transform: VolumeTransformConfig | None = None,
) -> ReadResult:
    """Read DICOM folders / files / DICOMDIRs into a Ray Dataset with one de-identified row per series.

    Args:
        paths: folders, files or DICOMDIR files.
        config: de-identification key, labels, tolerances (:class:`~.ingest.DicomIngestConfig`).
        files_per_task: the fewest files one header-reading task gets (the files are split into at most
            2 tasks per CPU, so a big folder gives each task more).
        series_per_task: series built per ``map_batches`` call; by default (None) one raw volume at a time
            (raw volumes can be large) and, with ``transform``, as many as a block holds up to
            :data:`NORMALIZED_SERIES_PER_CALL` (normalised volumes are small, and each call costs a
            conversion of its rows to and from Arrow: ~5 ms, as much as normalising a small series).
        num_cpus: CPUs reserved per task.
        compute: a ``ray.data.ActorPoolStrategy``/``TaskPoolStrategy`` for the volume step (default tasks).
        transform: if given, each volume is also normalised (:class:`~.transforms.NormalizeVolumed`) in
            the same task, which saves a pass over the data; otherwise call :func:`normalize_dataset`
            (or pair raw rows and let :func:`fusion_dataset` normalise). Never both: the rows record it.

    Returns:
        A :class:`~raylens.data.result.ReadResult`: ``dataset`` holds the good series, one row each
        (columns: :data:`~.volume.ROW_COLUMNS`), read from the materialised ingest (iterating it does
        not decode again); ``report()`` is complete (files and series skipped, with path and reason);
        ``stats`` counts the ``files`` listed and the ``slices`` of readable headers.
    """
    import ray
    from ray.data.expressions import col

    config = config or DicomIngestConfig()
    if files_per_task < 1 or (series_per_task is not None and series_per_task < 1):
        raise ValueError("files_per_task and series_per_task must be >= 1")
    files = list_dicom_files(paths)
    source = config.deid.report_path(paths) if isinstance(paths, (str, os.PathLike)) else "dicom files"
    report = IngestReport(source=source)
    if not files:
        return ReadResult(ray.data.from_items([]), source, FixedReport(report), stats={"files": 0, "slices": 0})

    # The header pass is a gather (the driver groups slices into series), so it runs as plain Ray
    # tasks: a Ray Data job would add its start-up ramp and per-task scheduling (~0.1-0.2 s each in
    # Ray 2.60) to a pass that takes seconds. Chunks of at least ``files_per_task`` files, at most 2 per CPU.
    n_chunks = max(1, min(-(-len(files) // files_per_task), 2 * _cluster_cpus()))
    header_task = ray.remote(num_cpus=num_cpus)(_header_batch)
    chunks = [c for c in np.array_split(np.asarray(files, dtype=object), n_chunks) if len(c)]
    groups: dict[str, list[str]] = {}  # series uid (pseudonymised) -> its JSON header records
    n_slices = 0
    for out in ray.get([header_task.remote({"path": c}, config) for c in chunks]):
        for uid, record in zip(out["series_uid"], out["record"]):
            if uid:
                groups.setdefault(uid, []).append(record)
                n_slices += 1
            else:
                d = json.loads(record)
                report.skipped.append(SkippedRow(d["skip_path"], d["skip_reason"]))
    if not groups:
        stats = {"files": len(files), "slices": 0}
        return ReadResult(ray.data.from_items([]), source, FixedReport(report), stats=stats)

    # biggest series first, so the longest tasks start early
    items = [
        {"series_uid": uid, "headers": "[" + ",".join(recs) + "]"}
        for uid, recs in sorted(groups.items(), key=lambda kv: -len(kv[1]))
    ]
    n_series_blocks = max(1, min(len(items), 2 * _cluster_cpus()))
    if series_per_task is None:
        series_per_task = series_batch_size(len(items), n_series_blocks, normalized=transform is not None)
    if compute is not None:  # the caller's actor pool (or task strategy) through Ray Data
        ds = _one_operator(
            ray.data.from_items(items, override_num_blocks=n_series_blocks).map_batches(
                _series_batch,
                num_cpus=num_cpus,
                compute=compute,
                fn_kwargs={"config": config, "transform": transform},
                batch_size=series_per_task,
                batch_format="numpy",
            )
        ).materialize()
        # the skip columns straight from the blocks (plain tasks: no second Data job)
        skip_rows = ray.remote(num_cpus=0.25)(_skip_rows_impl)
        status_refs = [skip_rows.remote(ref) for ref in ds.to_arrow_refs()]
    else:  # plain Ray tasks, one block each, biggest series first (see the header pass); each task also
        # returns its rows' status, so no further task (nor worker process) is needed to read it
        series_task = ray.remote(num_cpus=num_cpus, num_returns=2)(_series_block)
        refs, status_refs = [], []
        for i in range(0, len(items), series_per_task):
            block, status = series_task.remote(
                [it["headers"] for it in items[i : i + series_per_task]], config, transform
            )
            refs.append(block)
            status_refs.append(status)
        ds = ray.data.from_arrow_refs(refs)
    status = [r for part in ray.get(status_refs) for r in part]
    for path, reason in status:
        if reason:
            report.skipped.append(SkippedRow(path, reason))
    report.n_ok = sum(1 for _, reason in status if not reason)
    good = ds.filter(expr=col("skip_reason") == "").drop_columns(list(_SKIP))
    log.info(report.summary())
    return ReadResult(good, source, FixedReport(report), stats={"files": len(files), "slices": n_slices})


NORMALIZED_SERIES_PER_CALL = 8
"""The most normalised series one ``map_batches`` call builds by default (see :func:`series_batch_size`)."""


def series_batch_size(n_series: int, n_blocks: int, *, normalized: bool) -> int:
    """Series per ``map_batches`` call of the volume step: 1 for raw volumes; with normalisation, the
    series of the smallest block, at most :data:`NORMALIZED_SERIES_PER_CALL`.

    Never more than the smallest block holds: Ray Data bundles blocks to fill a bigger batch, which
    would run fewer tasks than there are blocks (and CPUs).
    """
    if not normalized:
        return 1
    return max(1, min(NORMALIZED_SERIES_PER_CALL, n_series // max(1, n_blocks)))


def _one_operator(ds):
    """Let this single-operator pipeline use every CPU.

    Ray Data reserves part of the cluster per operator (``op_resource_reservation_ratio``) so that
    chained operators cannot starve each other. For a pipeline that is one fused ``from_items ->
    map_batches`` there is nothing to starve, and on a small cluster the reservation halves the
    parallelism (on 2 CPUs the tasks ran one at a time). Only this dataset's context is changed.
    """
    ds.context.op_resource_reservation_enabled = False
    return ds


def _skip_rows_impl(table) -> list[tuple[str, str]]:
    cols = table.select(list(_SKIP)).to_pydict()
    return list(zip(cols["skip_path"], cols["skip_reason"]))


def _cluster_cpus() -> int:
    import ray

    try:
        return max(1, int(ray.cluster_resources().get("CPU", 1)))
    except Exception:  # pragma: no cover - ray not initialised yet
        return os.cpu_count() or 1


def normalize_dataset(ds, config: VolumeTransformConfig | None = None, *, batch_size: int = 4, compute=None):
    """``map_batches`` of :class:`~.transforms.NormalizeVolumed`: RAS, target spacing, window/norm, fixed shape.

    The MONAI pipelines are built once per worker: in tasks (the default) through the per-process
    cache, with ``compute=ray.data.ActorPoolStrategy(...)`` once per actor (Ray Data builds the class).
    Rows normalised already (``read_dicom(transform=...)``) are refused.
    """
    config = config or VolumeTransformConfig()
    if compute is None:
        return ds.map_batches(NormalizeVolumed(config), batch_size=batch_size, batch_format="numpy")
    return ds.map_batches(
        NormalizeVolumed,
        fn_constructor_kwargs={"config": config},
        batch_size=batch_size,
        batch_format="numpy",
        compute=compute,
    )


def _pair_batch(batch: dict[str, np.ndarray], by: str) -> dict[str, np.ndarray]:
    n = len(batch["series_uid"])
    rows = [{k: batch[k][i] for k in batch} for i in range(n)]
    row, _notes = pair_group(rows, by=by)
    if row is None:
        return {}
    out = {}
    for k, v in row.items():
        if isinstance(v, np.ndarray):
            out[k] = v[None]
        else:
            out[k] = np.asarray([v])
    return out


def pair_dataset(ds, *, by: str = "study"):
    """Group series rows by study (or patient) and join CT and MR into one row (:mod:`.pairing`)."""
    from .pairing import PAIR_BY

    if by not in PAIR_BY:
        raise ValueError(f"by must be one of {PAIR_BY}, got {by!r}")
    key = "study_uid" if by == "study" else "patient_id"
    return ds.groupby(key).map_groups(_pair_batch, fn_kwargs={"by": by}, batch_format="numpy")


def fusion_dataset(paired_ds, config: VolumeTransformConfig | None = None, *, batch_size: int = 4):
    """Paired rows -> model-ready rows (``ct``, ``mr_aligned``, ``mr``, ``present``, ``label``).

    Raw pairs are normalised here; pairs of series normalised at read time (with the same ``config``)
    are only assembled, so every volume is normalised once (:func:`~.transforms.fusion_inputs`).
    """
    return paired_ds.map_batches(
        FusionInputsd(config or VolumeTransformConfig()), batch_size=batch_size, batch_format="numpy"
    )
