"""The spacing bomb (issue 14): tiny DICOM slices with a huge PixelSpacing or slice step must not make a
resample ask for gigabytes. Spacings are range-checked where a series is built, and every resampled grid
is bounded from the geometry alone, before anything of its size is allocated."""

from __future__ import annotations

import time

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from raylens_domains.medical import DeidConfig, DicomIngestConfig, ingest_series, load_series
from raylens_domains.medical.dicom_scan import group_series, read_headers
from raylens_domains.medical.errors import SeriesGeometryError
from raylens_domains.medical.geometry import (
    SPACING_RANGE_MM,
    VolumeGeometry,
    check_spacing,
    resample_to_grid,
    resampled_shape,
)
from raylens_domains.medical.transforms import NormalizeVolumed, VolumeTransformConfig, normalize_volume

KEY = "unit-test-key-0123456789abcdef"


def _write_series(folder, pixel_mm: float, step_mm: float, n: int = 2, size: int = 2) -> None:
    """``n`` CT slices of ``size`` x ``size`` pixels, ``pixel_mm`` apart in-plane and ``step_mm`` apart."""
    folder.mkdir(parents=True, exist_ok=True)
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series_uid = pydicom.uid.generate_uid()
    for i in range(n):
        ds = base.copy()
        ds.Rows = ds.Columns = size
        ds.PixelData = np.full((size, size), 100 + i, dtype=np.int16).tobytes()
        ds.PixelSpacing = [pixel_mm, pixel_mm]
        ds.SliceThickness = step_mm
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, i * step_mm]
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.InstanceNumber = i + 1
        ds.save_as(folder / f"slice{i}.dcm")


def test_the_issue_series_is_skipped_with_the_reason_before_any_resample(tmp_path):
    """Two 2x2 slices, 1500 mm PixelSpacing, 3000 mm slice step: resampled to 3 mm this asked for a
    multi-GB tensor. Now the series is a skipped row naming the implausible spacing; a sane one still reads."""
    _write_series(tmp_path / "bomb", pixel_mm=1500.0, step_mm=3000.0)
    _write_series(tmp_path / "fine", pixel_mm=0.7, step_mm=3.0, n=3, size=4)
    t0 = time.perf_counter()
    rows, report = ingest_series(tmp_path, DicomIngestConfig(deid=DeidConfig(key=KEY)))
    assert time.perf_counter() - t0 < 60
    assert len(rows) == 1 and rows[0]["volume"].shape == (3, 4, 4)
    normalised = NormalizeVolumed(VolumeTransformConfig(spatial_size=(8, 8, 8))).row(rows[0])
    assert normalised["volume"].shape == (8, 8, 8)
    reasons = [s.reason for s in report.skipped]
    assert len(reasons) == 1 and "implausible PixelSpacing (1500, 1500 mm" in reasons[0], reasons


def test_load_series_checks_the_slice_step_too(tmp_path):
    _write_series(tmp_path / "s", pixel_mm=1.0, step_mm=3000.0)
    headers, skipped = read_headers(
        sorted(str(p) for p in (tmp_path / "s").iterdir()), DeidConfig(key=KEY).pseudonymizer()
    )
    assert not skipped
    (hs,) = group_series(headers).values()
    with pytest.raises(SeriesGeometryError, match=r"implausible slice step .*3000 mm"):
        load_series(hs)


def test_check_spacing_range():
    lo, hi = SPACING_RANGE_MM
    assert check_spacing((lo, 1.0, hi)) == (lo, 1.0, hi)
    for bad in ((0.0, 1, 1), (1, 1, hi * 1.01), (1, float("nan"), 1), (1, float("inf"), 1), (-1, 1, 1)):
        with pytest.raises(SeriesGeometryError, match="implausible spacing"):
            check_spacing(bad)


def test_the_normaliser_bounds_the_resampled_grid_before_allocating():
    """A geometry that got past the reader (built by hand, or from another source) with the issue's
    spacings: the grid it would need is refused from the geometry, fast, instead of allocated."""
    geo = VolumeGeometry(spacing=(3000.0, 1500.0, 1500.0), origin=(0, 0, 0), direction=np.eye(3), shape=(2, 2, 2))
    assert resampled_shape(geo, (3.0, 3.0, 3.0)) == (2001, 1001, 1001)
    t0 = time.perf_counter()
    with pytest.raises(SeriesGeometryError, match=r"2001x1001x1001 = 2005004001 voxels, over the limit"):
        normalize_volume(np.zeros((2, 2, 2), np.float32), geo, "CT")
    assert time.perf_counter() - t0 < 5


def test_the_grid_bound_is_exact_enough_for_real_volumes():
    """The bound follows the axes: a legal volume just under a small budget passes, just over is refused."""
    geo = VolumeGeometry(spacing=(10.0, 10.0, 10.0), origin=(0, 0, 0), direction=np.eye(3), shape=(4, 8, 8))
    shape = resampled_shape(geo, (3.0, 3.0, 3.0))
    assert shape == (15, 28, 28)  # ceil(40/3)+1, ceil(80/3)+1
    n = shape[0] * shape[1] * shape[2]
    vol = np.random.default_rng(0).normal(size=(4, 8, 8)).astype(np.float32)
    out, _ = normalize_volume(vol, geo, "CT", VolumeTransformConfig(spatial_size=(8, 8, 8), max_voxels=n))
    assert out.shape == (8, 8, 8)
    with pytest.raises(SeriesGeometryError, match="max_voxels"):
        normalize_volume(vol, geo, "CT", VolumeTransformConfig(spatial_size=(8, 8, 8), max_voxels=n - 1))


def test_the_limit_is_not_part_of_the_recipe():
    assert VolumeTransformConfig(max_voxels=10**6).fingerprint() == VolumeTransformConfig().fingerprint()
    with pytest.raises(ValueError, match="max_voxels must be a positive int"):
        VolumeTransformConfig(max_voxels=0)
    with pytest.raises(ValueError, match="spatial_size .* over max_voxels"):
        VolumeTransformConfig(spatial_size=(64, 64, 64), max_voxels=1000)


def test_resample_to_grid_refuses_a_huge_target_before_allocating():
    vol = np.zeros((2, 2, 2), np.float32)
    t0 = time.perf_counter()
    with pytest.raises(SeriesGeometryError, match="the target grid would be 10000x10000x10000"):
        resample_to_grid(vol, np.eye(4), np.eye(4), (10_000, 10_000, 10_000))
    assert time.perf_counter() - t0 < 5
    assert resample_to_grid(vol, np.eye(4), np.eye(4), (2, 2, 2), max_voxels=8).shape == (2, 2, 2)
