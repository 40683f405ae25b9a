"""CT+MR pairing (MR resampled onto the CT grid) and the MONAI preprocessing."""

from __future__ import annotations

import numpy as np
import pytest

from raylens_domains.medical import (
    DeidConfig,
    DicomIngestConfig,
    PhantomConfig,
    Pseudonymizer,
    VolumeGeometry,
    VolumeTransformConfig,
    fusion_inputs,
    generate_phantoms,
    ingest_series,
    normalize_volume,
    pair_rows,
)
from raylens_domains.medical.phantom import render_phantom
from raylens_domains.medical.transforms import FusionInputsd, NormalizeVolumed, volume_normalizer

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
            geo = VolumeGeometry.of(row["geometry"])
            assert geo.shape == row["ct_volume"].shape
            truth = render_phantom(_points(row["ct_volume"].shape, geo.affine), p.anatomy, "MR")
            inside = truth > 50  # away from the edge of the MR field of view
            err = np.median(np.abs(row["mr_volume"][inside] - truth[inside]))
            assert err < 0.15 * np.median(truth[inside])
            assert row["mr_native_volume"].shape == (SMALL["mr_slices"], 16, 16)
            assert VolumeGeometry.of(row["mr_native_geometry"]).shape == row["mr_native_volume"].shape
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
    v, geo = normalize_volume(ct["volume"], ct["geometry"], "CT", cfg)
    assert v.shape == (20, 20, 20) == geo.shape and v.dtype == np.float32
    assert 0.0 <= v.min() and v.max() <= 1.0
    assert np.allclose(geo.spacing, 4.0)
    # RAS: the first array axis points (mostly) to patient Right = -x in LPS, the third to Superior = +z
    dm = geo.direction_matrix
    assert dm[0, 0] < -0.7 and dm[2, 2] > 0.7
    mr = next(r for r in rows if r["modality"] == "MR")
    v, _ = normalize_volume(mr["volume"], mr["geometry"], "MR", cfg)
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
    v, geo = normalize_volume(ct["volume"], ct["geometry"], "CT", cfg)
    truth = render_phantom(_points(v.shape, geo.affine), p.anatomy, "CT")
    windowed = np.clip((truth + 150) / 500, 0, 1)
    assert np.corrcoef(v.ravel(), windowed.ravel())[0, 1] > 0.9


def test_dict_transform_on_a_batch(data):
    _, rows = data
    batch = {k: np.empty(2, dtype=object) for k in rows[0]}
    for k in rows[0]:
        for i in range(2):
            batch[k][i] = rows[i][k]
    cfg = VolumeTransformConfig(spatial_size=(8, 8, 8))
    out = NormalizeVolumed(cfg)(batch)
    assert (
        out["volume"].shape == (2, 8, 8, 8) and [VolumeGeometry.of(g).shape for g in out["geometry"]] == [(8, 8, 8)] * 2
    )
    assert list(out["series_uid"]) == [rows[0]["series_uid"], rows[1]["series_uid"]]
    assert list(out["normalization"]) == [cfg.fingerprint()] * 2


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
    from raylens.models import create_model
    from raylens_domains.medical import EncoderConfig, FusionPredictor

    _, rows = data
    cfg = VolumeTransformConfig(spatial_size=(16, 16, 16))
    enc = EncoderConfig(widths=(4, 8, 8, 8))
    preds = FusionPredictor(create_model("late", encoder=enc), transform=cfg, pair_by="patient").predict_rows(rows)
    used = sorted(tuple(p.modalities_used) for p in preds)
    assert ("CT", "MR") in used and any(len(u) == 1 for u in used)
    assert all(0.0 <= p.probability <= 1.0 and p.model == "late" and not p.warnings for p in preds)
    early = FusionPredictor(create_model("early", encoder=enc), transform=cfg, pair_by="patient")
    single = [p for p in early.predict_rows(rows) if len(p.modalities_used) == 1]
    assert single and all("zero channel" in " ".join(p.warnings) for p in single)
    vecs, meta = early.embed_rows(rows)
    assert vecs.shape[0] == len(meta) == len(preds) and vecs.dtype == np.float32
    with pytest.raises(ValueError, match="DeidConfig"):
        early.read_upload({"a.dcm": b"x"})


def _once_and_twice(raw, geometry, modality, cfg):
    once, geo = normalize_volume(raw, geometry, modality, cfg)
    kept = once.copy()
    twice = normalize_volume(once, geo, modality, cfg)[0]
    assert np.array_equal(once, kept)  # the input is never written to (MONAI's no-op steps share storage)
    return once, twice


def test_normalisation_happens_once_on_both_paths(data):
    """Raw rows -> pair -> fusion_inputs, and rows normalised at read -> pair -> fusion_inputs: each
    volume goes through the MONAI recipe exactly once; a second pass is refused or skipped."""
    _, rows = data
    cfg = VolumeTransformConfig(target_spacing=(6.0, 6.0, 6.0), spatial_size=(16, 16, 16))
    both = next(p for p in pair_rows(rows, by="patient")[0] if p["has_ct"] and p["has_mr"])
    ct_row = next(r for r in rows if r["series_uid"] == both["ct_series_uid"])
    mr_row = next(r for r in rows if r["series_uid"] == both["mr_series_uid"])
    ct_once, ct_twice = _once_and_twice(ct_row["volume"], ct_row["geometry"], "CT", cfg)
    mr_once, mr_twice = _once_and_twice(mr_row["volume"], mr_row["geometry"], "MR", cfg)
    assert not np.allclose(ct_once, ct_twice, atol=1e-3)  # a second CT window is not a no-op...
    assert ct_twice.max() < 0.31 < ct_once.max()  # ...it squeezes [0, 1] into (150 + [0, 1]) / 500

    # path 1: raw rows, paired, normalised by fusion_inputs
    raw = fusion_inputs(both, cfg)
    assert np.array_equal(raw["mr"], mr_once)
    assert np.array_equal(raw["ct"], normalize_volume(both["ct_volume"], both["geometry"], "CT", cfg)[0])
    assert raw["ct"].max() > 0.5

    # path 2: normalised while read (what read_dicom(transform=cfg) does), then paired and assembled
    normed = [NormalizeVolumed(cfg).row(r) for r in (ct_row, mr_row)]
    with pytest.raises(ValueError, match="already normalised.*normalise once"):
        NormalizeVolumed(cfg).row(normed[0])
    (pre,), _ = pair_rows(normed, by="patient")
    assert pre["normalization"] == cfg.fingerprint()
    ready = fusion_inputs(pre, cfg)
    assert np.array_equal(ready["ct"], ct_once) and np.array_equal(ready["mr"], mr_once)
    assert ready["mr_aligned"].shape == (16, 16, 16) and ready["mr_aligned"].any()
    with pytest.raises(ValueError, match="normalised with .* not with the given config"):
        fusion_inputs(pre, VolumeTransformConfig(target_spacing=(5.0, 5.0, 5.0), spatial_size=(16, 16, 16)))
    with pytest.raises(ValueError, match="differ in normalization"):
        pair_rows([normed[0], mr_row], by="patient")


def test_monai_pipelines_are_built_once_per_recipe_not_per_volume(data, monkeypatch):
    """Counts real ``monai.transforms.Compose`` constructions while many volumes are normalised."""
    import pickle

    from monai.transforms import Compose

    _, rows = data
    built = []
    original = Compose.__init__

    def counting_init(self, *args, **kwargs):
        built.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(Compose, "__init__", counting_init)
    volume_normalizer.cache_clear()
    cfg = VolumeTransformConfig(target_spacing=(8.0, 8.0, 8.0), spatial_size=(8, 8, 8))
    series = [dict(r) for r in rows[:6]]
    assert {r["modality"] for r in series} == {"CT", "MR"}
    normed = [NormalizeVolumed(cfg).row(r) for r in series]  # a new dict transform per row, even
    paired, _ = pair_rows(rows, by="patient")
    batch = {k: np.empty(len(paired), dtype=object) for k in paired[0]}
    for i, p in enumerate(paired):
        for k in p:
            batch[k][i] = p[k]
    worker_copy = pickle.loads(pickle.dumps(FusionInputsd(cfg)))  # what a Ray task unpickles
    out = worker_copy(batch)
    assert len(normed) == 6 and out["ct"].shape == (len(paired), 8, 8, 8)
    assert len(built) == 2  # one CT and one MR pipeline for the whole run
    assert worker_copy.normalizer is volume_normalizer(cfg)
    normalize_volume(series[0]["volume"], series[0]["geometry"], series[0]["modality"], cfg)
    assert len(built) == 2
