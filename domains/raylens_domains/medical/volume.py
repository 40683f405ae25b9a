"""Building a 3D volume (and its affine) from the slice headers of one series.

:func:`load_series` checks that the headers form one volume (one modality, one size, one orientation,
one pixel spacing, no two slices at one position), sorts them along the slice normal
(:mod:`.geometry`), reads each file once with pixel data, decodes it (RLE and deflate with NumPy alone;
JPEG, JPEG-LS and JPEG 2000 with pylibjpeg when installed, else :class:`MissingDecoderError` naming the
package to install), applies the modality LUT (RescaleSlope/Intercept, so CT comes out in HU) and
stacks the slices into a ``(D, H, W)`` float32 array. Multi-frame files contribute one slice per frame.

The result is a :class:`SeriesVolume`; :meth:`SeriesVolume.to_row` gives the series row (:data:`ROW_COLUMNS`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .dicom_scan import MAX_SERIES_VOXELS, SliceHeader
from .errors import DicomError, MissingDecoderError, MixedSeriesError, SeriesGeometryError
from .geometry import GeometryTolerance, VolumeGeometry, check_spacing, sort_slices

__all__ = [
    "SeriesVolume",
    "load_series",
    "read_plain_pixels",
    "native_pixels",
    "apply_rescale",
    "check_decoder",
    "DECODER_PACKAGES",
    "MAX_SERIES_VOXELS",
    "ROW_COLUMNS",
]


ROW_COLUMNS = (
    "volume",
    "geometry",
    "modality",
    "study_uid",
    "series_uid",
    "patient_id",
    "frame_of_reference_uid",
    "label",
    "n_slices",
    "warnings",
    "transfer_syntax",
    "normalization",
)
"""The columns of one series row. ``geometry`` is :meth:`VolumeGeometry.to_dict` (spacing, origin,
direction, shape of ``volume``); ``label`` is -1 when unknown; ``normalization`` is ``""`` for a raw
volume (HU for CT) and the :meth:`~.transforms.VolumeTransformConfig.fingerprint` of the recipe that
normalised it otherwise, so no step normalises a volume twice."""

# transfer syntax UID -> the PyPI packages that let pydicom decode it
DECODER_PACKAGES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg pylibjpeg-libjpeg (or pillow, or python-gdcm)",
    "1.2.840.10008.1.2.4.51": "pylibjpeg pylibjpeg-libjpeg (or pillow, or python-gdcm)",
    "1.2.840.10008.1.2.4.57": "pylibjpeg pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.70": "pylibjpeg pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.80": "pylibjpeg pylibjpeg-libjpeg (or pyjpegls, or python-gdcm)",
    "1.2.840.10008.1.2.4.81": "pylibjpeg pylibjpeg-libjpeg (or pyjpegls, or python-gdcm)",
    "1.2.840.10008.1.2.4.90": "pylibjpeg pylibjpeg-openjpeg (or pillow, or python-gdcm)",
    "1.2.840.10008.1.2.4.91": "pylibjpeg pylibjpeg-openjpeg (or pillow, or python-gdcm)",
    "1.2.840.10008.1.2.4.201": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.5": "nothing (NumPy decodes RLE)",
}


@dataclass
class SeriesVolume:
    """One series as a volume with its geometry (see :mod:`.geometry` for the conventions)."""

    volume: np.ndarray
    """``(D, H, W)`` float32, after the modality LUT (HU for CT)."""
    geometry: VolumeGeometry
    """Spacing, origin, direction and shape of ``volume`` (LPS, see :mod:`.geometry`)."""
    modality: str
    study_uid: str
    series_uid: str
    patient_id: str
    frame_of_reference_uid: str = ""
    label: int | None = None
    transfer_syntax: str = ""
    warnings: tuple[str, ...] = field(default_factory=tuple)
    """Uneven spacing, allowed gaps, tilt: what is odd but not fatal about this series."""

    def __post_init__(self):
        if tuple(self.volume.shape) != self.geometry.shape:
            raise ValueError(f"volume shape {self.volume.shape} differs from its geometry's {self.geometry.shape}")

    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel index -> LPS mm."""
        return self.geometry.affine

    def to_row(self) -> dict[str, Any]:
        """One series row (:data:`ROW_COLUMNS`), a raw (not normalised) volume."""
        return {
            "volume": self.volume.astype(np.float32, copy=False),
            "geometry": self.geometry.to_dict(),
            "modality": self.modality,
            "study_uid": self.study_uid,
            "series_uid": self.series_uid,
            "patient_id": self.patient_id,
            "frame_of_reference_uid": self.frame_of_reference_uid,
            "label": -1 if self.label is None else int(self.label),
            "n_slices": int(self.volume.shape[0]),
            "warnings": "; ".join(self.warnings),
            "transfer_syntax": self.transfer_syntax,
            "normalization": "",
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> SeriesVolume:
        """The series of a raw row (:meth:`to_row`); a normalised row is refused (its values are not HU)."""
        if row.get("normalization"):
            raise ValueError("this row holds a normalised volume; SeriesVolume is for raw rows (normalization '')")
        label = row.get("label")
        label = None if label is None or int(label) < 0 else int(label)
        w = row.get("warnings") or ""
        return cls(
            volume=np.asarray(row["volume"], dtype=np.float32),
            geometry=VolumeGeometry.of(row["geometry"]),
            modality=str(row["modality"]),
            study_uid=str(row["study_uid"]),
            series_uid=str(row["series_uid"]),
            patient_id=str(row["patient_id"]),
            frame_of_reference_uid=str(row.get("frame_of_reference_uid") or ""),
            label=label,
            transfer_syntax=str(row.get("transfer_syntax") or ""),
            warnings=tuple(x for x in str(w).split("; ") if x),
        )


def apply_rescale(pixels: np.ndarray, slope: float = 1.0, intercept: float = 0.0) -> np.ndarray:
    """The linear modality LUT: ``pixels * slope + intercept`` as float32 (HU for CT)."""
    out = np.asarray(pixels, dtype=np.float32)
    if slope != 1.0:
        out = out * np.float32(slope)
    if intercept != 0.0:
        out = out + np.float32(intercept)
    return out


def check_decoder(transfer_syntax: str) -> None:
    """Raise :class:`MissingDecoderError` if no installed plugin decodes ``transfer_syntax``."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    uid = UID(transfer_syntax)
    name = uid.name if uid.is_valid else transfer_syntax
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise MissingDecoderError(
            f"missing decoder (no decoder exists in pydicom for {name}, {transfer_syntax}; "
            "convert the series to an uncompressed or JPEG/JPEG 2000 syntax first)"
        ) from None
    if not decoder.is_available:
        pkgs = DECODER_PACKAGES.get(str(uid), "a pydicom pixel-data plugin")
        missing = "; ".join(decoder.missing_dependencies)
        raise MissingDecoderError(
            f"missing decoder ({name}, {transfer_syntax}: pip install {pkgs}"
            + (f"; pydicom plugins: {missing}" if missing else "")
            + ")"
        )


def _check_consistent(headers: Sequence[SliceHeader], tol: GeometryTolerance) -> None:
    def distinct(attr):
        return {getattr(h, attr) for h in headers}

    for attr, what in (
        ("modality", "modalities"),
        ("samples_per_pixel", "samples per pixel"),
        ("frame_of_reference_uid", "frames of reference"),
        ("study_uid", "studies"),
    ):
        vals = distinct(attr)
        if len(vals) > 1:
            raise MixedSeriesError(f"mixed series ({len(vals)} {what} under one SeriesInstanceUID)")
    sizes = {(h.rows, h.cols) for h in headers}
    if len(sizes) > 1:
        raise MixedSeriesError(f"mixed series (slice sizes {sorted(sizes)} under one SeriesInstanceUID)")
    if headers[0].samples_per_pixel != 1:
        raise DicomError(f"not a grey-scale volume ({headers[0].samples_per_pixel} samples per pixel: colour images)")
    if any(h.orientation is None for h in headers) or any(h.position is None for h in headers):
        raise SeriesGeometryError(
            "no geometry (no ImagePositionPatient/ImageOrientationPatient: the slices cannot be placed)"
        )
    if any(h.pixel_spacing is None for h in headers):
        raise SeriesGeometryError("no geometry (no PixelSpacing: the voxel size is unknown)")
    o = np.asarray([h.orientation for h in headers])
    if np.abs(o - o[0]).max() > tol.orientation_atol:
        raise MixedSeriesError("mixed series (slices with different ImageOrientationPatient)")
    ps = np.asarray([h.pixel_spacing for h in headers])
    if np.abs(ps - ps[0]).max() > 1e-3 * max(ps[0].max(), 1e-6):
        raise MixedSeriesError("mixed series (slices with different PixelSpacing)")
    check_spacing(ps[0], "PixelSpacing")  # before anything is sized from it


# What decoding and the modality LUT need; reading only these skips converting the rest of the header.
_PIXEL_TAGS = [
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PixelData",
    "FloatPixelData",
    "DoubleFloatPixelData",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "ModalityLUTSequence",
    "Modality",
]


_NATIVE_BYTE_ORDER = {"1.2.840.10008.1.2": "<", "1.2.840.10008.1.2.1": "<", "1.2.840.10008.1.2.2": ">"}


def native_pixels(ds, transfer_syntax: str) -> np.ndarray | None:
    """Uncompressed grey-scale pixels read straight from PixelData, or None to use ``pixel_array``.

    Covers the common case (implicit/explicit VR, 8/16/32 bits, BitsStored == BitsAllocated, one
    sample) with one ``np.frombuffer``: the same values as ``ds.pixel_array`` without its per-call
    set-up, which dominates for small slices. Everything else goes through pydicom.
    """
    order = _NATIVE_BYTE_ORDER.get(str(transfer_syntax))
    if order is None or "PixelData" not in ds:
        return None
    try:
        bits = int(ds.BitsAllocated)
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1 or bits not in (8, 16, 32):
            return None
        if int(ds.get("BitsStored", bits) or bits) != bits:
            return None  # pydicom masks / sign-extends the unused high bits
        kind = "i" if int(ds.get("PixelRepresentation", 0) or 0) == 1 else "u"
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return None
    raw = ds.PixelData
    count = rows * cols * frames
    if not isinstance(raw, (bytes, bytearray)) or len(raw) < count * bits // 8:
        return None  # let pydicom report the problem
    arr = np.frombuffer(raw, dtype=np.dtype(f"{order}{kind}{bits // 8}"), count=count)
    return arr.reshape((frames, rows, cols) if frames > 1 else (rows, cols))


def read_plain_pixels(path: str, header: SliceHeader, *, opener=None) -> np.ndarray | None:
    """The pixels of a file whose header pass found plain pixel data (``header.pixel_offset``).

    Reads the PixelData element at the recorded offset and checks its tag and length; returns
    ``(frames, rows, cols)`` (or ``(rows, cols)``), or None if anything differs from the header
    (then pydicom decodes the file as usual).
    """
    if header.pixel_offset is None or not header.pixel_dtype:
        return None
    dtype = np.dtype(header.pixel_dtype)
    big = dtype.byteorder == ">"
    implicit = header.transfer_syntax == "1.2.840.10008.1.2"
    count = header.rows * header.cols * header.n_frames
    with opener(path) if opener else open(path, "rb") as f:
        f.seek(header.pixel_offset)
        head = f.read(8 if implicit else 12)
        if len(head) < (8 if implicit else 12):
            return None
        group, elem = (
            int.from_bytes(head[0:2], "big" if big else "little"),
            int.from_bytes(head[2:4], "big" if big else "little"),
        )
        if (group, elem) != (0x7FE0, 0x0010):
            return None
        length = int.from_bytes(head[4:8] if implicit else head[8:12], "big" if big else "little")
        if length == 0xFFFFFFFF or length < count * dtype.itemsize:
            return None  # encapsulated or short: let pydicom handle (and report) it
        raw = f.read(count * dtype.itemsize)
    if len(raw) < count * dtype.itemsize:
        return None
    arr = np.frombuffer(raw, dtype=dtype, count=count)
    return arr.reshape(
        (header.n_frames, header.rows, header.cols) if header.n_frames > 1 else (header.rows, header.cols)
    )


def _read_pixels(path: str, transfer_syntax: str, deidentifier=None, deid_root: str | None = None, opener=None):
    import pydicom

    check_decoder(transfer_syntax)
    copy = deidentifier is not None and deid_root is not None
    try:
        # the whole dataset only when a de-identified copy is written
        ds = pydicom.dcmread(opener(path) if opener else path, specific_tags=None if copy else _PIXEL_TAGS)
        arr = native_pixels(ds, transfer_syntax)
        if arr is None:
            arr = ds.pixel_array
    except MissingDecoderError:
        raise
    except Exception as e:  # pydicom raises many types for corrupt pixel data
        raise DicomError(f"undecodable pixel data ({Path(path).name}: {type(e).__name__}: {str(e)[:160]})") from None
    lut = None
    if "ModalityLUTSequence" in ds and "RescaleSlope" not in ds:
        from pydicom.pixels import apply_modality_lut

        lut = lambda a: np.asarray(apply_modality_lut(a, ds), dtype=np.float32)  # noqa: E731
    if copy:
        _write_deid_copy(ds, deidentifier, deid_root)
    return arr, lut


def _write_deid_copy(ds, deidentifier, root: str) -> None:
    deidentifier.apply(ds)
    out = (
        Path(root)
        / str(ds.PatientID)
        / str(ds.get("StudyInstanceUID", "study"))
        / str(ds.get("SeriesInstanceUID", "series"))
    )
    out.mkdir(parents=True, exist_ok=True)
    ds.save_as(out / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)


def load_series(
    headers: Sequence[SliceHeader],
    *,
    tolerance: GeometryTolerance = GeometryTolerance(),
    deidentifier=None,
    deid_output_dir: str | None = None,
    max_voxels: int = MAX_SERIES_VOXELS,
    opener: Callable[[str], Any] | None = None,
) -> SeriesVolume:
    """Build the volume of one series from its slice headers (all with one ``series_uid``).

    Args:
        headers: the series' headers, in any order (files stored out of order are fine).
        tolerance: gap / uneven-spacing / orientation limits.
        deidentifier: a :class:`~raylens_domains.medical.deid.Deidentifier`; with
            ``deid_output_dir`` a de-identified DICOM copy of each file is written there.
        max_voxels: refuse series larger than this.
        opener: ``name -> binary file object`` for files held in memory (see :func:`.dicom_scan.read_header`).

    Raises:
        MixedSeriesError, MissingSlicesError, SeriesGeometryError, MissingDecoderError, DicomError.
    """
    if not headers:
        raise ValueError("load_series needs at least one slice header")
    if len({h.series_uid for h in headers}) != 1:
        raise ValueError("load_series takes the headers of one series; group them with group_series first")
    _check_consistent(headers, tolerance)
    h0 = headers[0]
    n_voxels = len(headers) * h0.rows * h0.cols
    if n_voxels > max_voxels:
        raise DicomError(f"series too large ({n_voxels} voxels is over max_voxels={max_voxels})")
    order = sort_slices(
        [h.position for h in headers], h0.orientation, tolerance=tolerance, fallback_spacing=h0.slice_thickness
    )
    check_spacing([order.slice_spacing], "slice step (ImagePositionPatient along the normal, or SliceThickness)")
    ordered = [headers[i] for i in order.order]

    # read each file once; a multi-frame file serves all its frames
    by_path: dict[str, list[int]] = {}
    for k, h in enumerate(ordered):
        by_path.setdefault(h.path, []).append(k)
    volume = np.empty((len(ordered), h0.rows, h0.cols), dtype=np.float32)
    copies = deidentifier is not None and deid_output_dir is not None
    for path, ks in by_path.items():
        arr = None if copies else read_plain_pixels(path, ordered[ks[0]], opener=opener)
        lut = None
        if arr is None:
            arr, lut = _read_pixels(path, ordered[ks[0]].transfer_syntax, deidentifier, deid_output_dir, opener)
        n_frames = ordered[ks[0]].n_frames
        if n_frames > 1 and arr.ndim == 2:
            arr = arr[None]
        for k in ks:
            h = ordered[k]
            plane = arr if h.frame < 0 else arr[h.frame]
            if plane.shape != (h0.rows, h0.cols):
                raise DicomError(
                    f"undecodable pixel data ({Path(path).name} has shape {plane.shape}, header says {(h0.rows, h0.cols)})"
                )
            volume[k] = lut(plane) if lut is not None else apply_rescale(plane, h.rescale_slope, h.rescale_intercept)

    row_cos = np.asarray(h0.orientation[:3], dtype=np.float64)
    col_cos = np.asarray(h0.orientation[3:], dtype=np.float64)
    row_cos /= np.linalg.norm(row_cos)
    col_cos /= np.linalg.norm(col_cos)
    direction = np.stack([order.normal, col_cos, row_cos], axis=1).reshape(9)
    spacing = np.array([order.slice_spacing, h0.pixel_spacing[0], h0.pixel_spacing[1]], dtype=np.float64)
    origin = np.asarray(ordered[0].position, dtype=np.float64)
    labels = {h.label for h in headers if h.label is not None}
    if len(labels) > 1:
        raise MixedSeriesError("mixed series (slices carry different labels)")
    return SeriesVolume(
        volume=volume,
        geometry=VolumeGeometry(spacing, origin, direction, volume.shape),
        modality=h0.modality,
        study_uid=h0.study_uid,
        series_uid=h0.series_uid,
        patient_id=h0.patient_id,
        frame_of_reference_uid=h0.frame_of_reference_uid,
        label=labels.pop() if labels else None,
        transfer_syntax=h0.transfer_syntax,
        warnings=order.warnings,
    )
