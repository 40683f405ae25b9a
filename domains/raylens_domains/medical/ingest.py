"""The single-process ingest: folders of DICOM files -> de-identified series rows + an ingest report.

This is the same pipeline the Ray Data reader (:mod:`.ray_reader`) runs, as plain function calls:
list files -> read headers without pixels (pseudonymising ids) -> group by SeriesInstanceUID ->
per series: check, sort, decode, modality LUT, volume + affine. Bad files and bad series are
skipped and listed in the :class:`~raylens.data.report.IngestReport` with path and reason; the rest
goes on. Use it for small data, tests, and in-memory uploads (the Serve app); use the Ray reader
for anything large.

>>> import tempfile
>>> from raylens_domains.medical.phantom import PhantomConfig, generate_phantoms
>>> ph = generate_phantoms(tempfile.mkdtemp(), PhantomConfig(n_patients=1, ct_size=12, ct_slices=6,
...                        mr_size=12, mr_slices=6))
>>> rows, report = ingest_series(ph.root, DicomIngestConfig(deid=DeidConfig(key="k" * 32)))
>>> sorted(r["modality"] for r in rows), report.n_skipped   # labels.csv is not DICOM
(['CT', 'MR'], 1)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from raylens.data.report import IngestReport, SkippedRow

from .deid import DeidConfig, Deidentifier
from .dicom_scan import LABEL_KEYS, SliceHeader, group_series, list_dicom_files, read_headers
from .errors import DicomError
from .geometry import GeometryTolerance
from .volume import MAX_SERIES_VOXELS, load_series

__all__ = ["DicomIngestConfig", "ingest_series", "load_series_row", "series_skip_path"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DicomIngestConfig:
    """How DICOM folders become series rows."""

    deid: DeidConfig = field(default_factory=DeidConfig)
    """De-identification (the key, private tags, optional de-identified copies)."""
    tolerance: GeometryTolerance = field(default_factory=GeometryTolerance)
    """Gap / uneven spacing / orientation limits."""
    labels: Mapping[str, int] | None = None
    """Optional label table keyed on the *original* value of ``label_key`` (looked up at ingest)."""
    label_key: str = "PatientID"
    """Header attribute the label table is keyed on: PatientID, StudyInstanceUID or AccessionNumber."""
    modalities: tuple[str, ...] = ("CT", "MR")
    """Series of other modalities are skipped with a reason; empty keeps every modality."""
    min_slices: int = 2
    """Series with fewer slices are skipped (a localizer or a single image is not a volume)."""
    max_voxels: int = MAX_SERIES_VOXELS
    """Series with more voxels are skipped (memory guard)."""

    def __post_init__(self):
        if self.label_key not in LABEL_KEYS:
            raise ValueError(f"label_key must be one of {LABEL_KEYS}, got {self.label_key!r}")
        if self.min_slices < 1:
            raise ValueError(f"min_slices must be >= 1, got {self.min_slices}")
        if self.labels is not None and not isinstance(self.labels, Mapping):
            raise TypeError("labels must be a mapping from the original id to an int label")


def series_skip_path(headers: list[SliceHeader], deid: DeidConfig | None = None) -> str:
    """The path reported for a skipped series: its folder (or file) plus the slice count."""
    folders = sorted({deid.report_path(d) if deid else d for d in {os.path.dirname(h.path) for h in headers}})
    where = folders[0] if len(folders) == 1 else f"{folders[0]} (+{len(folders) - 1} folders)"
    return f"{where} [series {headers[0].series_uid}, {len(headers)} slices]"


def load_series_row(headers: list[SliceHeader], config: DicomIngestConfig, *, opener=None) -> dict[str, Any]:
    """One series' row, or raise :class:`DicomError` with the reason it is skipped."""
    mod = headers[0].modality.upper()
    if config.modalities and mod not in config.modalities:
        raise DicomError(f"modality not ingested ({mod}; modalities={list(config.modalities)})")
    if len(headers) < config.min_slices:
        raise DicomError(f"too few slices ({len(headers)}; min_slices={config.min_slices})")
    deid = Deidentifier(config.deid) if config.deid.output_dir else None
    try:
        vol = load_series(
            headers,
            tolerance=config.tolerance,
            deidentifier=deid,
            deid_output_dir=config.deid.output_dir,
            max_voxels=config.max_voxels,
            opener=opener,
        )
    except DicomError:
        raise
    except Exception as e:  # one odd series must not stop the job; the message may quote values, so drop it
        raise DicomError(f"unexpected error while building the volume ({type(e).__name__})") from None
    return vol.to_row()


def ingest_series(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    config: DicomIngestConfig | None = None,
) -> tuple[list[dict[str, Any]], IngestReport]:
    """Read DICOM folders/files/DICOMDIRs in this process: ``(series rows, report)``."""
    config = config or DicomIngestConfig()
    files = list_dicom_files(paths)
    report = IngestReport(
        source=config.deid.report_path(paths) if isinstance(paths, (str, os.PathLike)) else "dicom files"
    )
    headers, skipped = read_headers(
        files,
        config.deid.pseudonymizer(),
        labels=config.labels,
        label_key=config.label_key,
        max_voxels=config.max_voxels,
    )
    report.skipped.extend(SkippedRow(config.deid.report_path(p), r) for p, r in skipped)
    rows = []
    for hs in group_series(headers).values():
        try:
            rows.append(load_series_row(hs, config))
        except DicomError as e:
            report.skipped.append(SkippedRow(series_skip_path(hs, config.deid), str(e)))
    report.n_ok = len(rows)
    log.info(report.summary())
    return rows, report
