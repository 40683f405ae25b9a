"""Slice geometry of a DICOM series: sort order, spacing, gaps, and the voxel-to-patient affine.

Conventions (used by every module of this pack):

* Patient coordinates are DICOM's LPS, in millimetres.
* A volume is an array ``(D, H, W)``: ``D`` runs over slices, ``H`` over rows, ``W`` over columns.
* ``spacing`` is ``(slice spacing, row spacing, column spacing)`` in the array's axis order, i.e.
  ``(dz, PixelSpacing[0], PixelSpacing[1])``.
* ``direction`` is a 3x3 matrix, stored row-major as 9 numbers, whose *columns* are the unit vectors
  of array axes 0, 1, 2 in patient space: ``(slice normal, column cosine, row cosine)``.
* ``origin`` is the patient position of voxel ``(0, 0, 0)``: the ImagePositionPatient of the first
  slice after sorting.

So ``patient = origin + direction @ (spacing * index)``, which :func:`affine` packs into a 4x4.
:class:`VolumeGeometry` holds the four (spacing, origin, direction, shape) as one value; rows
carry it in one column, ``geometry``, as :meth:`VolumeGeometry.to_dict` (an Arrow struct).

Slices are sorted by projecting ImagePositionPatient on the slice normal (the cross product of the
two ImageOrientationPatient cosines), never by InstanceNumber, and the slice spacing comes from that
projection, never from the z coordinate alone: both are right for axial, sagittal and oblique series.

>>> import numpy as np
>>> iop = [1, 0, 0, 0, 1, 0]
>>> pos = np.array([[0, 0, 5.0], [0, 0, 0.0], [0, 0, 2.5]])
>>> g = sort_slices(pos, iop)
>>> g.order.tolist(), g.slice_spacing
([1, 2, 0], 2.5)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .dicom_scan import MAX_SERIES_VOXELS
from .errors import MissingSlicesError, MixedSeriesError, SeriesGeometryError

__all__ = [
    "VolumeGeometry",
    "GeometryTolerance",
    "SliceOrder",
    "slice_normal",
    "sort_slices",
    "affine",
    "affine_lps_to_ras",
    "geometry_from_affine",
    "resample_to_grid",
    "SPACING_RANGE_MM",
    "MAX_RESAMPLED_VOXELS",
    "check_spacing",
    "resampled_shape",
    "check_grid_voxels",
]

SPACING_RANGE_MM = (1e-3, 100.0)
"""The voxel sizes (mm) a CT or MR series may have: a pixel spacing or slice step outside this range is
refused. Real scans sit between about 0.1 and 20 mm; a 1.5 m "pixel" only serves to make a resample
ask for gigabytes."""

MAX_RESAMPLED_VOXELS = 2**26
"""Largest grid (voxels) a resample may allocate by default (67M voxels: 256 MiB of float32, ~1.3 GB
at the peak of a MONAI resample); :class:`~.transforms.VolumeTransformConfig` ``max_voxels`` changes it."""

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _floats(name: str, value: Any, n: int) -> tuple[float, ...]:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} needs {n} finite numbers, got {np.asarray(value).tolist()!r}")
    return tuple(float(x) for x in arr)


@dataclass(frozen=True)
class VolumeGeometry:
    """Where a ``(D, H, W)`` volume sits in patient space (LPS mm, the module conventions).

    One value instead of loose ``spacing``/``origin``/``direction`` columns. A row stores it as
    :meth:`to_dict` (plain lists: an Arrow struct column that Ray Data, parquet and JSON all keep);
    :meth:`of` reads it back from a row's value. Why not MONAI's ``MetaTensor``: rows must be Arrow
    values (a tensor subclass would be pickled), readers and pairing stay free of torch, and the
    geometry stays in DICOM's LPS; :func:`affine_lps_to_ras` converts where MONAI needs it.

    >>> g = VolumeGeometry(spacing=(2.0, 1.0, 1.0), origin=(0, 0, 10), direction=np.eye(3), shape=(4, 8, 8))
    >>> g.affine[:3, 3].tolist(), VolumeGeometry.of(g.to_dict()) == g
    ([0.0, 0.0, 10.0], True)
    """

    spacing: tuple[float, float, float]
    """Voxel size in mm along array axes 0, 1, 2 (slice step, row spacing, column spacing)."""
    origin: tuple[float, float, float]
    """LPS position in mm of voxel ``(0, 0, 0)``."""
    direction: tuple[float, ...]
    """3x3 row-major (9 numbers); its columns are the unit vectors of the array axes in LPS."""
    shape: tuple[int, int, int]
    """The volume's ``(D, H, W)``: the grid this geometry describes."""

    def __post_init__(self):
        spacing = _floats("spacing", self.spacing, 3)
        if min(spacing) <= 0:
            raise ValueError(f"spacing must be positive mm, got {spacing}")
        shape = np.asarray(self.shape).reshape(-1)
        if shape.shape != (3,) or not np.all(shape == np.round(shape)) or shape.min() < 1:
            raise ValueError(
                f"shape needs 3 positive ints (the volume's D, H, W), got {np.asarray(self.shape).tolist()}"
            )
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", _floats("origin", self.origin, 3))
        object.__setattr__(self, "direction", _floats("direction", self.direction, 9))
        object.__setattr__(self, "shape", tuple(int(x) for x in shape))

    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel index -> LPS mm (see :func:`affine`)."""
        return affine(self.spacing, self.origin, self.direction)

    @property
    def direction_matrix(self) -> np.ndarray:
        """``direction`` as a 3x3 array (columns: the array axes)."""
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @classmethod
    def from_affine(cls, a: np.ndarray, shape) -> VolumeGeometry:
        """The geometry of an LPS affine (the inverse of :attr:`affine`) on a grid of ``shape``."""
        spacing, origin, direction = geometry_from_affine(a)
        return cls(spacing, origin, direction, shape)

    def with_shape(self, shape) -> VolumeGeometry:
        """The same placement on a grid of another ``shape``."""
        return replace(self, shape=tuple(int(s) for s in shape))

    def to_dict(self) -> dict[str, list]:
        """The row form: ``{"spacing": [3], "origin": [3], "direction": [9], "shape": [3]}`` of plain numbers."""
        return {
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
            "shape": list(self.shape),
        }

    @classmethod
    def of(cls, value: VolumeGeometry | Mapping[str, Any]) -> VolumeGeometry:
        """A geometry from a row's ``geometry`` value (the dict :meth:`to_dict` gives, as Ray Data
        and parquet return it) or a ``VolumeGeometry``.

        Raises:
            TypeError: ``value`` is neither.
            ValueError: a key is missing or a value is malformed.
        """
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(
                f"a geometry value is a VolumeGeometry or its to_dict() mapping, got {type(value).__name__}; "
                "rows carry it in their 'geometry' column"
            )
        missing = [k for k in ("spacing", "origin", "direction", "shape") if k not in value]
        if missing:
            raise ValueError(f"geometry mapping lacks {missing}; it has {sorted(value)} (see VolumeGeometry.to_dict)")
        return cls(value["spacing"], value["origin"], value["direction"], value["shape"])


@dataclass(frozen=True)
class GeometryTolerance:
    """How strict the series checks are."""

    gap_factor: float = 1.5
    """A step between neighbouring slices longer than ``gap_factor`` x the median step is a gap."""
    uneven_rtol: float = 0.02
    """Steps differing from the median by more than this fraction are reported as uneven spacing."""
    orientation_atol: float = 1e-3
    """Largest difference between two slices' direction cosines still counted as the same plane."""
    duplicate_atol_mm: float = 1e-3
    """Two slices closer than this along the normal sit at the same position (a mixed series)."""
    allow_gaps: bool = False
    """Keep a series with missing slices (gaps are still reported) instead of skipping it."""

    def __post_init__(self):
        if not self.gap_factor > 1.0:
            raise ValueError(f"gap_factor must be > 1 (e.g. 1.5), got {self.gap_factor}")
        if not 0.0 < self.uneven_rtol < self.gap_factor - 1.0:
            raise ValueError(
                f"uneven_rtol must be in (0, gap_factor - 1) = (0, {self.gap_factor - 1:g}), got {self.uneven_rtol}"
            )
        if self.orientation_atol <= 0 or self.duplicate_atol_mm <= 0:
            raise ValueError("orientation_atol and duplicate_atol_mm must be > 0")


@dataclass(frozen=True)
class SliceOrder:
    """Where each slice of a series goes, and what its positions say about the volume."""

    order: np.ndarray
    """Indices into the input slices, in ascending position along the normal."""
    offsets: np.ndarray
    """Sorted positions along the normal, in mm (first slice at its projection, not at 0)."""
    normal: np.ndarray
    """Unit slice normal (row cosine x column cosine), LPS."""
    slice_spacing: float
    """Median step between neighbouring slices along the normal, in mm."""
    warnings: tuple[str, ...] = field(default_factory=tuple)
    """Uneven spacing, gaps (when allowed), tilt: kept series carry these into their row."""
    n_missing: int = 0
    """Slices estimated missing from gaps (0 when the spacing is regular)."""


def slice_normal(orientation) -> np.ndarray:
    """Unit normal of the slice plane from the six ImageOrientationPatient numbers."""
    iop = np.asarray(orientation, dtype=np.float64).reshape(-1)
    if iop.shape != (6,) or not np.all(np.isfinite(iop)):
        raise SeriesGeometryError(f"no geometry (ImageOrientationPatient needs 6 finite numbers, got {iop.tolist()})")
    row, col = iop[:3], iop[3:]
    n = np.cross(row, col)
    norm = np.linalg.norm(n)
    if norm < 1e-6:
        raise SeriesGeometryError(f"no geometry (ImageOrientationPatient cosines are parallel: {iop.tolist()})")
    return n / norm


def sort_slices(
    positions,
    orientation,
    *,
    tolerance: GeometryTolerance = GeometryTolerance(),
    fallback_spacing: float | None = None,
) -> SliceOrder:
    """Sort slices by ImagePositionPatient projected on the slice normal; find spacing and gaps.

    Args:
        positions: ``(N, 3)`` ImagePositionPatient of each slice (any order).
        orientation: the series' ImageOrientationPatient (6 numbers).
        tolerance: the limits for gaps, uneven spacing and duplicates.
        fallback_spacing: slice spacing for a one-slice series (SliceThickness, say).

    Raises:
        MixedSeriesError: two slices share a position (echoes, phases or repeats in one series).
        MissingSlicesError: a gap in the positions, unless ``tolerance.allow_gaps``.
    """
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    if not np.all(np.isfinite(pos)):
        raise SeriesGeometryError("no geometry (ImagePositionPatient has non-finite values)")
    normal = slice_normal(orientation)
    proj = pos @ normal
    order = np.argsort(proj, kind="stable")
    offsets = proj[order]
    warnings: list[str] = []
    if len(pos) == 1:
        spacing = float(fallback_spacing) if fallback_spacing and fallback_spacing > 0 else 1.0
        if not fallback_spacing:
            warnings.append("single slice (no SliceThickness: slice spacing set to 1 mm)")
        return SliceOrder(order, offsets, normal, spacing, tuple(warnings))

    steps = np.diff(offsets)
    n_dup = int(np.sum(steps < tolerance.duplicate_atol_mm))
    if n_dup:
        raise MixedSeriesError(
            f"mixed series ({n_dup + 1} slices share a position along the normal: several echoes, "
            "phases or acquisitions under one SeriesInstanceUID)"
        )
    spacing = float(np.median(steps))
    n_missing = 0
    gaps = steps > tolerance.gap_factor * spacing
    if np.any(gaps):
        n_missing = int(sum(round(s / spacing) - 1 for s in steps[gaps]))
        where = ", ".join(f"{s:.3g} mm after slice {i}" for i, s in zip(np.flatnonzero(gaps), steps[gaps]))
        msg = (
            f"missing slices ({int(gaps.sum())} gap(s) in the slice positions: {where}; "
            f"median spacing {spacing:.3g} mm, about {n_missing} slice(s) missing)"
        )
        if not tolerance.allow_gaps:
            raise MissingSlicesError(msg)
        warnings.append(msg)
    regular = steps[~gaps]
    dev = np.abs(regular - spacing) / spacing
    if dev.size and dev.max() > tolerance.uneven_rtol:
        warnings.append(
            f"uneven slice spacing (steps from {regular.min():.4g} to {regular.max():.4g} mm, "
            f"median {spacing:.4g} mm; the volume assumes the median)"
        )
    # Slices should stack along the normal. A sideways drift means gantry tilt or a sheared stack.
    drift = (pos[order[-1]] - pos[order[0]]) - (offsets[-1] - offsets[0]) * normal
    if np.linalg.norm(drift) > 0.1 * spacing * (len(pos) - 1) + 1e-3:
        warnings.append(
            f"gantry tilt or shear (slice positions drift {np.linalg.norm(drift):.3g} mm sideways from "
            "the normal; the volume assumes an orthogonal stack)"
        )
    return SliceOrder(order, offsets, normal, spacing, tuple(warnings), n_missing)


def affine(spacing, origin, direction) -> np.ndarray:
    """The 4x4 voxel-index-to-LPS-mm matrix of a volume (see the module conventions)."""
    sp = np.asarray(spacing, dtype=np.float64).reshape(3)
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    a = np.eye(4)
    a[:3, :3] = d * sp[None, :]
    a[:3, 3] = np.asarray(origin, dtype=np.float64).reshape(3)
    return a


def affine_lps_to_ras(a: np.ndarray) -> np.ndarray:
    """Convert an LPS affine to RAS (MONAI's and NIfTI's convention) by flipping x and y."""
    return _LPS_TO_RAS @ np.asarray(a, dtype=np.float64)


def geometry_from_affine(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(spacing (3), origin (3), direction (9))`` of an LPS affine: the inverse of :func:`affine`."""
    a = np.asarray(a, dtype=np.float64)
    m = a[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"affine has a zero-length axis: {a.tolist()}")
    return spacing, a[:3, 3].copy(), (m / spacing[None, :]).reshape(9)


def check_spacing(spacing, what: str = "spacing") -> tuple[float, ...]:
    """``spacing`` as floats, or :class:`SeriesGeometryError` when a value is not finite or lies outside
    :data:`SPACING_RANGE_MM`.

    >>> check_spacing((3.0, 0.7, 0.7))
    (3.0, 0.7, 0.7)
    >>> check_spacing((3000.0, 1500.0, 1500.0), "slice step and PixelSpacing")
    Traceback (most recent call last):
    ...
    raylens_domains.medical.errors.SeriesGeometryError: implausible slice step and PixelSpacing ...
    """
    values = np.asarray(spacing, dtype=np.float64).reshape(-1)
    lo, hi = SPACING_RANGE_MM
    if not np.all(np.isfinite(values)) or values.min() < lo or values.max() > hi:
        shown = ", ".join(f"{v:.6g}" for v in values)
        raise SeriesGeometryError(
            f"implausible {what} ({shown} mm; a CT or MR voxel is {lo:g} to {hi:g} mm): "
            "the header's spacing tags are wrong, so the series is not used"
        )
    return tuple(float(v) for v in values)


def resampled_shape(geometry: VolumeGeometry, target_spacing) -> tuple[int, int, int]:
    """The shape (array axis order) of ``geometry``'s volume resampled to ``target_spacing``, computed from
    the geometry alone: each array axis keeps its extent and takes the target spacing of the patient axis
    it runs along most (``target_spacing`` in x, y, z order, as MONAI's ``Spacing(pixdim)`` after
    ``Orientation``). One voxel more per axis than the resample makes, never fewer.

    >>> g = VolumeGeometry(spacing=(3000.0, 1500.0, 1500.0), origin=(0, 0, 0), direction=np.eye(3), shape=(2, 2, 2))
    >>> resampled_shape(g, (3.0, 3.0, 3.0))
    (2001, 1001, 1001)
    """
    target = np.asarray(_floats("target_spacing", target_spacing, 3))
    if target.min() <= 0:
        raise ValueError(f"target_spacing must be positive mm, got {target.tolist()}")
    direction = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
    out = []
    for axis in range(3):
        along = int(np.argmax(np.abs(direction[:, axis])))  # the patient axis this array axis runs along
        extent = geometry.shape[axis] * geometry.spacing[axis]
        out.append(int(np.ceil(extent / target[along])) + 1)
    return tuple(out)


def check_grid_voxels(shape, max_voxels: int, what: str = "the resampled grid") -> None:
    """:class:`SeriesGeometryError` when a grid of ``shape`` holds more than ``max_voxels`` voxels
    (checked before anything of that size is allocated)."""
    n = 1
    for s in shape:
        n *= int(s)
    if n > max_voxels:
        dims = "x".join(str(int(s)) for s in shape)
        raise SeriesGeometryError(
            f"{what} would be {dims} = {n} voxels, over the limit of {max_voxels} (max_voxels); the series' "
            "spacing or extent is implausible, or raise max_voxels / the target spacing on purpose"
        )


def resample_to_grid(
    volume: np.ndarray,
    src_affine: np.ndarray,
    dst_affine: np.ndarray,
    dst_shape: tuple[int, int, int],
    *,
    order: int = 1,
    fill: float | None = None,
    max_voxels: int | None = None,
) -> np.ndarray:
    """Resample ``volume`` (on ``src_affine``) onto the grid ``dst_affine`` x ``dst_shape``.

    Both affines map voxel indices to the same patient space (one FrameOfReference). Each target
    voxel is placed in patient space, mapped into the source's index space and interpolated there
    (trilinear for ``order=1``). Target voxels outside the source get ``fill`` (the source minimum
    by default). A target grid over ``max_voxels`` (default: the voxel budget of one ingested series,
    :data:`~.dicom_scan.MAX_SERIES_VOXELS`) is refused (:class:`SeriesGeometryError`) before anything is
    allocated.
    """
    from scipy.ndimage import map_coordinates

    src = np.asarray(volume, dtype=np.float32)
    if src.ndim != 3:
        raise ValueError(f"volume must be 3D (D, H, W), got shape {src.shape}")
    if len(dst_shape) != 3 or min(int(s) for s in dst_shape) < 1:
        raise ValueError(f"dst_shape needs 3 positive ints, got {tuple(dst_shape)}")
    check_grid_voxels(dst_shape, MAX_SERIES_VOXELS if max_voxels is None else max_voxels, "the target grid")
    idx = np.indices(tuple(int(s) for s in dst_shape), dtype=np.float64).reshape(3, -1)
    m = np.linalg.inv(np.asarray(src_affine, dtype=np.float64)) @ np.asarray(dst_affine, dtype=np.float64)
    src_idx = m[:3, :3] @ idx + m[:3, 3:4]
    cval = float(src.min()) if fill is None else float(fill)
    out = map_coordinates(src, src_idx, order=order, mode="constant", cval=cval, prefilter=False)
    return out.reshape(tuple(int(s) for s in dst_shape)).astype(np.float32)
