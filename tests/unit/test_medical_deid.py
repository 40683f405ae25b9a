"""De-identification: the PS3.15 Basic Profile, keyed pseudonyms, and no PHI anywhere in the outputs."""

from __future__ import annotations

import io
import json
import logging
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
import pytest

from raylens.models import create_model
from raylens_domains.medical import (
    BASIC_PROFILE,
    DeidConfig,
    Deidentifier,
    DicomIngestConfig,
    FusionPredictor,
    PhantomConfig,
    Pseudonymizer,
    fusion_inputs,
    generate_phantoms,
    ingest_series,
    pair_rows,
)
from raylens_domains.medical.retrieval import build_case_index

KEY = "deid-test-key-000000000000000000"
SMALL = dict(
    ct_size=12,
    ct_slices=6,
    ct_pixel_mm=8.0,
    ct_slice_mm=12.0,
    mr_size=12,
    mr_slices=6,
    mr_pixel_mm=8.0,
    mr_slice_mm=12.0,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return generate_phantoms(
        tmp_path_factory.mktemp("deid_phantom"),
        PhantomConfig(n_patients=3, seed=11, extras=True, rle_fraction=0.5, multiframe_fraction=0.5, **SMALL),
    )


def _a_file(phantom, mod="CT"):
    return next(Path(phantom.patients[0].folders[mod]).iterdir())


def test_pseudonyms_are_keyed_consistent_and_valid():
    a, b = Pseudonymizer(KEY), Pseudonymizer(KEY + "x")
    assert a.uid("1.2.3") == a.uid("1.2.3") != b.uid("1.2.3")
    assert a.uid("1.2.3") != a.uid("1.2.4")
    uid = a.uid("1.2.840.113619.2.55.3.604688119.868.1234567890.123")
    assert uid.startswith("2.25.") and len(uid) <= 64 and uid.replace(".", "").isdigit()
    assert a.patient_id("MRN1") == a.patient_id("MRN1") != a.patient_id("MRN2")
    assert "key" not in repr(a).lower().replace("key=<hidden>", "")
    assert pickle.loads(pickle.dumps(a)).uid("9") == a.uid("9")


def test_patient_pseudonym_falls_back_in_a_fixed_order():
    """PatientID, else PatientName, else the study: never one shared pseudonym for anonymous studies."""
    p = Pseudonymizer(KEY)
    ds = pydicom.Dataset()
    ds.PatientID, ds.PatientName, ds.StudyInstanceUID = "MRN1", "Doe^Jane", "1.2.3"
    assert p.patient_of(ds) == p.patient_id("MRN1")
    ds.PatientID = ""
    by_name = p.patient_of(ds)
    assert by_name.startswith("PAT-") and by_name != p.patient_id("Doe^Jane")
    del ds.PatientName
    by_study = p.patient_of(ds)
    assert by_study not in (by_name, "PAT-UNKNOWN")
    del ds.StudyInstanceUID
    assert p.patient_of(ds) == "PAT-UNKNOWN"
    q = pickle.loads(pickle.dumps(Pseudonymizer(KEY, allow_burned_in_annotation=True)))
    assert q.allow_burned_in_annotation and q.uid("9") == p.uid("9")
    assert DeidConfig(key=KEY, allow_burned_in_annotation=True).pseudonymizer().allow_burned_in_annotation


def test_key_is_required_and_checked(monkeypatch):
    monkeypatch.delenv("RAYLENS_DEID_KEY", raising=False)
    with pytest.raises(ValueError, match="RAYLENS_DEID_KEY"):
        DeidConfig()
    with pytest.raises(ValueError, match="16 bytes"):
        DeidConfig(key="short")
    monkeypatch.setenv("RAYLENS_DEID_KEY", KEY)
    assert DeidConfig().pseudonymizer().uid("1") == Pseudonymizer(KEY).uid("1")
    assert KEY not in repr(DeidConfig())


def test_basic_profile_removes_phi_and_keeps_geometry(phantom):
    path = _a_file(phantom)
    ds = pydicom.dcmread(path)
    before = pydicom.dcmread(path)
    Deidentifier(DeidConfig(key=KEY)).apply(ds)
    p = Pseudonymizer(KEY)
    assert ds.PatientID == p.patient_id(before.PatientID) and str(ds.PatientName) == ds.PatientID
    assert ds.StudyInstanceUID == p.uid(before.StudyInstanceUID)
    assert ds.FrameOfReferenceUID == p.uid(before.FrameOfReferenceUID)
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID == p.uid(before.SOPInstanceUID)
    for kw in (
        "InstitutionName",
        "OtherPatientIDs",
        "OperatorsName",
        "StudyDescription",
        "RequestAttributesSequence",
        "SeriesDate",
    ):
        assert kw not in ds, kw
    for kw in ("PatientBirthDate", "AccessionNumber", "StudyDate", "ReferringPhysicianName"):
        assert ds.get(kw) in ("", None), kw
    assert not any(e.tag.is_private for e in ds.iterall())
    for kw in (
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "PixelSpacing",
        "SliceThickness",
        "RescaleIntercept",
        "RescaleSlope",
        "Rows",
        "Columns",
        "Modality",
    ):
        assert ds[kw].value == before[kw].value, kw
    assert ds.PixelData == before.PixelData
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"


def test_profile_table_covers_the_core_attributes():
    for tag, action in {
        (0x0010, 0x0010): "Z",
        (0x0010, 0x0020): "Z",
        (0x0020, 0x000D): "U",
        (0x0008, 0x0018): "U",
        (0x0008, 0x0080): "X",
        (0x0010, 0x0030): "Z",
    }.items():
        assert BASIC_PROFILE[tag] == action


def _all_bytes(root: Path) -> list[tuple[Path, bytes]]:
    return [(f, f.read_bytes()) for f in sorted(root.rglob("*")) if f.is_file()]


def _assert_no_phi(blobs, phi: list[str]):
    assert len(phi) > 20 and blobs
    for where, data in blobs:
        for value in phi:
            assert value.encode("utf-8") not in data, f"PHI {value!r} found in {where}"


def test_no_phi_value_appears_anywhere_in_the_outputs(phantom, tmp_path, caplog):
    """Rows, parquet, index metadata, the report, logs, de-identified DICOM copies and the
    prediction response: none holds a single PHI value from the source files."""
    out = tmp_path / "out"
    copies = out / "deid_copies"
    caplog.set_level(logging.DEBUG)
    cfg = DicomIngestConfig(deid=DeidConfig(key=KEY, output_dir=str(copies)), labels=phantom.labels())
    rows, report = ingest_series(phantom.root, cfg)
    assert len(rows) == 6 and report.n_skipped == 4

    # rows, as Python values and pickled
    (out / "rows.pkl").write_bytes(pickle.dumps(rows))
    (out / "rows.txt").write_text(repr([{k: v for k, v in r.items() if k != "volume"} for r in rows]))
    # parquet, volumes included
    table = pa.table({k: [r[k].tobytes() if isinstance(r[k], np.ndarray) else r[k] for r in rows] for k in rows[0]})
    pq.write_table(table, out / "rows.parquet")
    report.save(out / "report.json")
    # the similar-case index (its metadata parquet and manifest)
    paired, _ = pair_rows(rows)
    inputs = [fusion_inputs(p) for p in paired]
    arrays = {k: np.stack([i[k] for i in inputs]) for k in ("ct", "mr_aligned", "mr", "present")}
    model = create_model("mid")
    idx = build_case_index(model, arrays, [dict(p, label=p["label"]) for p in paired], checkpoint_hash="test")
    idx.save(out / "index")
    # the in-memory upload path used by the Serve app
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for mod in ("CT", "MR"):
            for f in Path(phantom.patients[1].folders[mod]).iterdir():
                zf.write(f, f"{mod}/{f.name}")
    members = {i.filename: zipfile.ZipFile(buf).read(i) for i in zipfile.ZipFile(buf).infolist()}
    predictor = FusionPredictor(model, deid=DeidConfig(key=KEY))
    preds, skipped = predictor.predict_upload(predictor.read_upload(members))
    assert preds and preds[0].modalities_used == ["CT", "MR"]
    (out / "response.json").write_text(json.dumps({"predictions": [p.to_dict() for p in preds], "skipped": skipped}))
    # logs
    (out / "log.txt").write_text("\n".join(r.getMessage() for r in caplog.records) + caplog.text)

    assert len(list(copies.rglob("*.dcm"))) == phantom.n_files  # every ingested file (skipped series excluded)
    # positive control: the sources do hold the PHI values the check looks for
    source = b"".join(d for _, d in _all_bytes(Path(phantom.patients[0].folders["CT"])))
    assert all(
        v.encode() in source
        for v in (
            phantom.patients[0].patient_name,
            phantom.patients[0].patient_id,
            phantom.patients[0].institution,
            phantom.patients[0].study_uids["CT"],
        )
    )
    _assert_no_phi(_all_bytes(out), phantom.phi_values())

    # the copies are valid DICOM, keep the geometry, and pair by pseudonymised patient id
    pids = {}
    for f in copies.rglob("*.dcm"):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert ds.PatientIdentityRemoved == "YES"
        assert "ImagePositionPatient" in ds or "PerFrameFunctionalGroupsSequence" in ds
        pids.setdefault(ds.PatientID, set()).add(ds.Modality)
    assert all(m == {"CT", "MR"} for m in pids.values()) and len(pids) == 3


def test_private_tags_can_be_kept_only_on_purpose(phantom):
    ds = pydicom.dcmread(_a_file(phantom))
    Deidentifier(DeidConfig(key=KEY, remove_private_tags=False)).apply(ds)
    assert any(e.tag.is_private for e in ds)
