"""The whole PS3.15 Basic Profile, row by row from its table, and a PHI probe over real DICOM files.

The per-row test is generated from :data:`PROFILE_TABLE` (the standard's Table E.1-1). The probe plants
a marked value in every table attribute a file does not already hold (and at a nested level, in the
file meta, in private tags, overlays and curves), de-identifies, and looks for every planted and every
original identifying value in the written bytes and in every element: none may survive.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

from raylens_domains.medical import DicomIngestConfig, PhantomConfig, generate_phantoms, ingest_series, pair_rows
from raylens_domains.medical.deid import (
    BASIC_PROFILE,
    PROFILE_CSV,
    PROFILE_TABLE,
    STANDARD_UID_ROOT,
    BurnedInAnnotationError,
    DeidConfig,
    Deidentifier,
    profile_action,
)

KEY = "deid-profile-test-key-0000000000"
CFG = DeidConfig(key=KEY)
PSEUDO = CFG.pseudonymizer()
SMALL = dict(ct_size=12, ct_slices=6, ct_pixel_mm=8.0, ct_slice_mm=12.0, mr_size=12, mr_slices=6, mr_pixel_mm=8.0)
STANDARD_ROWS = [r for r in PROFILE_TABLE if r.tag != "(gggg,eeee)"]
_NUMERIC = {"US": 4242, "SS": 4242, "UL": 4242, "SL": 4242, "FL": 42.25, "FD": 42.25, "DS": "4242.5", "IS": "4242"}


def _concrete(tag_text: str) -> int:
    """A real tag for a table row: repeating groups 50XX/60XX become 5002/6002, element XXXX 3000."""
    group, element = tag_text.strip("()").split(",")
    return int(group.replace("XX", "02"), 16) << 16 | int("3000" if element == "XXXX" else element, 16)


def _vr(tag: int) -> str:
    return dictionary_VR(tag).split(" or ")[0]


def _plant(ds, tag: int, i: int) -> tuple[object, str | None]:
    """Set a marked value of the tag's VR; returns (value, text marker to search for, or None)."""
    vr, m = _vr(tag), f"PHI{i:04d}Q"
    value, marker = {
        "AE": (m, m),
        "CS": (m, m),
        "SH": (m, m),
        "LO": (f"{m} planted", m),
        "LT": (f"{m} planted", m),
        "ST": (f"{m} planted", m),
        "UT": (f"{m} planted", m),
        "UC": (f"{m} planted", m),
        "UR": (f"http://{m.lower()}.example/", m.lower()),
        "PN": (f"{m}^Planted", m),
        "DA": ("20110213", "20110213"),
        "TM": ("101112", None),
        "DT": ("20110213101112", "20110213"),
        "AS": ("042Y", None),
        "UI": (f"1.2.999.{i}", f"1.2.999.{i}"),
        "OB": (m.encode() + b"\x00", m),
        "OW": (m.encode() + b"\x00", m),
        "UN": (m.encode() + b"\x00", m),
    }.get(vr, (_NUMERIC.get(vr), None))
    if vr == "SQ":
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = m, "99PHI", f"{m} meaning"
        value, marker = Sequence([item]), m
    ds.add_new(tag, vr, value)
    return value, marker


@pytest.mark.parametrize("row", STANDARD_ROWS, ids=lambda r: r.tag)
def test_every_row_of_the_table_is_applied(row):
    tag = _concrete(row.tag)
    ds = Dataset()
    planted, _ = _plant(ds, tag, 1)
    before = copy.deepcopy(ds)
    Deidentifier(CFG).apply(ds)
    action, vr = profile_action(row.code), _vr(tag)
    if action == "X" or (action in ("D", "U") and vr in ("SQ", "UN")):
        assert tag not in ds
    elif action == "Z":
        value = ds[tag].value
        if tag in (0x00100010, 0x00100020):
            assert str(value) == PSEUDO.patient_of(before)
        else:
            assert value in ("", None) or (vr == "SQ" and len(value) == 0)
    elif action == "D":
        value = ds[tag].value
        assert value not in ("", None) and value != planted
        if vr == "UI":
            assert value == PSEUDO.uid(planted)
    else:
        assert action == "U" and ds[tag].value == PSEUDO.uid(planted)


def test_the_table_is_the_whole_standard_table():
    lines = PROFILE_CSV.read_text().splitlines()
    header = [line for line in lines if line.startswith("#")]
    assert any("Table E.1-1" in line for line in header) and any("2024b" in line for line in header)
    assert any("8670abdd9ad16c61af5146ef857899699bdd9c5f" in line for line in header)  # provenance
    rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    assert len(rows) == len(PROFILE_TABLE) == 621 and len({r["tag"] for r in rows}) == 621
    codes = {r.code for r in PROFILE_TABLE}
    assert codes <= {"X", "Z", "D", "U", "X/Z", "X/D", "X/Z/D", "Z/D", "X/Z/U*"}
    assert sum(1 for r in PROFILE_TABLE if r.code == "U") >= 50
    # what the review found missing is covered now
    for tag, action in {
        (0x0018, 0x4000): "X",  # Acquisition Comments
        (0x0010, 0x2155): "X",  # Patient's Telecom Information
        (0x0040, 0x1102): "X",  # Person's Address
        (0x0032, 0x1066): "X",  # Reason for Visit
        (0x0012, 0x0040): "D",  # Clinical Trial Subject ID
        (0x0088, 0x0200): "X",  # Icon Image Sequence
        (0x0070, 0x0001): "D",  # Graphic Annotation Sequence (a D sequence is removed)
        (0x0010, 0x1100): "X",  # Referenced Patient Photo Sequence
        (0xFFFA, 0xFFFA): "X",  # Digital Signatures Sequence
        (0x0008, 0x0017): "U",  # Acquisition UID
        (0x0002, 0x0003): "U",  # Media Storage SOP Instance UID
    }.items():
        assert BASIC_PROFILE[tag] == action, tag
    assert any(r.tag == "(gggg,eeee)" and r.code == "X" for r in PROFILE_TABLE)  # private attributes


# ---------------------------------------------------------------------------------------------
# the PHI probe


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    cfg = PhantomConfig(n_patients=1, seed=3, multiframe_fraction=1.0, rle_fraction=0.0, **SMALL)
    return generate_phantoms(tmp_path_factory.mktemp("probe"), cfg)


_TEST_FILES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
    "JPEG2000.dcm",
    "SC_rgb_rle.dcm",
    "examples_overlay.dcm",
    "examples_palette.dcm",
    "nested_priv_SQ.dcm",
    "reportsi.dcm",
    "rtplan.dcm",
)


def _source(name: str, phantom) -> Path:
    if name == "phantom CT":
        return next(Path(phantom.patients[0].folders["CT"]).iterdir())
    if name == "phantom enhanced MR":
        return next(Path(phantom.patients[0].folders["MR"]).iterdir())
    path = get_testdata_file(name, download=False)
    assert path, f"pydicom's test file {name} is not installed"
    return Path(path)


def _plant_level(ds, offset: int, markers: set[str], numeric: dict[int, object], originals: set[str]) -> None:
    """Plant every table attribute this level lacks; remember the identifying values it already has."""
    for i, row in enumerate(STANDARD_ROWS):
        tag = _concrete(row.tag)
        if tag >> 16 in (0x0000, 0x0002):  # command set (not allowed in files); file meta is planted apart
            continue
        if tag in ds:
            value = ds[tag].value
            if isinstance(value, str) and len(value.strip()) >= 6:
                originals.add(value.strip())
            elif ds[tag].VR == "PN" and value and len(str(value)) >= 6:
                originals.add(str(value))
            continue
        value, marker = _plant(ds, tag, offset + i)
        if marker:
            markers.add(marker)
        else:
            numeric[tag] = value
    block = ds.private_block(0x0011, f"PHI CREATOR {offset}", create=True)
    block.add_new(0x01, "LO", f"PHI{offset + 900:04d}Q private")
    markers |= {f"PHI CREATOR {offset}", f"PHI{offset + 900:04d}Q"}
    ds.add_new(0x60020010, "US", 7)  # overlay rows: the whole 60xx group goes


def _kept_texts(ds) -> list[str]:
    """Values the profile keeps (not in the table, not private, no name or date)."""
    return [
        str(e.value)
        for e in ds.iterall()
        if (e.tag.group, e.tag.element) not in BASIC_PROFILE
        and not e.tag.is_private
        and e.VR not in ("PN", "DA", "DT", "TM", "SQ")
    ]


def _plant_everything(ds) -> tuple[set[str], dict[int, object], set[str]]:
    markers: set[str] = set()
    numeric: dict[int, object] = {}
    originals: set[str] = set()
    kept = _kept_texts(ds)  # an institution "TOSHIBA" also shows in the kept Manufacturer "TOSHIBA_MEC"
    _plant_level(ds, 0, markers, numeric, originals)
    originals = {o for o in originals if not any(o in t for t in kept)}
    # a kept, non-table sequence with PHI inside (plus a private SOP class UID that must be remapped)
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.999.7.7.7"
    markers.add("1.2.999.7.7.7")
    _plant_level(item, 2000, markers, numeric, originals)
    ds.AnatomicRegionSequence = Sequence([item])
    for seq in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        if seq in ds and len(ds[seq].value):  # a real nested level of an enhanced object
            _plant_level(ds[seq].value[0], 4000, markers, numeric, originals)
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    for keyword, value in (
        ("SourceApplicationEntityTitle", "PHIAESOURCE"),
        ("SendingApplicationEntityTitle", "PHIAESEND"),
        ("ReceivingApplicationEntityTitle", "PHIAERECV"),
        ("SourcePresentationAddress", "http://phi-meta.example/"),
        ("ImplementationVersionName", "PHIVERSION"),
        ("PrivateInformationCreatorUID", "1.2.999.8.8.8"),
        ("PrivateInformation", b"PHIPRIVATEINFO"),
    ):
        setattr(meta, keyword, value)
    markers |= {"PHIAESOURCE", "PHIAESEND", "PHIAERECV", "phi-meta.example", "PHIVERSION", "1.2.999.8.8.8"}
    markers.add("PHIPRIVATEINFO")
    ds.file_meta = meta
    return markers, numeric, originals


def _uids(ds) -> set[str]:
    found = set()
    for elem in [*ds.iterall(), *getattr(ds, "file_meta", [])]:
        if elem.VR == "UI" and elem.value:
            found |= {str(v) for v in (elem.value if elem.VM > 1 else [elem.value])}
    return found


@pytest.mark.parametrize("name", (*_TEST_FILES, "phantom CT", "phantom enhanced MR"))
def test_no_planted_or_original_phi_survives(name, phantom):
    ds = pydicom.dcmread(_source(name, phantom))
    pixels = ds.get("PixelData")
    original_uids = {u for u in _uids(ds) if len(u) >= 8 and not u.startswith(STANDARD_UID_ROOT)}
    original_uids.discard(PYDICOM_IMPLEMENTATION_UID)  # the phantom's writer; ours too
    markers, numeric, originals = _plant_everything(ds)
    assert len(markers) > 400 and original_uids

    Deidentifier(CFG).apply(ds)
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds)
    data = buf.getvalue()
    out = pydicom.dcmread(io.BytesIO(data))  # still a valid file
    elements = [*out.iterall(), *out.file_meta]
    texts = "\n".join(str(e.value) for e in elements if e.tag != 0x7FE00010)  # decoded values, pixels aside
    for value in sorted(markers | original_uids | originals):
        assert value.encode() not in data, f"{value!r} survives in the bytes of {name}"
        assert value not in texts, f"{value!r} survives in an element of {name}"
    for e in elements:
        assert not (e.tag in numeric and e.value == numeric[e.tag]), f"planted {e.tag} survives in {name}"
        assert not e.tag.is_private and (e.tag.group & 0xFF00) not in (0x5000, 0x6000), e.tag
        if e.VR == "UI" and e.value:
            for uid in e.value if e.VM > 1 else [e.value]:
                assert uid.startswith((STANDARD_UID_ROOT, "2.25.")) or uid == PYDICOM_IMPLEMENTATION_UID, uid
    assert {e.keyword for e in out.file_meta} <= {
        "FileMetaInformationGroupLength",
        "FileMetaInformationVersion",
        "MediaStorageSOPClassUID",
        "MediaStorageSOPInstanceUID",
        "TransferSyntaxUID",
        "ImplementationClassUID",
        "ImplementationVersionName",
    }
    assert out.PatientIdentityRemoved == "YES" and out.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert out.get("PixelData") == pixels  # the image is kept as it was


# ---------------------------------------------------------------------------------------------
# burned-in annotation, patient pseudonyms, consistent UIDs, reports


def _rewrite(folder, **changes) -> None:
    for f in Path(folder).iterdir():
        ds = pydicom.dcmread(f)
        for keyword, value in changes.items():
            if value is None:
                if keyword in ds:
                    delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        ds.save_as(f)


def test_burned_in_annotation_is_refused_unless_the_user_opts_in(tmp_path):
    ph = generate_phantoms(tmp_path / "src", PhantomConfig(n_patients=1, seed=5, **SMALL))
    _rewrite(ph.patients[0].folders["CT"], BurnedInAnnotation="YES")
    ct_file = next(Path(ph.patients[0].folders["CT"]).iterdir())
    with pytest.raises(BurnedInAnnotationError, match="allow_burned_in_annotation=True"):
        Deidentifier(CFG).apply(pydicom.dcmread(ct_file))

    rows, report = ingest_series(ph.root, DicomIngestConfig(deid=CFG))
    assert [r["modality"] for r in rows] == ["MR"]
    assert report.reasons() == {"burned-in annotation": SMALL["ct_slices"], "not a DICOM file": 1}

    allowed = DeidConfig(key=KEY, allow_burned_in_annotation=True, output_dir=str(tmp_path / "copies"))
    rows, report = ingest_series(ph.root, DicomIngestConfig(deid=allowed))
    assert sorted(r["modality"] for r in rows) == ["CT", "MR"]
    flags = {}
    for f in (tmp_path / "copies").rglob("*.dcm"):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        flags.setdefault(ds.Modality, set()).add(ds.PatientIdentityRemoved)
    assert flags == {"CT": {"NO"}, "MR": {"YES"}}  # the label stays honest


def test_patient_pseudonyms_agree_when_patient_id_is_empty_or_missing(tmp_path):
    ph = generate_phantoms(tmp_path / "src", PhantomConfig(n_patients=3, seed=6, **SMALL))
    for mod in ("CT", "MR"):
        _rewrite(ph.patients[0].folders[mod], PatientID="")
        _rewrite(ph.patients[1].folders[mod], PatientID=None)
        _rewrite(ph.patients[2].folders[mod], PatientID=None, PatientName=None)
    cfg = DicomIngestConfig(deid=DeidConfig(key=KEY, output_dir=str(tmp_path / "copies")))
    rows, _ = ingest_series(ph.root, cfg)
    by_series = {r["series_uid"]: r["patient_id"] for r in rows}
    for f in (tmp_path / "copies").rglob("*.dcm"):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert ds.PatientID == str(ds.PatientName) == by_series[ds.SeriesInstanceUID]
    for p in ph.patients:
        source = pydicom.dcmread(next(Path(p.folders["CT"]).iterdir()), stop_before_pixels=True)
        assert {r["patient_id"] for r in rows if r["study_uid"] == PSEUDO.uid(p.study_uids["CT"])} == {
            PSEUDO.patient_of(source)
        }
    assert len({r["patient_id"] for r in rows}) == 3 and "PAT-UNKNOWN" not in by_series.values()
    paired, notes = pair_rows(rows, by="patient")
    assert len(paired) == 3 and all(p["modalities"] == "CT+MR" for p in paired), notes


def test_uids_are_remapped_consistently_and_the_copies_still_pair(tmp_path):
    ph = generate_phantoms(tmp_path / "src", PhantomConfig(n_patients=2, seed=7, same_study=False, **SMALL))
    copies = tmp_path / "copies"
    rows, _ = ingest_series(ph.root, DicomIngestConfig(deid=DeidConfig(key=KEY, output_dir=str(copies))))
    assert len(rows) == 4
    frames = {}
    for f in copies.rglob("*.dcm"):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert all(u.startswith((STANDARD_UID_ROOT, "2.25.")) or u == PYDICOM_IMPLEMENTATION_UID for u in _uids(ds))
        frames.setdefault(ds.PatientID, set()).add(ds.FrameOfReferenceUID)
    assert all(len(v) == 1 for v in frames.values()) and len(frames) == 2  # one frame of reference per patient
    originals = {u for p in ph.patients for u in (*p.study_uids.values(), *p.series_uids.values(), *p.sop_uids)}
    assert not any(u.encode() in f.read_bytes() for f in copies.rglob("*.dcm") for u in originals)
    # the de-identified copies are a dataset of their own: read again, CT and MR still pair by patient
    again, report = ingest_series(copies, DicomIngestConfig(deid=CFG))
    assert len(again) == 4 and report.n_skipped == 0
    paired, _ = pair_rows(again, by="patient")
    assert len(paired) == 2 and all(p["modalities"] == "CT+MR" for p in paired)


def test_reports_and_logs_name_no_patient_folder_unless_asked(tmp_path, caplog):
    root = tmp_path / "Smith^John MRN7654321"
    ph = generate_phantoms(root, PhantomConfig(n_patients=1, seed=8, extras=True, **SMALL))
    caplog.set_level(logging.DEBUG)
    rows, report = ingest_series(root, DicomIngestConfig(deid=CFG))
    text = json.dumps(report.to_dict()) + report.summary() + caplog.text
    assert len(rows) == 2 and report.n_skipped == 4
    assert "Smith" not in text and "MRN7654321" not in text and "notes.txt" not in text
    tokens = {s.path.split(" ")[0]: s.reason for s in report.skipped}
    assert all(t.startswith("path-") for t in tokens)
    located = {Path(p).name: tokens[t] for t in tokens for p in CFG.locate(t, root)}
    assert located["notes.txt"].startswith("not a DICOM file") and located["missing_slice"].startswith("missing")

    shown = DicomIngestConfig(deid=DeidConfig(key=KEY, report_paths=True))
    _, report = ingest_series(root, shown)
    assert str(ph.extra_paths["not_dicom"]) in {s.path for s in report.skipped} and "Smith" in report.source
