"""The medical pack's data source: ``open_source("dicom:/data/ct", ...)`` (and any ``DICOMDIR`` file).

Registered into :data:`raylens.data.SOURCES` when the pack's plug-in loads. A folder needs the
``dicom:`` prefix (a bare folder is read as class folders of images); a file named ``DICOMDIR`` is
recognised by its name. The source opens :func:`~.ray_reader.read_dicom`, importing ray only then.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raylens.data.result import ReadResult
from raylens.data.sources import register_source

__all__ = ["open_dicom"]


@register_source(
    "dicom",
    accepts=lambda spec: Path(spec).name.upper() == "DICOMDIR" and Path(spec).is_file(),
    describe="DICOM series (dicom:FOLDER, or a DICOMDIR file; medical pack)",
    priority=5,
)
def open_dicom(
    spec: str,
    preprocess: Any = None,
    *,
    split: str | None = None,
    seed: int = 0,
    config: Any = None,
    **options: Any,
) -> ReadResult:
    """Read DICOM series with :func:`~.ray_reader.read_dicom`: one de-identified row per series.

    Args:
        spec: a folder, a DICOM file or a DICOMDIR.
        preprocess: None (raw volumes, HU for CT) or a
            :class:`~.transforms.VolumeTransformConfig` to normalise each volume while reading.
        split: not supported (DICOM folders have no splits); must be None.
        seed: unused (the reader draws nothing).
        config: a :class:`~.ingest.DicomIngestConfig` (de-identification key, labels, tolerances).
        **options: passed to ``read_dicom`` (``files_per_task``, ``series_per_task``, ...).
    """
    from .ray_reader import read_dicom
    from .transforms import VolumeTransformConfig

    if split is not None:
        raise ValueError(f"split={split!r}: DICOM folders have no splits; pair and split the studies after reading")
    if preprocess is not None and not isinstance(preprocess, VolumeTransformConfig):
        raise TypeError(
            f"the dicom source takes preprocess=None or a VolumeTransformConfig, got {type(preprocess).__name__}"
        )
    return read_dicom(spec, config, transform=preprocess, **options)
