"""Finding DICOM files and reading their headers (no pixel data), then grouping them into series.

:func:`list_dicom_files` walks folders (or reads a DICOMDIR). :func:`read_header` opens one file with
``stop_before_pixels=True`` and returns one :class:`SliceHeader` per frame: a single-frame file gives
one, a multi-frame object (Enhanced CT/MR with per-frame functional groups, or a legacy multi-frame
with GridFrameOffsetVector) gives one per frame. Identifiers are pseudonymised right here, with the
keyed :class:`~raylens_domains.medical.deid.Pseudonymizer`: no original UID or patient id leaves this
step. :func:`group_series` groups headers by (pseudonymised) SeriesInstanceUID.

Files that are not DICOM, or DICOM objects without an image (reports, structure sets, DICOMDIRs),
raise :class:`~raylens_domains.medical.errors.NotDicomError` with the reason.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pydicom.dataelem import RawDataElement

from .deid import Pseudonymizer
from .errors import DicomError, NotDicomError

__all__ = [
    "SliceHeader",
    "list_dicom_files",
    "read_header",
    "read_headers",
    "group_series",
    "checked_frame_count",
    "LABEL_KEYS",
    "MAX_SERIES_VOXELS",
]

_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
LABEL_KEYS = ("PatientID", "StudyInstanceUID", "AccessionNumber")
"""Header attributes a label table may be keyed on (looked up on the original value, at ingest)."""
MAX_SERIES_VOXELS = 512 * 512 * 2048
"""Series with more voxels than this are refused (a memory guard; raise it for huge series)."""


@dataclass
class SliceHeader:
    """What ingest needs from one slice (one frame of one file). Identifiers are pseudonymised."""

    path: str
    """The file the slice is in."""
    frame: int
    """Frame index in a multi-frame file; -1 for a single-frame file."""
    n_frames: int
    """Frames in the file (1 for single-frame)."""
    series_uid: str
    study_uid: str
    patient_id: str
    frame_of_reference_uid: str
    modality: str
    sop_class_uid: str
    transfer_syntax: str
    rows: int
    cols: int
    samples_per_pixel: int
    position: tuple[float, float, float] | None
    """ImagePositionPatient of this slice (LPS, mm); None if the file has none."""
    orientation: tuple[float, ...] | None
    """ImageOrientationPatient (6 cosines); None if the file has none."""
    pixel_spacing: tuple[float, float] | None
    """PixelSpacing (row spacing, column spacing) in mm."""
    slice_thickness: float | None
    rescale_slope: float
    rescale_intercept: float
    instance_number: int | None
    """Kept only to show that sorting does not use it."""
    label: int | None = None
    """Label looked up at ingest from the caller's table, or None."""
    pixel_offset: int | None = None
    """Byte offset of the PixelData element when the pixels are plain (uncompressed grey-scale with
    BitsStored == BitsAllocated and no LUT sequence): the volume pass then reads just those bytes
    instead of parsing the header again. None means: decode with pydicom."""
    pixel_dtype: str | None = None
    """NumPy dtype of those plain pixels (``"<u2"``, ``">i2"``, ...), with ``pixel_offset``."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # flat: no deep copy needed

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SliceHeader:
        kw = {}
        for f in fields(cls):
            v = d.get(f.name)
            if f.name in ("position", "orientation", "pixel_spacing") and v is not None:
                v = tuple(float(x) for x in v)
            elif f.name in ("frame", "n_frames", "rows", "cols", "samples_per_pixel"):
                v = int(v)
            elif f.name in ("instance_number", "label", "pixel_offset") and v is not None:
                v = int(v)
            elif f.name in ("slice_thickness",) and v is not None:
                v = float(v)
            elif f.name in ("rescale_slope", "rescale_intercept"):
                v = float(v)
            kw[f.name] = v
        return cls(**kw)


def list_dicom_files(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Every file below the given folders, plus given files; a DICOMDIR lists its referenced files.

    Hidden files and DICOMDIR files met while walking a folder are left out. The result is sorted,
    so runs are reproducible.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: set[str] = set()
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                for name in files:
                    if not name.startswith(".") and name.upper() != "DICOMDIR":
                        out.add(str(Path(root) / name))
        elif p.is_file():
            if p.name.upper() == "DICOMDIR" or _is_dicomdir(p):
                out.update(_dicomdir_files(p))
            else:
                out.add(str(p))
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return sorted(out)


def _is_dicomdir(path: Path) -> bool:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["MediaStorageSOPClassUID"])
    except Exception:
        return False
    meta = getattr(ds, "file_meta", None)
    return meta is not None and str(meta.get("MediaStorageSOPClassUID", "")) == _DICOMDIR_CLASS


def _dicomdir_files(path: Path) -> list[str]:
    """The image files a DICOMDIR references (paths resolved against the DICOMDIR's folder)."""
    import pydicom

    ds = pydicom.dcmread(path)
    root = path.parent.resolve()
    out = []
    for rec in ds.get("DirectoryRecordSequence", []):
        fid = rec.get("ReferencedFileID")
        if not fid:
            continue
        parts = [fid] if isinstance(fid, str) else list(fid)
        f = (root / Path(*parts)).resolve()
        if root not in f.parents:  # a record pointing outside the file-set is ignored
            continue
        if f.is_file():
            out.append(str(f))
    return out


def _num(v, default=None):
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


# Tags read from every file, with the VR their raw bytes are parsed as (see _fast).
_FAST_TAGS: dict[str, tuple[int, str]] = {
    "SOPClassUID": (0x00080016, "UI"),
    "Modality": (0x00080060, "CS"),
    "StudyInstanceUID": (0x0020000D, "UI"),
    "SeriesInstanceUID": (0x0020000E, "UI"),
    "FrameOfReferenceUID": (0x00200052, "UI"),
    "InstanceNumber": (0x00200013, "IS"),
    "ImagePositionPatient": (0x00200032, "DS"),
    "ImageOrientationPatient": (0x00200037, "DS"),
    "SliceThickness": (0x00180050, "DS"),
    "SpacingBetweenSlices": (0x00180088, "DS"),
    "PixelSpacing": (0x00280030, "DS"),
    "NumberOfFrames": (0x00280008, "IS"),
    "SamplesPerPixel": (0x00280002, "US"),
    "Rows": (0x00280010, "US"),
    "Columns": (0x00280011, "US"),
    "BitsAllocated": (0x00280100, "US"),
    "BitsStored": (0x00280101, "US"),
    "PixelRepresentation": (0x00280103, "US"),
    "RescaleIntercept": (0x00281052, "DS"),
    "RescaleSlope": (0x00281053, "DS"),
}


def _fast(ds, keyword: str, default=None):
    """``ds.get(keyword)`` for the tags in :data:`_FAST_TAGS`, parsed straight from the raw bytes.

    pydicom converts an element on first access (about 50 us each, with validation); ingest reads
    ~17 elements from every file, so parsing these simple VRs here halves the header pass. Anything
    unusual (already converted, deferred, odd bytes) falls back to pydicom's own conversion.
    """
    tag, vr = _FAST_TAGS[keyword]
    elem = ds.get_item(tag)
    if elem is None:
        return default
    raw = getattr(elem, "value", None) if isinstance(elem, RawDataElement) else None
    if raw is None or (elem.VR not in (None, vr)):
        value = ds[tag].value
        return default if value is None or value == "" else value
    try:
        if vr == "US":
            if len(raw) != 2:
                raise ValueError
            return int.from_bytes(raw, "little" if elem.is_little_endian else "big")
        text = raw.decode("ascii").strip(" \x00")
        if not text:
            return default
        if vr in ("UI", "CS"):
            return text
        parts = [p.strip() for p in text.split("\\")]
        nums = [int(float(p)) if vr == "IS" else float(p) for p in parts]
        return nums if len(nums) > 1 else nums[0]
    except (ValueError, UnicodeDecodeError):
        value = ds[tag].value
        return default if value is None or value == "" else value


def _vec(v, n):
    if v is None:
        return None
    try:
        t = tuple(float(x) for x in v)
    except (TypeError, ValueError):
        return None
    return t if len(t) == n else None


def _first(seq_holder, seq_name):
    seq = seq_holder.get(seq_name) if seq_holder is not None else None
    return seq[0] if seq else None


def _frame_geometry(ds) -> list[dict[str, Any]]:
    """Per-frame position/orientation/spacing/rescale of a file (one entry for single-frame)."""
    n_frames = int(_fast(ds, "NumberOfFrames", 1) or 1)
    top = dict(
        position=_vec(_fast(ds, "ImagePositionPatient"), 3),
        orientation=_vec(_fast(ds, "ImageOrientationPatient"), 6),
        pixel_spacing=_vec(_fast(ds, "PixelSpacing"), 2),
        slice_thickness=_num(_fast(ds, "SliceThickness")),
        rescale_slope=_num(_fast(ds, "RescaleSlope"), 1.0),
        rescale_intercept=_num(_fast(ds, "RescaleIntercept"), 0.0),
    )
    if str(_fast(ds, "Modality", "")) == "RTDOSE" and ds.get("DoseGridScaling") is not None:
        top["rescale_slope"] = _num(ds.DoseGridScaling, 1.0)
    if n_frames == 1 and "PerFrameFunctionalGroupsSequence" not in ds:
        return [top]

    shared = _first(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None:
        frames = []
        for i in range(n_frames):
            pf = per_frame[i] if i < len(per_frame) else None
            g = dict(top)
            for src in (shared, pf):  # per-frame values override shared ones
                if src is None:
                    continue
                if (pp := _first(src, "PlanePositionSequence")) is not None:
                    g["position"] = _vec(pp.get("ImagePositionPatient"), 3) or g["position"]
                if (po := _first(src, "PlaneOrientationSequence")) is not None:
                    g["orientation"] = _vec(po.get("ImageOrientationPatient"), 6) or g["orientation"]
                if (pm := _first(src, "PixelMeasuresSequence")) is not None:
                    g["pixel_spacing"] = _vec(pm.get("PixelSpacing"), 2) or g["pixel_spacing"]
                    g["slice_thickness"] = _num(pm.get("SliceThickness"), g["slice_thickness"])
                if (pv := _first(src, "PixelValueTransformationSequence")) is not None:
                    g["rescale_slope"] = _num(pv.get("RescaleSlope"), g["rescale_slope"])
                    g["rescale_intercept"] = _num(pv.get("RescaleIntercept"), g["rescale_intercept"])
            frames.append(g)
        return frames

    # legacy multi-frame: positions from GridFrameOffsetVector (RT dose, NM) or a fixed step
    import numpy as np

    from .geometry import slice_normal

    frames = [dict(top) for _ in range(n_frames)]
    if top["position"] is None or top["orientation"] is None:
        return frames
    offsets = ds.get("GridFrameOffsetVector")
    if offsets is not None and len(offsets) == n_frames:
        off = np.asarray([float(x) for x in offsets])
        off = off - off[0]  # relative (first 0) or absolute along the normal: same positions
    else:
        step = _num(_fast(ds, "SpacingBetweenSlices")) or top["slice_thickness"]
        if not step:
            return frames  # no per-frame positions; the series step reports it
        off = np.arange(n_frames) * step
    normal = slice_normal(top["orientation"])
    p0 = np.asarray(top["position"])
    for i, f in enumerate(frames):
        f["position"] = tuple(float(x) for x in p0 + off[i] * normal)
    return frames


def read_header(
    path: str | os.PathLike,
    pseudo: Pseudonymizer,
    *,
    labels: Mapping[str, int] | None = None,
    label_key: str = "PatientID",
    opener: Callable[[str], Any] | None = None,
    max_voxels: int = MAX_SERIES_VOXELS,
) -> list[SliceHeader]:
    """The slice headers of one file (one per frame), read without pixel data.

    Args:
        path: the file (or, with ``opener``, a name that ``opener`` turns into a file object).
        pseudo: the keyed pseudonymiser; every UID and the patient id are replaced here.
        labels: optional table from the original value of ``label_key`` to an int label.
        label_key: which header attribute the label table is keyed on (one of :data:`LABEL_KEYS`).
        opener: ``name -> binary file object`` for files that live in memory (an upload).
        max_voxels: a file whose frames hold more voxels than this is refused from its header.

    Raises:
        NotDicomError: not a DICOM file, or a DICOM object without pixel data.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    if labels is not None and label_key not in LABEL_KEYS:
        raise ValueError(f"label_key must be one of {LABEL_KEYS}, got {label_key!r}")
    path = str(path)
    try:
        with opener(path) if opener else open(path, "rb") as fp:
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
            offset = fp.tell()  # pydicom stops at the start of the PixelData element
            pixel_bytes = fp.seek(0, os.SEEK_END) - offset  # what the file really holds for the pixels
    except InvalidDicomError:
        raise NotDicomError("not a DICOM file (no DICM preamble)") from None
    except Exception as e:  # truncated or corrupt files raise many types inside pydicom
        raise NotDicomError(f"unreadable DICOM header ({type(e).__name__})") from None
    try:
        headers = _headers_of(ds, path, pseudo, labels, label_key, pixel_bytes, max_voxels)
        dtype = _plain_pixel_dtype(ds, headers[0].transfer_syntax)
        if dtype is not None:
            for h in headers:
                h.pixel_offset, h.pixel_dtype = int(offset), dtype
        return headers
    except DicomError:
        raise
    except Exception as e:  # malformed values (a bad DS string, a short sequence, ...); the message is
        # left out because pydicom quotes the offending value, which may be PHI
        raise DicomError(f"malformed DICOM header ({type(e).__name__})") from None


PLAIN_PIXEL_SYNTAXES = {"1.2.840.10008.1.2": "<", "1.2.840.10008.1.2.1": "<", "1.2.840.10008.1.2.2": ">"}
"""Uncompressed transfer syntaxes (with their byte order) whose pixels can be read as raw bytes."""


def _plain_pixel_dtype(ds, transfer_syntax: str) -> str | None:
    """The dtype of plain pixel bytes, or None when pydicom must decode (see ``SliceHeader.pixel_offset``)."""
    order = PLAIN_PIXEL_SYNTAXES.get(transfer_syntax)
    if order is None or "ModalityLUTSequence" in ds or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        return None
    bits = _fast(ds, "BitsAllocated")
    if bits not in (8, 16, 32) or _fast(ds, "BitsStored", bits) != bits or _fast(ds, "SamplesPerPixel", 1) != 1:
        return None
    kind = "i" if _fast(ds, "PixelRepresentation", 0) == 1 else "u"
    return f"{order}{kind}{bits // 8}"


def checked_frame_count(ds, pixel_bytes: int, transfer_syntax: str, max_voxels: int) -> int:
    """``NumberOfFrames``, checked against the pixel data the file holds and the voxel budget before
    anything is built per frame (a 2^31-1 frame header on a tiny file is refused, not allocated).

    Native pixels need ``Rows x Columns x SamplesPerPixel x BitsAllocated / 8`` bytes per frame;
    an encapsulated (compressed) frame needs at least one 8-byte item header.
    """
    raw = _fast(ds, "NumberOfFrames", 1)
    try:
        n_frames = int(raw or 1)
    except (TypeError, ValueError):
        raise DicomError("malformed DICOM header (NumberOfFrames is not a number)") from None
    if n_frames < 1:
        raise DicomError(f"malformed DICOM header (NumberOfFrames={n_frames})")
    rows, cols = int(_fast(ds, "Rows") or 0), int(_fast(ds, "Columns") or 0)
    if rows < 1 or cols < 1:
        raise DicomError(f"malformed DICOM header ({rows}x{cols} pixels)")
    if rows * cols * n_frames > max_voxels:
        raise DicomError(
            f"{n_frames} frames of {rows}x{cols} pixels is over the voxel budget of {max_voxels} per series "
            "(max_voxels)"
        )
    if transfer_syntax in PLAIN_PIXEL_SYNTAXES:
        frame_bits = rows * cols * int(_fast(ds, "SamplesPerPixel", 1) or 1) * int(_fast(ds, "BitsAllocated", 8) or 8)
    else:
        frame_bits = 8 * 8
    if 8 * pixel_bytes < n_frames * frame_bits:
        raise DicomError(
            f"NumberOfFrames={n_frames} but the file holds pixel data for at most {8 * pixel_bytes // frame_bits} "
            f"frames ({pixel_bytes} bytes): a truncated or forged file"
        )
    return n_frames


def _headers_of(
    ds, path: str, pseudo: Pseudonymizer, labels, label_key: str, pixel_bytes: int, max_voxels: int
) -> list[SliceHeader]:
    import pydicom

    meta = getattr(ds, "file_meta", None)
    sop_class = str(_fast(ds, "SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta else ""))
    if sop_class == _DICOMDIR_CLASS:
        raise NotDicomError("not an image (a DICOMDIR index; pass it explicitly to read its files)")
    if "Rows" not in ds or "Columns" not in ds:
        name = pydicom.uid.UID(sop_class).name if sop_class else "unknown SOP class"
        raise NotDicomError(f"not an image ({name})")
    series = str(_fast(ds, "SeriesInstanceUID", "") or "")
    if not series:
        raise DicomError("malformed DICOM header (no SeriesInstanceUID)")
    pseudo.check_burned_in(ds)  # BurnedInAnnotation=YES: PHI in the pixels, refused unless allowed
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    label = None
    if labels is not None:
        raw = str(ds.get(label_key, "") or "")
        label = labels.get(raw)
        label = None if label is None else int(label)
    ident = dict(
        series_uid=pseudo.uid(series),
        study_uid=pseudo.uid(str(_fast(ds, "StudyInstanceUID", "") or "")),
        patient_id=pseudo.patient_of(ds),  # the de-identifier's pseudonym, also when PatientID is empty
        frame_of_reference_uid=pseudo.uid(str(_fast(ds, "FrameOfReferenceUID", "") or "")),
    )
    try:
        inst = _fast(ds, "InstanceNumber")
        inst = int(inst) if inst not in (None, "") else None
    except (TypeError, ValueError):
        inst = None
    n_frames = checked_frame_count(ds, pixel_bytes, ts, max_voxels)
    common = dict(
        path=path,
        n_frames=n_frames,
        modality=str(_fast(ds, "Modality", "") or "OT"),
        sop_class_uid=sop_class,
        transfer_syntax=ts,
        rows=int(_fast(ds, "Rows")),
        cols=int(_fast(ds, "Columns")),
        samples_per_pixel=int(_fast(ds, "SamplesPerPixel", 1) or 1),
        instance_number=inst,
        label=label,
        **ident,
    )
    geoms = _frame_geometry(ds)
    frame_ids = [-1] if (n_frames == 1 and len(geoms) == 1) else list(range(len(geoms)))
    return [SliceHeader(frame=f, **common, **g) for f, g in zip(frame_ids, geoms)]


def read_headers(
    paths: Iterable[str],
    pseudo: Pseudonymizer,
    *,
    labels: Mapping[str, int] | None = None,
    label_key: str = "PatientID",
    opener: Callable[[str], Any] | None = None,
    max_voxels: int = MAX_SERIES_VOXELS,
) -> tuple[list[SliceHeader], list[tuple[str, str]]]:
    """:func:`read_header` over many files: ``(headers, skipped)`` with ``skipped = [(path, reason)]``."""
    headers: list[SliceHeader] = []
    skipped: list[tuple[str, str]] = []
    for p in paths:
        try:
            headers.extend(
                read_header(p, pseudo, labels=labels, label_key=label_key, opener=opener, max_voxels=max_voxels)
            )
        except DicomError as e:
            skipped.append((str(p), str(e)))
    return headers, skipped


def group_series(headers: Iterable[SliceHeader]) -> dict[str, list[SliceHeader]]:
    """Headers grouped by (pseudonymised) SeriesInstanceUID, in first-seen order."""
    groups: dict[str, list[SliceHeader]] = defaultdict(list)
    for h in headers:
        groups[h.series_uid].append(h)
    return dict(groups)
