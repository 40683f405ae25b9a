"""Slice geometry: sort along the normal, spacing from the projection, gaps, affines, resampling."""

from __future__ import annotations

import numpy as np
import pytest

from raylens_domains.medical.errors import MissingSlicesError, MixedSeriesError, SeriesGeometryError
from raylens_domains.medical.geometry import (
    GeometryTolerance,
    VolumeGeometry,
    affine,
    affine_lps_to_ras,
    geometry_from_affine,
    resample_to_grid,
    slice_normal,
    sort_slices,
)


def _rot(axis, deg):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = np.deg2rad(deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def _oblique_stack(n=12, step=2.5, seed=0):
    rng = np.random.default_rng(seed)
    r = _rot([1, 2, 0.5], 35)
    row, col = r[:, 0], r[:, 1]
    normal = np.cross(row, col)
    origin = np.array([-20.0, 13.0, 40.0])
    pos = origin + np.arange(n)[:, None] * step * normal
    perm = rng.permutation(n)
    return pos[perm], [*row, *col], perm, normal


def test_oblique_sort_uses_projection_on_the_normal():
    pos, iop, perm, normal = _oblique_stack()
    g = sort_slices(pos, iop)
    # the k-th sorted slice is the one that was generated k-th
    assert np.array_equal(perm[g.order], np.arange(len(perm)))
    assert g.slice_spacing == pytest.approx(2.5, abs=1e-9)
    assert np.allclose(g.normal, normal)
    assert g.warnings == ()
    # z alone (MONAI PydicomReader's way) gives a different, wrong spacing for this oblique stack
    z_spacing = np.mean(np.abs(np.diff(np.sort(pos[:, 2]))))
    assert abs(z_spacing - 2.5) > 0.2


def test_sagittal_series_has_constant_z_and_still_sorts():
    iop = [0, 1, 0, 0, 0, -1]  # rows along A, columns along -S: normal along x
    xs = np.array([7.0, -3.0, 2.0, -8.0, 12.0])
    pos = np.stack([xs, np.full(5, 4.0), np.full(5, 100.0)], axis=1)
    g = sort_slices(pos, iop)
    assert np.allclose(slice_normal(iop), [-1, 0, 0]) or np.allclose(slice_normal(iop), [1, 0, 0])
    proj = pos[g.order] @ g.normal
    assert np.all(np.diff(proj) > 0)
    assert g.slice_spacing == pytest.approx(5.0)


def test_gap_is_missing_slices_error_or_a_warning_when_allowed():
    pos, iop, _, _ = _oblique_stack(n=10)
    g0 = sort_slices(pos, iop)
    keep = np.ones(10, bool)
    keep[g0.order[4]] = False  # drop the 5th slice along the normal
    with pytest.raises(MissingSlicesError, match="missing slices.*about 1 slice"):
        sort_slices(pos[keep], iop)
    g = sort_slices(pos[keep], iop, tolerance=GeometryTolerance(allow_gaps=True))
    assert g.n_missing == 1
    assert any("missing slices" in w for w in g.warnings)


def test_uneven_spacing_is_reported():
    pos = np.array([[0, 0, z] for z in (0.0, 2.0, 4.0, 6.3, 8.3, 10.3)])
    g = sort_slices(pos, [1, 0, 0, 0, 1, 0])
    assert any("uneven slice spacing" in w for w in g.warnings)


def test_duplicate_positions_are_a_mixed_series():
    pos = np.array([[0, 0, z] for z in (0.0, 2.0, 2.0, 4.0)])
    with pytest.raises(MixedSeriesError, match="share a position"):
        sort_slices(pos, [1, 0, 0, 0, 1, 0])


def test_bad_orientation_is_a_geometry_error():
    with pytest.raises(SeriesGeometryError):
        slice_normal([1, 0, 0, 1, 0, 0])
    with pytest.raises(SeriesGeometryError):
        slice_normal([1, 0, 0])


def test_tolerance_validation_names_the_field():
    with pytest.raises(ValueError, match="gap_factor"):
        GeometryTolerance(gap_factor=1.0)
    with pytest.raises(ValueError, match="uneven_rtol"):
        GeometryTolerance(uneven_rtol=0.9)


def test_affine_round_trip_and_ras():
    d = _rot([0.3, 1, 0.2], 20)
    sp, org = np.array([2.5, 0.7, 0.8]), np.array([1.0, -2.0, 3.0])
    a = affine(sp, org, d.reshape(9))
    sp2, org2, d2 = geometry_from_affine(a)
    assert np.allclose(sp2, sp) and np.allclose(org2, org) and np.allclose(d2, d.reshape(9))
    ras = affine_lps_to_ras(a)
    assert np.allclose(ras[:2], -a[:2]) and np.allclose(ras[2:], a[2:])


def test_resample_to_grid_identity_and_shift():
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(6, 7, 8)).astype(np.float32)
    a = affine([2, 1, 1], [0, 0, 0], np.eye(3).reshape(9))
    assert np.allclose(resample_to_grid(vol, a, a, vol.shape), vol, atol=1e-5)
    shifted = affine([2, 1, 1], [2, 0, 0], np.eye(3).reshape(9))  # one slice further along axis 0
    out = resample_to_grid(vol, a, shifted, (5, 7, 8))
    assert np.allclose(out, vol[1:], atol=1e-5)


def test_volume_geometry_is_one_value_with_an_affine_and_an_arrow_friendly_row_form():
    import json

    import pyarrow as pa

    d = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], float)  # columns: axis 0 along z, axis 2 along x
    g = VolumeGeometry(spacing=np.array([2.5, 1.0, 0.5]), origin=[-10, 5, 3], direction=d.reshape(9), shape=(4, 6, 8))
    a = g.affine
    assert np.allclose(a @ [1, 0, 0, 1], [-10, 5, 5.5, 1]) and np.allclose(a @ [0, 0, 2, 1], [-9, 5, 3, 1])
    assert VolumeGeometry.from_affine(a, g.shape) == g and g.with_shape((1, 1, 1)).shape == (1, 1, 1)
    row = g.to_dict()
    assert json.loads(json.dumps(row)) == row  # plain numbers
    struct = pa.array([row, row])  # one Arrow struct column, as Ray Data and parquet store it
    assert pa.types.is_struct(struct.type) and VolumeGeometry.of(struct.to_pylist()[1]) == g
    assert VolumeGeometry.of(g) is g


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(spacing=(1, 0, 1)), "spacing must be positive"),
        (dict(origin=(0, np.nan, 0)), "origin needs 3 finite numbers"),
        (dict(direction=np.eye(2)), "direction needs 9 finite numbers"),
        (dict(shape=(4, 4)), "shape needs 3 positive ints"),
        (dict(shape=(4, 4, 0.5)), "shape needs 3 positive ints"),
    ],
)
def test_volume_geometry_validation_names_the_field(kwargs, match):
    base = dict(spacing=(1, 1, 1), origin=(0, 0, 0), direction=np.eye(3).reshape(9), shape=(4, 4, 4))
    with pytest.raises(ValueError, match=match):
        VolumeGeometry(**{**base, **kwargs})


def test_volume_geometry_of_refuses_loose_values():
    with pytest.raises(TypeError, match="rows carry it in their 'geometry' column"):
        VolumeGeometry.of(np.eye(4))
    with pytest.raises(ValueError, match=r"lacks \['shape'\]"):
        VolumeGeometry.of({"spacing": [1, 1, 1], "origin": [0, 0, 0], "direction": list(np.eye(3).ravel())})
