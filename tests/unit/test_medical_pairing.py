"""CT+MR pairing (MR resampled onto the CT grid) and the MONAI preprocessing."""

from __future__ import annotations

import numpy as np
import pytest

from raylens_domains.medical import (
    DeidConfig,
    DicomIngestConfig,
    PhantomConfig,
    Pseudonymizer,
    VolumeTransformConfig,
    affine,
    fusion_inputs,
    generate_phantoms,
    ingest_series,
    normalize_volume,
    pair_rows,
)
from raylens_domains.medical.phantom import render_phantom
from raylens_domains.medical.transforms import NormalizeVolumed

KEY = "pairing-test-key-0000000000000000"
SMALL = dict(
    ct_size=16,
    ct_slices=10,
    ct_pixel_mm=6.0,
    ct_slice_mm=8.0,
    mr_size=16,
    mr_slices=9,
    mr_pixel_mm=6.5,
    mr_slice_mm=9.0,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    ph = generate_phantoms(
        tmp_path_factory.mktemp("pairing"),
        PhantomConfig(n_patients=4, seed=0, same_study=False, missing_modality_fraction=0.3, **SMALL),
    )
    rows, _ = ingest_series(ph.root, DicomIngestConfig(deid=DeidConfig(key=KEY), labels=ph.labels()))
    return ph, rows


def _points(shape, a):
    idx = np.indices(shape).reshape(3, -1).astype(float)
    return (a[:3, :3] @ idx + a[:3, 3:4]).T.reshape(*shape, 3)


def test_pair_by_patient_joins_ct_and_mr_and_aligns_mr_to_the_ct_grid(data):
    ph, rows = data
    paired, notes = pair_rows(rows, by="patient")
    assert len(paired) == len(ph.patients)
    by_pid = {Pseudonymizer(KEY).patient_id(p.patient_id): p for p in ph.patients}
    n_both = 0
    for row in paired:
        p = by_pid[row["patient_id"]]
        assert row["modalities"] == "+".join(p.modalities)
        assert row["label"] == p.label
        if row["has_ct"] and row["has_mr"]:
            n_both += 1
            assert row["mr_volume"].shape == row["ct_volume"].shape
            # the resampled MR matches the MR phantom evaluated on the CT grid
            a = affine(row["spacing"], row["origin"], row["direction"])
            truth = render_phantom(_points(row["ct_volume"].shape, a), p.anatomy, "MR")
            inside = truth > 50  # away from the edge of the MR field of view
            err = np.median(np.abs(row["mr_volume"][inside] - truth[inside]))
            assert err < 0.15 * np.median(truth[inside])
            assert row["mr_native_volume"].shape == (SMALL["mr_slices"], 16, 16)
        else:
            missing = "ct_volume" if not row["has_ct"] else "mr_native_volume"
            assert row[missing].shape == (1, 1, 1)
    assert n_both >= 1


def test_pair_by_study_with_separate_studies_gives_one_row_per_series(data):
    _, rows = data
    paired, _ = pair_rows(rows, by="study")
    assert len(paired) == len(rows)  # same_study=False: CT and MR are in different studies
    with pytest.raises(ValueError, match="by must be one of"):
        pair_rows(rows, by="series")


def test_extra_series_are_noted(data):
    _, rows = data
    ct = next(r for r in rows if r["modality"] == "CT")
    dup = dict(ct, series_uid="2.25.1", volume=ct["volume"][:-1])
    paired, notes = pair_rows([ct, dup], by="patient")
    assert len(paired) == 1 and paired[0]["ct_series_uid"] == ct["series_uid"]
    assert any("2 CT series" in n for _, n in notes)


def test_normalize_volume_orients_resamples_windows_and_pads(data):
    _, rows = data
    cfg = VolumeTransformConfig(target_spacing=(4.0, 4.0, 4.0), spatial_size=(20, 20, 20))
    ct = next(r for r in rows if r["modality"] == "CT")
    v, sp, org, d = normalize_volume(ct["volume"], ct["spacing"], ct["origin"], ct["direction"], "CT", cfg)
    assert v.shape == (20, 20, 20) and v.dtype == np.float32
    assert 0.0 <= v.min() and v.max() <= 1.0
    assert np.allclose(sp, 4.0)
    # RAS: the first array axis points (mostly) to patient Right = -x in LPS, the third to Superior = +z
    dm = d.reshape(3, 3)
    assert dm[0, 0] < -0.7 and dm[2, 2] > 0.7
    mr = next(r for r in rows if r["modality"] == "MR")
    v, *_ = normalize_volume(mr["volume"], mr["spacing"], mr["origin"], mr["direction"], "MR", cfg)
    body = v[v != 0]
    assert abs(body.mean()) < 0.3 and 0.5 < body.std() < 1.5


def test_normalize_volume_keeps_patient_positions(data):
    """The returned geometry describes the returned array: the body centre stays where it was."""
    ph, rows = data
    p = ph.patients[0]
    ct = (
        next(
            r for r in rows if r["modality"] == "CT" and r["patient_id"] == Pseudonymizer(KEY).patient_id(p.patient_id)
        )
        if "CT" in p.modalities
        else None
    )
    if ct is None:
        pytest.skip("patient 0 has no CT in this draw")
    cfg = VolumeTransformConfig(target_spacing=(4.0, 4.0, 4.0), spatial_size=(24, 24, 24))
    v, sp, org, d = normalize_volume(ct["volume"], ct["spacing"], ct["origin"], ct["direction"], "CT", cfg)
    truth = render_phantom(_points(v.shape, affine(sp, org, d)), p.anatomy, "CT")
    windowed = np.clip((truth + 150) / 500, 0, 1)
    assert np.corrcoef(v.ravel(), windowed.ravel())[0, 1] > 0.9


def test_dict_transform_on_a_batch(data):
    _, rows = data
    batch = {k: np.empty(2, dtype=object) for k in rows[0]}
    for k in rows[0]:
        for i in range(2):
            batch[k][i] = rows[i][k]
    out = NormalizeVolumed(VolumeTransformConfig(spatial_size=(8, 8, 8)))(batch)
    assert out["volume"].shape == (2, 8, 8, 8) and out["spacing"].shape == (2, 3)
    assert list(out["series_uid"]) == [rows[0]["series_uid"], rows[1]["series_uid"]]


def test_fusion_inputs_mark_missing_modalities(data):
    _, rows = data
    paired, _ = pair_rows(rows, by="patient")
    cfg = VolumeTransformConfig(spatial_size=(16, 16, 16))
    for p in paired:
        f = fusion_inputs(p, cfg)
        assert f["ct"].shape == f["mr"].shape == f["mr_aligned"].shape == (16, 16, 16)
        assert list(f["present"]) == [float(p["has_ct"]), float(p["has_mr"])]
        if not p["has_mr"]:
            assert not f["mr"].any() and not f["mr_aligned"].any()


def test_transform_config_validation():
    with pytest.raises(ValueError, match="target_spacing"):
        VolumeTransformConfig(target_spacing=(1, 0, 1))
    with pytest.raises(ValueError, match="ct_window"):
        VolumeTransformConfig(ct_window=(100, -100))
    with pytest.raises(ValueError, match="mr_norm"):
        VolumeTransformConfig(mr_norm="robust")


def test_predictor_uses_whatever_modalities_are_present(data):
    from raylens_domains.medical import EncoderConfig, FusionPredictor, create_fusion_model

    _, rows = data
    cfg = VolumeTransformConfig(spatial_size=(16, 16, 16))
    enc = EncoderConfig(widths=(4, 8, 8, 8))
    preds = FusionPredictor(create_fusion_model("late", encoder=enc), transform=cfg, pair_by="patient").predict_rows(
        rows
    )
    used = sorted(tuple(p.modalities_used) for p in preds)
    assert ("CT", "MR") in used and any(len(u) == 1 for u in used)
    assert all(0.0 <= p.probability <= 1.0 and p.model == "late" and not p.warnings for p in preds)
    early = FusionPredictor(create_fusion_model("early", encoder=enc), transform=cfg, pair_by="patient")
    single = [p for p in early.predict_rows(rows) if len(p.modalities_used) == 1]
    assert single and all("zero channel" in " ".join(p.warnings) for p in single)
    vecs, meta = early.embed_rows(rows)
    assert vecs.shape[0] == len(meta) == len(preds) and vecs.dtype == np.float32
    with pytest.raises(ValueError, match="DeidConfig"):
        early.read_upload({"a.dcm": b"x"})
