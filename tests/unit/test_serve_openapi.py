"""The search API's OpenAPI contract under schemathesis with every check enabled (no Ray): the API runs
in this process on uvicorn over a real clip-tiny model and a real index, and Schemathesis's own CLI
(``st run --checks all``: examples, coverage and fuzzing phases) tests it over real HTTP.

``RAYLENS_SCHEMATHESIS_EXAMPLES`` sets the examples per operation (default 10; the reliability figure
uses 100). The same command runs against a deployed service: see tests/schemathesis.toml.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.slow

KEY = "openapi-test-key-0123456789"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import uvicorn

    from raylens.data.images import decode_image
    from raylens.index import VectorIndex
    from raylens.models import create_model
    from raylens.serve.auth import resolve_auth
    from raylens.serve.classify import ZeroShotClassifier
    from raylens.serve.limits import ServeLimits
    from raylens.serve.local import LocalSearchBackend, create_search_api
    from raylens.serve.ray_apps import free_port
    from raylens_domains.natural.shapes import generate_shapes

    tmp = tmp_path_factory.mktemp("openapi")
    data = generate_shapes(tmp / "shapes", n_train=0, n_heldout=8, seed=2)
    rows = list(csv.DictReader(data.captions_path.open()))
    model = create_model("clip-tiny")
    vectors = model.encode_images(
        model.preprocess.batch([decode_image((data.root / r["path"]).read_bytes()) for r in rows])
    )
    meta = {
        "path": [str(data.root / r["path"]) for r in rows],
        **{k: [r[k] for r in rows] for k in ("caption", "shape")},
    }
    index = VectorIndex.build(
        vectors,
        meta,
        model="clip-tiny",
        checkpoint_hash=model.checkpoint_hash,
        index_factory="Flat",
        data_roots=[data.root],
    )
    classifier = ZeroShotClassifier(model, ["circle", "square"], ["a {} shape"])
    backend = LocalSearchBackend(model, {"shapes": index, "tiny": index}, {"v1": classifier, "v2": classifier})
    limits = ServeLimits(max_body_bytes=1_000_000, max_pixels=250_000, max_batch=4, max_k=20, max_text_chars=200)
    api = create_search_api(
        backend, auth=resolve_auth(api_key=KEY, environ={}), limits=limits, versions={"v1": 0.5, "v2": 0.5}
    )
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
    yield url
    uv.should_exit = True
    thread.join(timeout=30)


def run_schemathesis(url: str, key: str, examples: int, *extra: str) -> subprocess.CompletedProcess:
    """``st run --checks all`` against ``url``'s /openapi.json, with our image strategies and config."""
    cmd = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file",
        str(REPO / "tests" / "schemathesis.toml"),
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "-H",
        f"x-api-key: {key}",
        "--max-examples",
        str(examples),
        "--workers",
        "1",
        "--no-color",
        *extra,
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks", "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)


def test_every_schemathesis_check_passes(server):
    examples = int(os.environ.get("RAYLENS_SCHEMATHESIS_EXAMPLES", "10"))
    done = run_schemathesis(server, KEY, examples, "--generation-deterministic")
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "No issues found" in done.stdout and "7 selected" in done.stdout
