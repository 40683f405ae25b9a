"""The medical service's OpenAPI contract under schemathesis with every check enabled (no Ray): the API
runs in this process on uvicorn over a real fusion checkpoint, and Schemathesis's own CLI (``st run
--checks all``: examples, coverage and fuzzing phases) tests it over real HTTP.

Schemathesis cannot make a zip of DICOM series from the schema (it says "binary"), so the hooks in
``tests/schemathesis_hooks.py`` do: positive cases upload real series (the phantom's CT and MR, pydicom's
test slices stacked into series, with files the service skips beside them) and must be answered 200;
about one fuzzed case in three is made hostile (truncated, a corrupt member, cut DICOM files, the wrong
content, a bare DICOM file, an unsafe path ...) and goes out as a negative case, which must be refused
with a documented 4xx. The service counts what it did with each upload, so the test also knows that
both kinds reached it.

``RAYLENS_SCHEMATHESIS_EXAMPLES`` sets the examples per operation (default 10). The same command runs
against a deployed service: see tests/schemathesis.toml.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.unit.test_serve_openapi import run_schemathesis  # the same st run, hooks and config

pytestmark = [
    pytest.mark.slow,
    # the service reading pydicom's odd test files and the hostile uploads: warnings, as it should
    pytest.mark.filterwarnings("ignore:Expected .* VR, but found:UserWarning"),
    pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning"),
]

KEY = "medical-openapi-key-0123456789"
DEID = "unit-test-deid-key-0123456789abcdef"
REPO = Path(__file__).resolve().parents[2]
HOSTILE_CODES = {"bad_archive", "unsafe_archive_path", "empty_archive", "no_dicom_images", "no_usable_series"}
"""Error codes only a hostile upload earns (the coverage phase sends good zips, or no body at all)."""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import uvicorn

    from raylens.models import create_model
    from raylens.serve.auth import resolve_auth
    from raylens.serve.limits import ServeError, ServeLimits
    from raylens.serve.ray_apps import free_port
    from raylens_domains.medical import EncoderConfig, save_checkpoint
    from raylens_services.medical import MedicalCore, create_medical_api
    from tests.schemathesis_hooks import MEDICAL_LIMITS

    outcomes: collections.Counter[str] = collections.Counter()

    class CountingCore(MedicalCore):
        def predict_zip(self, body: bytes):
            try:
                result = super().predict_zip(body)
            except ServeError as e:
                outcomes[e.code] += 1
                raise
            outcomes["ok"] += 1
            return result

    tmp = tmp_path_factory.mktemp("medical-openapi")
    model = create_model("mid", encoder=EncoderConfig(widths=(4, 8, 8, 8)))
    transform = {"target_spacing": [6.0, 6.0, 6.0], "spatial_size": [16, 16, 16]}
    save_checkpoint(model, tmp / "ckpt", extra={"transform": transform})
    core = CountingCore(str(tmp / "ckpt"), DEID, ServeLimits(**MEDICAL_LIMITS))
    api = create_medical_api(core, auth=resolve_auth(api_key=KEY, environ={}))
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(0.2)
    yield url, outcomes
    uv.should_exit = True
    thread.join(timeout=30)


def test_every_schemathesis_check_passes_on_real_and_hostile_uploads(server):
    url, outcomes = server
    examples = int(os.environ.get("RAYLENS_SCHEMATHESIS_EXAMPLES", "10"))
    done = run_schemathesis(url, KEY, examples, "--generation-deterministic")
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "No issues found" in done.stdout and "3 selected" in done.stdout  # /healthz, /status, /predict
    # both kinds of upload reached the model: real series predicted, hostile ones refused
    assert outcomes["ok"] >= 2, outcomes
    assert sum(outcomes[c] for c in HOSTILE_CODES) >= 2, outcomes
