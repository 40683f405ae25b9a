"""The search service on a real local Serve app, over real HTTP on 127.0.0.1: search, embed, classify
(A/B), the search core's rules (k, filters, the model/index check) as in the SDK, safety limits, the
API key (resolved when the app is built, from the config's api_key_file, enforced by every replica),
liveness vs details, item files from the data roots only, client mistakes kept out of the replicas'
error logs, an index swap that keeps serving while the new index loads, Prometheus metrics,
schemathesis with every check, and a real headless Chromium driving the search page."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

pytestmark = [pytest.mark.ray, pytest.mark.slow]

KEY = "serve-test-key-0123456789"
AUTH = {"x-api-key": KEY}
APP = "raylens-search-test"
SHAPES = ["circle", "square", "triangle", "star", "cross"]
LIMITS = {"max_body_bytes": 1_000_000, "max_pixels": 250_000, "max_batch": 4, "max_k": 20, "max_text_chars": 200}
REPO = Path(__file__).resolve().parents[2]
SPLIT = {"v1": 0.75, "v2": 0.25}


def _png(w: int, h: int, colour=(10, 200, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, "PNG")
    return buf.getvalue()


def _build_index(
    model, rows: list[dict], root: Path, directory: Path, ckpt: Path, checkpoint_hash: str | None = None
) -> Path:
    from raylens.data.images import decode_image
    from raylens.index import VectorIndex

    images = [decode_image((root / r["path"]).read_bytes()) for r in rows]
    vectors = model.encode_images(model.preprocess.batch(images))
    meta = {
        "path": [str(root / r["path"]) for r in rows],
        **{k: [r[k] for r in rows] for k in ("caption", "shape", "colour", "size")},
    }
    VectorIndex.build(
        vectors,
        meta,
        model="clip-tiny",
        checkpoint_hash=checkpoint_hash or model.checkpoint_hash,
        checkpoint=str(ckpt),
        index_factory="Flat",
        data_roots=[root],  # GET /images serves these files, and nothing outside this directory
    ).save(directory)
    return directory


def _build_big_index(rows: list[dict], root: Path, directory: Path, checkpoint_hash: str, n: int = 200_000) -> Path:
    """An index big enough that loading it takes a while (random vectors of the model's dim)."""
    import numpy as np

    from raylens.index import VectorIndex

    x = np.random.default_rng(0).normal(size=(n, 128)).astype("float32")
    meta = {k: [rows[i % len(rows)][k] for i in range(n)] for k in ("caption", "shape", "colour", "size")}
    meta["path"] = [str(root / rows[i % len(rows)]["path"]) for i in range(n)]
    VectorIndex.build(
        x, meta, model="clip-tiny", checkpoint_hash=checkpoint_hash, index_factory="Flat", tune=False, data_roots=[root]
    ).save(directory)
    return directory


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Shapes images, a clip-tiny checkpoint, indices of them (40, 25 and 5 images, and one that claims
    another checkpoint), a timm classifier, an API key file."""
    import csv

    import timm

    from raylens.models import create_model
    from raylens.serve.classify import save_timm_classifier
    from raylens_domains.natural.shapes import generate_shapes

    root = tmp_path_factory.mktemp("serve")
    data = generate_shapes(root / "shapes", n_train=0, n_heldout=40, seed=5)
    rows = list(csv.DictReader(data.captions_path.open()))
    create_model("clip-tiny").save(root / "clip")
    model = create_model("clip-tiny", pretrained=str(root / "clip"))
    index = _build_index(model, rows, data.root, root / "index", root / "clip")
    index_v2 = _build_index(model, rows[:25], data.root, root / "index-v2", root / "clip")
    tiny = _build_index(model, rows[:5], data.root, root / "index-tiny", root / "clip")
    foreign = _build_index(model, rows[:5], data.root, root / "index-foreign", root / "clip", "another-checkpoint")
    big = _build_big_index(rows, data.root, root / "index-big", model.checkpoint_hash)
    save_timm_classifier(
        timm.create_model("test_resnet", pretrained=False, num_classes=3),
        root / "timm",
        arch="test_resnet",
        classes=["red", "green", "blue"],
        image_size=32,
    )
    (root / "key").write_text(KEY + "\n")
    return {
        "root": root,
        "rows": rows,
        "images": data.root,
        "clip": root / "clip",
        "index": index,
        "index_v2": index_v2,
        "tiny": tiny,
        "foreign": foreign,
        "big": big,
        "timm": root / "timm",
        "key_file": root / "key",
    }


def _config(assets, port: int) -> dict:
    """services/raylens_services/search.yaml with this test's paths, port, limits and API key file (in the
    app's args: it is read when the app is built, and travels to the replicas with the app)."""
    from raylens.serve.ray_apps import load_config

    cfg = load_config()  # the packaged services/raylens_services/search.yaml, checked against Serve's schema
    cfg["http_options"] = {"host": "127.0.0.1", "port": port}
    app = cfg["applications"][0]
    app["name"] = APP
    app["args"] = {
        "indices": {"shapes": str(assets["index"]), "tiny": str(assets["tiny"])},
        "classifiers": {
            "v1": {"checkpoint": str(assets["timm"]), "weight": SPLIT["v1"]},
            "v2": {"weight": SPLIT["v2"], "classes": SHAPES, "templates": ["a {} shape"]},
        },
        "limits": LIMITS,
        "api_key_file": str(assets["key_file"]),
    }
    deployments = {d["name"]: d for d in app["deployments"]}
    for name in ("ClipEmbedder", "IndexServer"):
        deployments[name]["autoscaling_config"]["max_replicas"] = 2
    return cfg


@pytest.fixture(scope="module")
def service(serve_port, assets):
    """The search app deployed from the serve config with `serve run`, on a free port; removed at the end."""
    from ray import serve

    from raylens.serve.ray_apps import run_config, wait_ready

    port = serve_port
    cfg = _config(assets, port)
    run_config(cfg)
    url = f"http://127.0.0.1:{port}"
    health = wait_ready(f"{url}/healthz", timeout_s=180)
    try:
        yield {"url": url, "health": health, "config": cfg}
    finally:
        serve.delete(APP)


def _post(url: str, **kw) -> requests.Response:
    kw.setdefault("timeout", 60)
    kw["headers"] = {**AUTH, **kw.get("headers", {})}
    return requests.post(url, **kw)


def test_liveness_is_open_and_says_only_up_details_need_the_key(service):
    import asyncio

    from raylens.serve.ray_apps import serve_http_host

    url = service["url"]
    assert service["health"] == {"status": "up"}
    assert asyncio.run(serve_http_host()) == "127.0.0.1"  # what each ingress replica checks its auth against
    for path in ("/status", "/indices", "/openapi.json", "/images/shapes/0"):
        assert requests.get(f"{url}{path}", timeout=30).status_code == 401, path
    for path in ("/docs", "/redoc"):
        assert requests.get(f"{url}{path}", headers=AUTH, timeout=30).status_code == 404, path
    h = requests.get(f"{url}/status", headers=AUTH, timeout=30).json()
    assert h["ready"], h["problems"]
    assert h["indices"] == ["shapes", "tiny"] and set(h["classifier_versions"]) == {"v1", "v2"}
    assert str(service["config"]["applications"][0]["args"]["indices"]["shapes"]) not in json.dumps(h)  # no paths
    r = requests.put(f"{url}/search", headers=AUTH, timeout=30)
    assert r.status_code == 405 and r.headers["allow"] == "POST"


def test_health_and_indices(service):
    r = requests.get(f"{service['url']}/indices", headers=AUTH, timeout=30)
    assert r.status_code == 200
    info = r.json()["indices"]["shapes"]
    assert info["count"] == 40 and info["dim"] == 128 and {"shape", "colour"} <= set(info["columns"])
    assert r.json()["default"] == "shapes" and r.json()["model"]["name"] == "clip-tiny"


def test_search_by_text_image_and_embedding_with_filters(service, assets):
    url = service["url"]
    r = _post(f"{url}/search", json={"text": "a red circle", "k": 5})
    assert r.status_code == 200, r.text
    assert r.headers.get("x-request-id")  # Serve's request id, also in the replica logs
    body = r.json()
    assert body["index"] == "shapes" and body["kind"] == "text" and len(body["hits"]) == 5
    scores = [h["score"] for h in body["hits"]]
    assert scores == sorted(scores, reverse=True)
    assert all(h["caption"] and h["metadata"]["shape"] in SHAPES for h in body["hits"])

    r = _post(
        f"{url}/search", json={"text": "a red circle", "k": 10, "filters": {"shape": "circle"}, "index": "shapes"}
    )
    assert r.status_code == 200 and r.json()["hits"]
    assert {h["metadata"]["shape"] for h in r.json()["hits"]} == {"circle"}

    first = assets["rows"][3]
    png = (assets["images"] / first["path"]).read_bytes()
    r = _post(f"{url}/search", files={"image": ("q.png", png, "image/png")}, data={"k": "3"})
    assert r.status_code == 200, r.text
    top = r.json()["hits"][0]
    assert top["path"].endswith(first["path"]) and top["score"] == pytest.approx(1.0, abs=1e-4)
    r = _post(f"{url}/search", json={"image_b64": base64.b64encode(png).decode(), "k": 1})
    assert r.json()["hits"][0]["id"] == top["id"]

    emb = _post(f"{url}/embed", json={"texts": ["a red circle", "a blue star"]})
    assert emb.status_code == 200 and emb.json()["dim"] == 128 and len(emb.json()["embeddings"]) == 2
    by_vec = _post(f"{url}/search", json={"embedding": emb.json()["embeddings"][0], "k": 5})
    assert [h["id"] for h in by_vec.json()["hits"]] == [h["id"] for h in body["hits"]]
    r = _post(f"{url}/embed", json={"images_b64": [base64.b64encode(png).decode()]})
    assert r.status_code == 200 and len(r.json()["embeddings"][0]) == 128

    img = requests.get(f"{url}/images/shapes/{top['id']}", headers=AUTH, timeout=30)
    assert img.status_code == 200 and img.headers["content-type"] == "image/png" and img.content == png


def test_k_filters_and_the_model_check_mean_what_they_mean_in_the_sdk(service, assets):
    """The one search core on both sides: k above the index size returns every hit (HTTP and SDK alike,
    the same hits); filters narrow both alike; a mismatched index is refused when it is attached."""
    from raylens.search import Searcher

    url = service["url"]
    sdk = Searcher.open(assets["tiny"])
    r = _post(f"{url}/search", json={"text": "a red circle", "k": 20, "index": "tiny"})
    assert r.status_code == 200, r.text
    http_hits = r.json()["hits"]
    assert len(http_hits) == 5 and r.json()["k"] == 20
    sdk_hits = sdk.text("a red circle", k=20)
    assert [h["id"] for h in http_hits] == [h.id for h in sdk_hits]
    assert [h["score"] for h in http_hits] == pytest.approx([h.score for h in sdk_hits], abs=1e-5)

    shape = assets["rows"][0]["shape"]
    r = _post(f"{url}/search", json={"text": "a shape", "k": 20, "index": "tiny", "filters": {"shape": shape}})
    want = [h.id for h in sdk.text("a shape", k=20, filters={"shape": shape})]
    assert r.status_code == 200 and [h["id"] for h in r.json()["hits"]] == want
    assert {h["metadata"]["shape"] for h in r.json()["hits"]} == {shape}


def test_a_mismatched_index_is_refused_when_attached(service, assets):
    """An index server given an index of another checkpoint does not start; Serve reports our error."""
    from ray import serve

    from raylens_services.indices import IndexServer

    embedder = serve.get_deployment_handle("ClipEmbedder", app_name=APP)
    app = IndexServer.bind({"shapes": str(assets["foreign"])}, embedder)
    try:
        with pytest.raises(RuntimeError, match="raylens-mismatch-test failed"):
            serve.run(app, name="raylens-mismatch-test", route_prefix=None)
        message = serve.status().applications["raylens-mismatch-test"].deployments["IndexServer"].message
        assert (
            "IndexMismatchError: index 'shapes' was built with model 'clip-tiny' (checkpoint another-checkpoint)"
            in (message)
        )
    finally:
        serve.delete("raylens-mismatch-test")
    r = _post(f"{service['url']}/search", json={"text": "a red circle", "k": 1})
    assert r.status_code == 200  # the running service is untouched


def test_an_index_calling_the_embedder_finds_what_the_service_finds(service, assets):
    """``query_encoder: embedder``: an index replica that has the embedding deployment encode its queries
    returns the hits of the service's own index replicas, which encode them with their own model copy."""
    from ray import serve

    from raylens.search import SearchQuery
    from raylens_services.indices import IndexServer

    embedder = serve.get_deployment_handle("ClipEmbedder", app_name=APP)
    app = IndexServer.bind({"shapes": str(assets["index"])}, embedder)
    handle = serve.run(app, name="raylens-embedder-encodes-test", route_prefix=None)
    try:
        texts = ["a red circle", "a small blue star", "a large green cross"]
        got = handle.search_many.remote([SearchQuery(text=t, k=5) for t in texts]).result()
        for text, result in zip(texts, got, strict=True):
            want = _post(f"{service['url']}/search", json={"text": text, "k": 5, "index": "shapes"}).json()
            assert [h["id"] for h in result["hits"]] == [h["id"] for h in want["hits"]], text
            assert [h["score"] for h in result["hits"]] == pytest.approx([h["score"] for h in want["hits"]], abs=1e-5)
    finally:
        serve.delete("raylens-embedder-encodes-test")


def test_safety_limits_give_json_4xx(service):
    url = service["url"]
    big = _png(600, 600)  # 360k pixels > max_pixels, and a small file
    cases = {
        "no key": (requests.post(f"{url}/search", json={"text": "a"}, timeout=30), 401),
        "wrong key": (requests.post(f"{url}/search", json={"text": "a"}, headers={"x-api-key": "no"}, timeout=30), 401),
        "body size": (
            _post(f"{url}/search", data=b"{" + b" " * 1_000_001 + b"}", headers={"content-type": "application/json"}),
            413,
        ),
        "pixels": (_post(f"{url}/search", files={"image": ("big.png", big, "image/png")}), 413),
        "k": (_post(f"{url}/search", json={"text": "a", "k": 21}), 422),
        "k zero": (_post(f"{url}/search", json={"text": "a", "k": 0}), 422),
        "batch": (_post(f"{url}/embed", json={"texts": ["a"] * 5}), 413),
        "classify batch": (_post(f"{url}/classify", files=[("image", ("a.png", _png(8, 8), "image/png"))] * 5), 413),
        "text length": (_post(f"{url}/search", json={"text": "x" * 201}), 413),
        "bad json": (_post(f"{url}/search", data=b"{nope", headers={"content-type": "application/json"}), 400),
        "media type": (_post(f"{url}/search", data=b"text", headers={"content-type": "text/plain"}), 415),
        "not an image": (_post(f"{url}/search", files={"image": ("x.png", b"GIF89a-junk", "image/png")}), 400),
        "not a format we take": (_post(f"{url}/search", files={"image": ("x.png", b"II*\x00junk", "image/png")}), 415),
        "pixels of the whole request": (
            _post(f"{url}/embed", json={"images_b64": [base64.b64encode(_png(300, 300)).decode()] * 3}),
            413,
        ),
        "bad base64": (_post(f"{url}/search", json={"image_b64": "***"}), 400),
        "unknown index": (_post(f"{url}/search", json={"text": "a", "index": "nope"}), 404),
        "unknown filter column": (_post(f"{url}/search", json={"text": "a", "filters": {"nope": 1}}), 422),
        "wrong dim": (_post(f"{url}/search", json={"embedding": [1.0, 2.0]}), 422),
        "unknown route": (requests.get(f"{url}/nope", timeout=30), 404),
        "unknown image": (requests.get(f"{url}/images/shapes/999999", headers=AUTH, timeout=30), 404),
    }
    for name, (resp, status) in cases.items():
        assert resp.status_code == status, (name, resp.status_code, resp.text)
        err = resp.json()["error"]
        assert err["status"] == status and err["message"], name
    ok = requests.post(f"{url}/search", json={"text": "a"}, headers={"authorization": f"Bearer {KEY}"}, timeout=30)
    assert ok.status_code == 200
    # CORS is off by default: no allow-origin header for a cross-origin request
    r = requests.options(
        f"{url}/search", headers={"origin": "http://example.test", "access-control-request-method": "POST"}, timeout=30
    )
    assert "access-control-allow-origin" not in r.headers


def test_client_mistakes_are_not_logged_as_replica_errors(service, ray_session):
    """A client's mistake found in the index deployment is raised to the ingress (a JSON 4xx) and logged
    by that replica as one INFO line, never as an ERROR with a traceback."""
    url = service["url"]
    r = _post(f"{url}/search", json={"text": "a", "index": "nowhere"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_index"
    assert r.json()["error"]["message"] == "no index named 'nowhere'; open ones: ['shapes', 'tiny']"
    r = _post(f"{url}/search", json={"text": "a", "filters": {"colour_name": "red"}})
    assert r.status_code == 422 and "colour_name" in r.json()["error"]["message"]
    logs = Path(ray_session._private.worker._global_node.get_session_dir_path()) / "logs" / "serve"
    deadline, lines = time.monotonic() + 30, []
    while time.monotonic() < deadline:
        lines = [
            json.loads(line)
            for f in logs.glob(f"replica_{APP}_IndexServer_*.log")
            for line in f.read_text(errors="replace").splitlines()
            if line.startswith("{")
        ]
        if any("Request refused (404 unknown_index)" in x.get("message", "") for x in lines):
            break
        time.sleep(1)
    refused = [x for x in lines if x.get("message", "").startswith("Request refused")]
    assert {x["levelname"] for x in refused} == {"INFO"} and len(refused) >= 2, refused
    errors = [x for x in lines if x.get("levelname") == "ERROR"]
    assert not errors, errors[:2]
    assert not any("Traceback" in x.get("message", "") + x.get("exc_text", "") for x in lines)


def test_ab_split_counts_and_per_version_models(service):
    url = service["url"]
    png = _png(20, 20)
    n = 120
    counts = {"v1": 0, "v2": 0}
    for _ in range(n):
        r = _post(f"{url}/classify", files={"image": ("x.png", png, "image/png")})
        assert r.status_code == 200, r.text
        counts[r.json()["model_version"]] += 1
    p = SPLIT["v1"]
    assert abs(counts["v1"] - n * p) <= 4.5 * (n * p * (1 - p)) ** 0.5, counts
    a = _post(f"{url}/classify", files={"image": ("x.png", png, "image/png")}, headers={"x-model-version": "v1"}).json()
    b = _post(
        f"{url}/classify", json={"images_b64": [base64.b64encode(png).decode()] * 2}, headers={"x-model-version": "v2"}
    ).json()
    assert (a["model_version"], a["kind"], a["predictions"][0]["label"] in ("red", "green", "blue")) == (
        "v1",
        "timm",
        True,
    )
    assert b["model_version"] == "v2" and b["kind"] == "clip-zero-shot" and len(b["predictions"]) == 2
    assert set(b["predictions"][0]["probabilities"]) == set(SHAPES)
    sticky = {
        _post(f"{url}/classify", files={"image": ("x.png", png, "image/png")}, headers={"x-ab-key": "caller-1"}).json()[
            "model_version"
        ]
        for _ in range(5)
    }
    assert len(sticky) == 1
    r = _post(f"{url}/classify", files={"image": ("x.png", png, "image/png")}, headers={"x-model-version": "zzz"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_version"


def _swap(service, indices: dict[str, str], until) -> list[dict]:
    """Redeploy the config with the IndexServer's user_config set to ``indices`` while a poller asks
    /indices all along (``serve run`` itself takes seconds); every answer is kept, up to the first one
    for which ``until(answer)`` holds."""
    from raylens.serve.ray_apps import run_config

    cfg = json.loads(json.dumps(service["config"]))
    index_server = next(d for d in cfg["applications"][0]["deployments"] if d["name"] == "IndexServer")
    index_server["user_config"] = {"indices": indices}
    # one replica throughout: a replica that autoscaling adds while the foreign index is the target starts
    # with that config and fails its start (by design), which is not the in-place swap this test is about
    index_server["autoscaling_config"] = {**index_server["autoscaling_config"], "min_replicas": 1, "max_replicas": 1}
    answers: list[dict] = []
    done = threading.Event()

    def poll() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            answers.append(requests.get(f"{service['url']}/indices", headers=AUTH, timeout=60).json())
            if until(answers[-1]):
                done.set()
                return
            time.sleep(0.02)

    poller = threading.Thread(target=poll)
    poller.start()
    run_config(cfg)  # only a user_config changed: the replica reconfigures in place
    poller.join(timeout=300)
    assert done.is_set(), f"the swap did not finish: {answers[-1] if answers else None}"
    return answers


def test_index_swap_keeps_serving_while_the_new_index_loads_and_drops_no_request(service, assets):
    """A new user_config loads a large index on the replica's loader thread while searches keep coming:
    the replica answers (it reports the load in progress, and searches succeed meanwhile), then swaps
    the index in; a second swap goes to index v2. No request fails."""
    url = service["url"]
    statuses: list[int] = []
    failures: list[str] = []
    during_load: list[int] = []
    loading = threading.Event()
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set() and len(statuses) < 4000:
            r = _post(f"{url}/search", json={"text": "a green star", "k": 3}, timeout=120)
            statuses.append(r.status_code)
            if loading.is_set():
                during_load.append(r.status_code)
            if r.status_code != 200:
                failures.append(r.text[:300])

    worker = threading.Thread(target=load)
    worker.start()
    try:

        def watch(answer: dict) -> bool:
            if answer.get("loading"):
                loading.set()
            elif loading.is_set():
                loading.clear()
            return answer["indices"].get("shapes", {}).get("count") == 200_000

        answers = _swap(service, {"shapes": str(assets["big"])}, watch)
        loading.clear()
        answers += _swap(service, {"shapes": str(assets["index_v2"])}, lambda a: a["indices"]["shapes"]["count"] == 25)
        # a swap to an index of another checkpoint fails: reported, and the old set goes on serving
        failed = _swap(service, {"shapes": str(assets["foreign"])}, lambda a: bool(a.get("swap_error")))
        time.sleep(1.0)
    finally:
        stop.set()
        worker.join(timeout=120)
    seen_loading = [a for a in answers if a.get("loading")]
    assert seen_loading, "the replica never answered while it loaded the new index"
    assert during_load and set(during_load) == {200}  # searches were answered while the index loaded
    assert statuses and set(statuses) == {200}, ({s: statuses.count(s) for s in set(statuses)}, failures[:3])
    assert "IndexMismatchError" in failed[-1]["swap_error"] and failed[-1]["indices"]["shapes"]["count"] == 25
    problems = requests.get(f"{url}/status", headers=AUTH, timeout=30).json()["problems"]
    assert any("the last index swap failed" in p for p in problems), problems


def test_prometheus_metrics_include_serve_and_search(service, ray_session):
    from raylens.serve.observe import INDEX_VECTORS, SEARCH_LATENCY_MS, exported_name

    port = next(n["MetricsExportPort"] for n in ray_session.nodes() if n["Alive"])
    _post(f"{service['url']}/search", json={"text": "a red square"})
    want = [exported_name(SEARCH_LATENCY_MS) + "_bucket", exported_name(INDEX_VECTORS), "ray_serve_num_http_requests"]
    deadline, text = time.monotonic() + 90, ""
    while time.monotonic() < deadline:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
        if all(w in text for w in want):
            break
        time.sleep(2)
    missing = [w for w in want if w not in text]
    assert not missing, f"not exported: {missing}"


def test_structured_logs_carry_the_request_id(service, ray_session):
    """The config's JSON logging: the ingress's own log line for a search holds Serve's request id."""
    r = _post(f"{service['url']}/search", json={"text": "a blue triangle", "k": 2})
    rid = r.headers["x-request-id"]
    logs = Path(ray_session._private.worker._global_node.get_session_dir_path()) / "logs" / "serve"
    deadline, found = time.monotonic() + 30, []
    while time.monotonic() < deadline and not found:
        for f in logs.glob(f"replica_{APP}_SearchIngress_*.log"):
            for line in f.read_text(errors="replace").splitlines():
                if rid in line and "search index=" in line:
                    found.append(json.loads(line))
        time.sleep(1)
    assert found, f"no JSON log line with request id {rid}"
    assert found[0]["request_id"] == rid and found[0]["route"] == "/search"


def test_openapi_contract_passes_every_schemathesis_check(service):
    """Schemathesis's own CLI with every check (examples, coverage, fuzzing) against the deployed
    service's live /openapi.json: 0 failures."""
    import subprocess
    import sys

    cmd = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file",
        str(REPO / "tests" / "schemathesis.toml"),
        "run",
        f"{service['url']}/openapi.json",
        "--checks",
        "all",
        "-H",
        f"x-api-key: {KEY}",
        "--max-examples",
        "10",
        "--workers",
        "1",
        "--generation-deterministic",
        "--no-color",
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks", "PYTHONPATH": str(REPO)}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "No issues found" in done.stdout and "7 selected" in done.stdout


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.mark.skipif(
    _chromium() is None,
    reason="Debian's chromium and chromium-driver are not installed "
    "(scripts/bootstrap.sh installs them when run as root)",
)
def test_search_page_in_headless_chromium(service, tmp_path):
    """A real browser types a query into the page and result images appear, with scores."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser, driver_path = _chromium()
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1200,900",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)  # no Selenium Manager
    try:
        driver.get(service["url"] + "/")
        driver.find_element(By.ID, "apikey").send_keys(KEY)
        driver.find_element(By.ID, "filter").send_keys("shape=circle")
        driver.find_element(By.ID, "query").send_keys("a red circle")
        driver.find_element(By.ID, "go").click()

        def loaded(d):
            imgs = d.find_elements(By.CSS_SELECTOR, "#results img.hit-image")
            return (
                imgs
                if imgs
                and all(
                    d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i) for i in imgs
                )
                else False
            )

        images = WebDriverWait(driver, 60).until(loaded)
        scores = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#results .score")]
        captions = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#results figcaption")]
        assert len(images) >= 1 and len(scores) == len(images)
        assert all(float(s) <= 1.0 for s in scores) and all("circle" in c for c in captions)
        driver.save_screenshot(str(tmp_path / "page.png"))
        if os.environ.get("RAYLENS_SCREENSHOT"):
            shutil.copy(tmp_path / "page.png", os.environ["RAYLENS_SCREENSHOT"])
    finally:
        driver.quit()
