"""The medical service's HTTP API without Ray (FastAPI's test client over a real fusion checkpoint and
real phantom DICOM): open liveness that says only up/down, details and the contract behind the key,
docs off, a corrupt zip member a 400 (was a 500), the spacing bomb a 4xx, every error documented."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file

from raylens.models import create_model
from raylens.serve.auth import resolve_auth
from raylens.serve.limits import ServeConfigError, ServeLimits
from raylens.serve.observe import FailureStreak
from raylens_domains.medical import EncoderConfig, PhantomConfig, generate_phantoms, save_checkpoint
from raylens_services.medical import MedicalCore, create_medical_api, medical_openapi

DEID = "unit-test-deid-key-0123456789abcdef"
KEY = "medical-api-key-0123456789"
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
LIMITS = ServeLimits(max_body_bytes=3_000_000, max_pixels=200_000, max_batch=2, max_files=64)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("medical-api")
    phantom = generate_phantoms(tmp / "phantom", PhantomConfig(n_patients=1, seed=3, **SMALL))
    model = create_model("mid", encoder=EncoderConfig(widths=(4, 8, 8, 8)))
    transform = {"target_spacing": [6.0, 6.0, 6.0], "spatial_size": [16, 16, 16]}
    save_checkpoint(model, tmp / "ckpt", extra={"transform": transform})
    return phantom, MedicalCore(str(tmp / "ckpt"), DEID, LIMITS)


@pytest.fixture(scope="module")
def client(world):
    return TestClient(create_medical_api(world[1], auth=resolve_auth(api_key=KEY, environ={})))


AUTH = {"x-api-key": KEY}


def _zip_dir(folders) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i, folder in enumerate(folders):
            for f in sorted(Path(folder).iterdir()):
                zf.write(f, f"s{i}/{f.name}")
    return buf.getvalue()


def test_liveness_is_open_and_says_only_up(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "up"}


def test_details_and_the_contract_need_the_key_and_docs_are_off(client):
    for path in ("/status", "/openapi.json"):
        r = client.get(path)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", path
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/status", headers=AUTH).json() == {"ready": True, "model": "mid", "problem": None}
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        assert client.get(path, headers=AUTH).status_code == 404, path
    doc = client.get("/openapi.json", headers=AUTH).json()
    assert doc == medical_openapi(LIMITS, auth_required=True)
    responses = doc["paths"]["/predict"]["post"]["responses"]
    assert {"200", "400", "401", "413", "415", "422", "503", "504"} <= set(responses)


def test_a_service_without_a_model_is_down_and_says_why_behind_the_key(monkeypatch):
    monkeypatch.delenv("RAYLENS_MEDICAL_CHECKPOINT", raising=False)
    core = MedicalCore(None, DEID, LIMITS)
    c = TestClient(create_medical_api(core, auth=resolve_auth(api_key=KEY, environ={})))
    r = c.get("/healthz")
    assert r.status_code == 503 and r.json() == {"status": "down"}
    assert "no model configured" in c.get("/status", headers=AUTH).json()["problem"]
    r = c.post("/predict", content=b"PK", headers={**AUTH, "content-type": "application/zip"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"


def test_predicts_and_refuses_bad_input_with_documented_4xx(client, world):
    phantom, _ = world
    p = phantom.patients[0]
    zip_headers = {**AUTH, "content-type": "application/zip"}
    assert client.post("/predict", content=b"x").status_code == 401
    r = client.post("/predict", content=_zip_dir([p.folders["CT"], p.folders["MR"]]), headers=zip_headers)
    assert r.status_code == 200, r.text
    pred = r.json()["predictions"][0]
    assert pred["modalities_used"] == ["CT", "MR"] and pred["patient_id"].startswith("PAT-")
    for value in phantom.phi_values():
        assert value not in r.text

    # a corrupt deflate stream in one member: was zlib.error -> 500
    data = bytearray(_zip_dir([p.folders["CT"]]))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.infolist()[0]
    n, e = struct.unpack_from("<HH", data, info.header_offset + 26)
    data[info.header_offset + 30 + n + e] = 0xFF  # BTYPE=11: an invalid deflate block
    r = client.post("/predict", content=bytes(data), headers=zip_headers)
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_archive", r.text

    documented = set(medical_openapi(LIMITS, auth_required=True)["paths"]["/predict"]["post"]["responses"])
    for name, body, ctype, status in [
        ("not a zip", b"hello", "application/zip", 400),
        ("empty", b"", "application/zip", 400),
        ("png", b"\x89PNG", "image/png", 415),
        ("too big", b"0" * (LIMITS.max_body_bytes + 1), "application/zip", 413),
    ]:
        r = client.post("/predict", content=body, headers={**AUTH, "content-type": ctype})
        assert r.status_code == status, (name, r.text)
        assert str(status) in documented, name


def test_the_spacing_bomb_upload_is_refused_not_resampled(client, tmp_path):
    """The issue's upload: two 2x2 slices, PixelSpacing 1500 mm, slice step 3000 mm. It is answered 422
    with the reason (resampling it to the model's grid asked for gigabytes)."""
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series = pydicom.uid.generate_uid()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(2):
            ds = base.copy()
            ds.Rows = ds.Columns = 2
            ds.PixelData = np.zeros((2, 2), np.int16).tobytes()
            ds.PixelSpacing = [1500.0, 1500.0]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.ImagePositionPatient = [0.0, 0.0, 3000.0 * i]
            ds.SeriesInstanceUID = series
            ds.SOPInstanceUID = pydicom.uid.generate_uid()
            out = io.BytesIO()
            ds.save_as(out)
            zf.writestr(f"s/{i}.dcm", out.getvalue())
    r = client.post("/predict", content=buf.getvalue(), headers={**AUTH, "content-type": "application/zip"})
    assert r.status_code == 422, r.text
    assert "implausible PixelSpacing" in r.json()["error"]["message"]


def test_internal_failures_in_a_row_fail_the_health_check(world):
    class Broken(MedicalCore):
        def predict_zip(self, body):
            raise RuntimeError("disk on fire")

    core = Broken.__new__(Broken)
    core.__dict__.update(world[1].__dict__)
    streak = FailureStreak(limit=2)
    c = TestClient(create_medical_api(core, auth=resolve_auth(api_key=KEY, environ={}), failures=streak))
    for _ in range(2):
        r = c.post("/predict", content=b"PK", headers={**AUTH, "content-type": "application/zip"})
        assert r.status_code == 500 and r.json()["error"]["message"] == "internal error"
    with pytest.raises(RuntimeError, match="2 internal failures in a row"):
        streak.check("MedicalFusionService")


def test_no_key_on_a_public_host_refuses_to_start():
    auth = resolve_auth(environ={})
    with pytest.raises(ServeConfigError, match="refusing to serve on 0.0.0.0 without an API key"):
        auth.check_bind("0.0.0.0")
    with pytest.raises(ServeConfigError, match="empty"):
        resolve_auth(environ={"RAYLENS_API_KEY": ""})
