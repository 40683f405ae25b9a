"""DICOM ingest without Ray: scanning, headers, series volumes, LUT, multi-frame, RLE, decoders, skips."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from raylens_domains.medical import (
    DeidConfig,
    DicomIngestConfig,
    MissingDecoderError,
    PhantomConfig,
    Pseudonymizer,
    generate_phantoms,
    ingest_series,
    list_dicom_files,
    load_series,
    read_header,
)
from raylens_domains.medical.dicom_scan import group_series, read_headers
from raylens_domains.medical.errors import NotDicomError
from raylens_domains.medical.geometry import VolumeGeometry
from raylens_domains.medical.phantom import render_phantom
from raylens_domains.medical.volume import apply_rescale, check_decoder

KEY = "unit-test-key-0123456789abcdef"
PSEUDO = Pseudonymizer(KEY)
SMALL = dict(
    ct_size=16,
    ct_slices=10,
    ct_pixel_mm=6.0,
    ct_slice_mm=8.0,
    mr_size=16,
    mr_slices=9,
    mr_pixel_mm=6.0,
    mr_slice_mm=9.0,
)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    return generate_phantoms(
        root,
        PhantomConfig(
            n_patients=3, seed=5, extras=True, rle_fraction=0.5, multiframe_fraction=0.5, ct_tilt_fraction=0.5, **SMALL
        ),
    )


@pytest.fixture(scope="module")
def ingested(phantom):
    cfg = DicomIngestConfig(deid=DeidConfig(key=KEY, report_paths=True), labels=phantom.labels())
    return ingest_series(phantom.root, cfg)


def _patient_points(row):
    d, h, w = row["volume"].shape
    idx = np.indices((d, h, w)).reshape(3, -1).astype(float)
    a = VolumeGeometry.of(row["geometry"]).affine
    return (a[:3, :3] @ idx + a[:3, 3:4]).T.reshape(d, h, w, 3)


def test_every_phantom_series_is_a_row_and_bad_ones_are_reported(phantom, ingested):
    rows, report = ingested
    assert len(rows) == 2 * len(phantom.patients)
    assert report.n_ok == len(rows)
    reasons = {Path(s.path.split(" [")[0]).name: s.reason for s in report.skipped}
    assert reasons["notes.txt"].startswith("not a DICOM file")
    assert reasons["labels.csv"].startswith("not a DICOM file")
    assert reasons["missing_slice"].startswith("missing slices")
    assert reasons["mixed"].startswith("mixed series")
    assert report.n_skipped == 4
    assert report.reasons() == {"not a DICOM file": 2, "missing slices": 1, "mixed series": 1}


def test_volumes_match_the_phantom_geometry(phantom, ingested):
    """Sorting, spacing, direction and origin are right: the volume equals the analytic phantom."""
    rows, _ = ingested
    by_patient = {PSEUDO.patient_id(p.patient_id): p for p in phantom.patients}
    kinds = set()
    for row in rows:
        p = by_patient[row["patient_id"]]
        truth = render_phantom(_patient_points(row), p.anatomy, row["modality"])
        err = np.median(np.abs(row["volume"] - truth))
        scale = 10.0 if row["modality"] == "CT" else 15.0 * p.anatomy["mr_scale"]
        assert err < 2 * scale, (row["modality"], err)
        # a reversed slice order would not match
        flipped = render_phantom(_patient_points(row)[::-1], p.anatomy, row["modality"])
        assert np.median(np.abs(row["volume"] - flipped)) > err
        assert row["label"] == p.label
        kinds.add((row["modality"], row["transfer_syntax"]))
        d = VolumeGeometry.of(row["geometry"]).direction_matrix
        assert np.allclose(d.T @ d, np.eye(3), atol=1e-5)
    assert ("CT", "1.2.840.10008.1.2.5") in kinds or ("MR", "1.2.840.10008.1.2.5") in kinds  # RLE read


def test_ct_is_in_hounsfield_units(ingested):
    rows, _ = ingested
    for row in rows:
        if row["modality"] == "CT":
            v = row["volume"]
            assert -1100 < v.min() < -900  # air
            assert 20 < np.median(v[v > -200]) < 60  # soft tissue ~40 HU


def test_multiframe_series_is_one_file(phantom, ingested):
    rows, _ = ingested
    mf = [p for p in phantom.patients if len(list(Path(p.folders["MR"]).iterdir())) == 1]
    assert mf, "the fixture should hold at least one multi-frame MR"
    ds = pydicom.dcmread(next(Path(mf[0].folders["MR"]).iterdir()), stop_before_pixels=True)
    assert int(ds.NumberOfFrames) == SMALL["mr_slices"]
    mr_rows = [r for r in rows if r["modality"] == "MR" and r["patient_id"] == PSEUDO.patient_id(mf[0].patient_id)]
    assert mr_rows[0]["volume"].shape == (SMALL["mr_slices"], 16, 16)
    assert mr_rows[0]["geometry"]["spacing"][0] == pytest.approx(SMALL["mr_slice_mm"], rel=1e-3)
    assert mr_rows[0]["geometry"]["shape"] == list(mr_rows[0]["volume"].shape)


def test_sorting_ignores_instance_number(phantom):
    p = phantom.patients[0]
    hs = [h for f in sorted(Path(p.folders["CT"]).iterdir()) for h in read_header(f, PSEUDO)]
    inst = [h.instance_number for h in hs]
    vol = load_series(hs)
    order = np.argsort([np.dot(h.position, vol.geometry.direction_matrix[:, 0]) for h in hs])
    assert [inst[i] for i in order] != sorted(inst)  # instance numbers are scrambled...
    assert np.allclose(vol.geometry.origin, hs[order[0]].position)  # ...and the volume starts at the lowest slice


def test_headers_are_pseudonymised(phantom):
    p = phantom.patients[0]
    h = read_header(next(Path(p.folders["CT"]).iterdir()), PSEUDO)[0]
    assert h.patient_id == PSEUDO.patient_id(p.patient_id) != p.patient_id
    assert h.series_uid == PSEUDO.uid(p.series_uids["CT"]) != p.series_uids["CT"]
    assert h.study_uid.startswith("2.25.")


def test_modality_lut_matches_pydicom_on_ct_small():
    from pydicom.pixels import apply_modality_lut

    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    h = read_header(path, PSEUDO)
    assert h[0].rescale_intercept == -1024
    vol = load_series(h)
    assert vol.volume.shape == (1, 128, 128)
    assert np.allclose(vol.volume[0], apply_modality_lut(ds.pixel_array, ds))
    assert np.allclose(apply_rescale(np.array([0, 1024]), 1.0, -1024.0), [-1024, 0])
    assert np.allclose(vol.geometry.spacing, [5.0, 0.661468, 0.661468])


def test_rle_and_uncompressed_bundled_files_decode_the_same():
    a = load_series(read_header(get_testdata_file("MR_small.dcm"), PSEUDO))
    b = load_series(read_header(get_testdata_file("MR_small_RLE.dcm"), PSEUDO))
    assert b.transfer_syntax == "1.2.840.10008.1.2.5"
    assert np.array_equal(a.volume, b.volume)


def test_bundled_multiframe_rtdose_uses_grid_frame_offsets():
    hs = read_header(get_testdata_file("rtdose.dcm"), PSEUDO)
    assert len(hs) == 15 and [h.frame for h in hs] == list(range(15))
    vol = load_series(hs)
    assert vol.volume.shape == (15, 10, 10)
    assert np.allclose(vol.geometry.spacing, [5.0, 10.0, 10.0])
    raw = pydicom.dcmread(get_testdata_file("rtdose.dcm")).pixel_array
    assert np.allclose(vol.volume, raw * float(pydicom.dcmread(get_testdata_file("rtdose.dcm")).DoseGridScaling))


def test_colour_multiframe_is_refused_with_a_reason():
    hs = read_header(get_testdata_file("SC_rgb_rle_2frame.dcm"), PSEUDO)
    with pytest.raises(Exception, match="not a grey-scale volume|no geometry"):
        load_series(hs)


def test_dicomdir_lists_its_files_and_real_series_ingest():
    d = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests"
    files = list_dicom_files(d / "DICOMDIR")
    assert len(files) == 31
    rows, report = ingest_series(d / "DICOMDIR", DicomIngestConfig(deid=DeidConfig(key=KEY), min_slices=2))
    assert [r["volume"].shape for r in rows] == [(5, 16, 16)]  # the one clean CT series
    reasons = " | ".join(s.reason for s in report.skipped)
    assert "modality not ingested (CR" in reasons
    assert "missing slices" in reasons and "mixed series" in reasons


def test_missing_decoder_names_the_package(monkeypatch, tmp_path):
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEG2000Lossless

    dec = get_decoder(JPEG2000Lossless)
    monkeypatch.setattr(dec, "_available", {})
    monkeypatch.setattr(dec, "_unavailable", {"pylibjpeg": ("pylibjpeg", "pylibjpeg-openjpeg")})
    with pytest.raises(MissingDecoderError, match="pip install pylibjpeg pylibjpeg-openjpeg"):
        check_decoder(JPEG2000Lossless)
    # at the ingest level the series is skipped with that reason and the rest goes on
    src = get_testdata_file("MR_small_jp2klossless.dcm")
    shutil.copy(src, tmp_path / "a.dcm")
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "b.dcm")
    rows, report = ingest_series(tmp_path, DicomIngestConfig(deid=DeidConfig(key=KEY), min_slices=1))
    assert [r["modality"] for r in rows] == ["CT"]
    assert report.skipped[0].reason.startswith("missing decoder (") and "pylibjpeg-openjpeg" in report.skipped[0].reason
    assert report.reasons() == {"missing decoder": 1}


def test_transfer_syntax_without_any_decoder(tmp_path):
    from pydicom.uid import MPEG2MPML

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    with pytest.raises(MissingDecoderError, match="MPEG2"):
        check_decoder(MPEG2MPML)


def test_installed_decoders_read_jpeg_family():
    """pylibjpeg(-libjpeg, -openjpeg) are dependencies, so JPEG 2000 and JPEG-LS decode."""
    base = load_series(read_header(get_testdata_file("MR_small.dcm"), PSEUDO)).volume
    for name in ("MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"):
        v = load_series(read_header(get_testdata_file(name), PSEUDO)).volume
        assert np.array_equal(v, base), name


def test_not_dicom_and_no_image(tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(NotDicomError, match="not a DICOM file"):
        read_header(tmp_path / "x.txt", PSEUDO)
    with pytest.raises(NotDicomError, match="not an image"):
        read_header(get_testdata_file("rtplan.dcm"), PSEUDO)
    headers, skipped = read_headers([str(tmp_path / "x.txt"), get_testdata_file("CT_small.dcm")], PSEUDO)
    assert len(headers) == 1 and len(skipped) == 1


def test_missing_folder_is_an_input_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        list_dicom_files(tmp_path / "nope")


def test_several_series_in_one_folder_are_grouped(phantom, tmp_path):
    a, b = phantom.patients[0], phantom.patients[1]
    for p in (a, b):
        for f in Path(p.folders["CT"]).iterdir():
            shutil.copy(f, tmp_path / f"{p.index}_{f.name}")
    headers, _ = read_headers(list_dicom_files(tmp_path), PSEUDO)
    groups = group_series(headers)
    assert len(groups) == 2 and all(len(g) == SMALL["ct_slices"] for g in groups.values())


def test_ingest_config_validation():
    with pytest.raises(ValueError, match="label_key"):
        DicomIngestConfig(deid=DeidConfig(key=KEY), label_key="PatientName")
    with pytest.raises(ValueError, match="min_slices"):
        DicomIngestConfig(deid=DeidConfig(key=KEY), min_slices=0)


def test_phantom_files_are_stored_out_of_order(phantom):
    p = phantom.patients[0]
    files = sorted(os.listdir(p.folders["CT"]))
    z = [
        float(pydicom.dcmread(Path(p.folders["CT"]) / f, stop_before_pixels=True).ImagePositionPatient[2])
        for f in files
    ]
    assert z != sorted(z) and z != sorted(z, reverse=True)


def test_fast_header_parsing_matches_pydicom(phantom):
    """The raw-bytes fast path of the header pass gives what pydicom's own conversion gives."""
    from raylens_domains.medical.dicom_scan import _FAST_TAGS, _fast

    files = [str(f) for p in phantom.patients for m in p.modalities for f in Path(p.folders[m]).iterdir()][:20]
    files += [
        get_testdata_file(n)
        for n in (
            "CT_small.dcm",
            "MR_small.dcm",
            "MR_small_bigendian.dcm",
            "MR_small_implicit.dcm",
            "rtdose.dcm",
            "liver_1frame.dcm",
        )
    ]
    n_checked = 0
    for f in files:
        fast_ds = pydicom.dcmread(f, stop_before_pixels=True)
        ref_ds = pydicom.dcmread(f, stop_before_pixels=True)
        for kw in _FAST_TAGS:
            ref = ref_ds.get(kw)
            ref = None if ref in (None, "") else ref
            got = _fast(fast_ds, kw)
            if isinstance(ref, (list, pydicom.multival.MultiValue)):
                assert got == pytest.approx([float(x) for x in ref]), (f, kw)
            elif ref is not None and not isinstance(ref, str):
                assert got == pytest.approx(float(ref)), (f, kw)
            else:
                assert got == (str(ref) if ref is not None else None), (f, kw)
            n_checked += ref is not None
    assert n_checked > 100


def test_native_pixel_fast_path_matches_pixel_array(phantom):
    from raylens_domains.medical.volume import native_pixels

    files = [
        get_testdata_file(n)
        for n in (
            "CT_small.dcm",
            "MR_small.dcm",
            "MR_small_bigendian.dcm",
            "MR_small_implicit.dcm",
            "rtdose.dcm",
            "MR_small_RLE.dcm",
            "SC_rgb_small_odd.dcm",
            "liver_1frame.dcm",
        )
    ]
    files += [str(next(Path(p.folders[m]).iterdir())) for p in phantom.patients for m in p.modalities]
    n_fast = 0
    for f in files:
        ds = pydicom.dcmread(f)
        fast = native_pixels(ds, ds.file_meta.TransferSyntaxUID)
        if fast is not None:
            n_fast += 1
            ref = ds.pixel_array
            assert fast.shape == ref.shape and fast.dtype.kind == ref.dtype.kind, f
            assert np.array_equal(fast, ref), f
    assert n_fast >= 6


def test_plain_pixels_are_read_at_the_offset_found_by_the_header_pass(phantom, tmp_path):
    from dataclasses import replace

    from raylens_domains.medical.volume import read_plain_pixels

    files = [
        get_testdata_file(n)
        for n in (
            "CT_small.dcm",
            "MR_small.dcm",
            "MR_small_bigendian.dcm",
            "MR_small_implicit.dcm",
            "rtdose.dcm",
            "MR_small_RLE.dcm",
        )
    ]
    files += [str(f) for p in phantom.patients for m in p.modalities for f in list(Path(p.folders[m]).iterdir())[:2]]
    n_plain = 0
    for f in files:
        h = read_header(f, PSEUDO)[0]
        arr = read_plain_pixels(f, h)
        if h.transfer_syntax == "1.2.840.10008.1.2.5":
            assert h.pixel_offset is None and arr is None  # RLE: pydicom decodes
            continue
        if arr is not None:
            n_plain += 1
            assert np.array_equal(arr, pydicom.dcmread(f).pixel_array), f
            # a wrong offset is detected, not trusted
            assert read_plain_pixels(f, replace(h, pixel_offset=h.pixel_offset - 2)) is None
    assert n_plain >= 6


def test_a_frame_bomb_is_refused_before_anything_is_built_per_frame(tmp_path):
    """NumberOfFrames = 2^31 - 1 on a file that holds one frame: refused from the header, in bounded time
    and memory (a list of 2^31 per-frame entries would need hundreds of GB)."""
    from raylens_domains.medical.errors import DicomError

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.NumberOfFrames = 2**31 - 1
    bomb = tmp_path / "bomb.dcm"
    ds.save_as(bomb)
    with pytest.raises(DicomError, match="voxel budget"):
        read_header(bomb, PSEUDO)
    ds.NumberOfFrames = 40  # under the voxel budget, but the file holds pixels for one frame only
    ds.save_as(bomb)
    with pytest.raises(DicomError, match="NumberOfFrames=40 but the file holds pixel data for at most 1 frames"):
        read_header(bomb, PSEUDO)
    with pytest.raises(DicomError, match="voxel budget of 100 per series"):  # the ingest's max_voxels is the budget
        read_header(bomb, PSEUDO, max_voxels=100)
    headers, skipped = read_headers([str(bomb), get_testdata_file("CT_small.dcm")], PSEUDO)
    assert len(headers) == 1 and skipped[0][0] == str(bomb) and "NumberOfFrames=40" in skipped[0][1]


def test_any_error_in_one_series_is_a_skipped_row_without_its_message(monkeypatch):
    """The Ray reader's per-series step: an unexpected exception (not a DicomError) becomes a skip with
    the exception's type only (its message may quote header values), and the batch goes on."""
    import json

    from raylens_domains.medical import ray_reader

    good = [h.to_dict() for h in read_header(get_testdata_file("CT_small.dcm"), PSEUDO)]
    real = ray_reader.load_series_row
    calls = []

    def flaky(headers, config):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("PatientName=Doe^John broke the resampler")
        return real(headers, config)

    monkeypatch.setattr(ray_reader, "load_series_row", flaky)
    cfg = DicomIngestConfig(deid=DeidConfig(key=KEY), min_slices=1)
    payload = np.asarray([json.dumps(good), json.dumps(good)], dtype=object)
    out = ray_reader._series_batch({"headers": payload}, cfg)
    assert list(out["skip_reason"]) == ["unexpected error in this series (RuntimeError)", ""]
    assert "Doe" not in json.dumps([str(v) for v in out["skip_reason"]])


def test_series_batch_size_batches_normalised_series_without_bundling_blocks():
    from raylens_domains.medical.ray_reader import NORMALIZED_SERIES_PER_CALL, series_batch_size

    assert series_batch_size(144, 4, normalized=False) == 1  # raw volumes can be large: one per call
    assert series_batch_size(144, 4, normalized=True) == NORMALIZED_SERIES_PER_CALL == 8
    assert series_batch_size(18, 4, normalized=True) == 4  # the smallest block holds 4
    assert series_batch_size(8, 8, normalized=True) == 1  # one series per block: a bigger batch would bundle blocks
    assert series_batch_size(3, 4, normalized=True) == 1
