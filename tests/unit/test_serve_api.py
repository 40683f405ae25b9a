"""The search service's HTTP API in one process (raylens.serve.search_api over LocalSearchBackend):
a real clip-tiny model, a real FAISS index of real image files, FastAPI's test client. The doors:
auth on every route but liveness, no details without the key, files only from the data roots (no
symbolic-link escapes, no FIFOs), one pixel budget per request, only the image formats we mean,
405 with Allow, and the live OpenAPI document."""

from __future__ import annotations

import base64
import csv
import io
import os

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from raylens.serve.auth import ServeAuth, resolve_auth
from raylens.serve.limits import ServeLimits

KEY = "unit-test-key-0123456789"
AUTH = {"x-api-key": KEY}
LIMITS = ServeLimits(max_body_bytes=200_000, max_pixels=10_000, max_batch=4, max_k=20, max_text_chars=100)


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A shapes dataset under `data/`, files outside it, an index over both kinds, and the model."""
    from raylens.index import VectorIndex
    from raylens.models import create_model
    from raylens_domains.natural.shapes import generate_shapes

    tmp = tmp_path_factory.mktemp("api")
    data = generate_shapes(tmp / "data", n_train=0, n_heldout=6, seed=3)
    rows = list(csv.DictReader(data.captions_path.open()))
    outside = tmp / "secret.png"
    outside.write_bytes(_png(4, 4))
    (data.root / "link-out.png").symlink_to(outside)  # inside the root, pointing out of it
    (data.root / "link-in.png").symlink_to(data.root / rows[0]["path"])  # a link that stays inside
    os.mkfifo(data.root / "pipe.png")
    (data.root / "notes.png").write_text("not an image")
    (data.root / "big.png").write_bytes(_png(300, 300) + b"\0" * 250_000)  # over max_body_bytes
    special = {
        "outside": str(outside),
        "dotdot": str(data.root / ".." / "secret.png"),
        "link-out": str(data.root / "link-out.png"),
        "link-in": str(data.root / "link-in.png"),
        "relative": rows[1]["path"],  # relative to the data root
        "fifo": str(data.root / "pipe.png"),
        "text": str(data.root / "notes.png"),
        "big": str(data.root / "big.png"),
    }
    paths = [str(data.root / r["path"]) for r in rows] + list(special.values())
    model = create_model("clip-tiny")
    x = np.random.default_rng(0).normal(size=(len(paths), model.spec.embed_dim)).astype("float32")
    meta = {"path": paths, "caption": [f"item {i}" for i in range(len(paths))], "shape": ["circle"] * len(paths)}
    common = dict(model="clip-tiny", checkpoint_hash=model.checkpoint_hash, index_factory="Flat")
    index = VectorIndex.build(x, meta, data_roots=[data.root], **common)
    bare = VectorIndex.build(x, meta, **common)  # declares no data roots
    ids = {name: len(rows) + i for i, name in enumerate(special)}
    return {"model": model, "index": index, "bare": bare, "rows": rows, "root": data.root, "ids": ids}


def _client(world, auth: ServeAuth, limits: ServeLimits = LIMITS) -> TestClient:
    from raylens.serve.classify import ZeroShotClassifier
    from raylens.serve.local import LocalSearchBackend, create_search_api

    clf = ZeroShotClassifier(world["model"], ["circle", "square"], ["a {} shape"])
    backend = LocalSearchBackend(world["model"], {"shapes": world["index"], "bare": world["bare"]}, {"v1": clf})
    return TestClient(create_search_api(backend, auth=auth, limits=limits, versions={"v1": 1.0}))


@pytest.fixture(scope="module")
def client(world):
    return _client(world, resolve_auth(api_key=KEY, environ={}))


def test_every_route_but_liveness_needs_the_key(client):
    routes = [
        ("get", "/status", {}),
        ("get", "/indices", {}),
        ("get", "/openapi.json", {}),
        ("get", "/images/shapes/0", {}),
        ("post", "/search", {"json": {"text": "a red circle"}}),
        ("post", "/embed", {"json": {"texts": ["a"]}}),
        ("post", "/classify", {"json": {"images_b64": [base64.b64encode(_png(8, 8)).decode()]}}),
    ]
    for method, path, kw in routes:
        for headers in ({}, {"x-api-key": "wrong"}, {"authorization": "Bearer wrong"}):
            r = getattr(client, method)(path, headers=headers, **kw)
            assert r.status_code == 401, (path, headers, r.text)
            assert r.json()["error"]["code"] == "unauthorized" and r.headers["www-authenticate"].startswith("Bearer")
        ok = getattr(client, method)(path, headers={"authorization": f"Bearer {KEY}"}, **kw)
        assert ok.status_code == 200, (path, ok.text)


def test_liveness_says_up_and_nothing_else_details_need_the_key(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "up"}
    for path in ("/docs", "/redoc"):
        assert client.get(path, headers=AUTH).status_code == 404  # FastAPI's docs pages are off
    status = client.get("/status", headers=AUTH).json()
    assert status["ready"] and status["model"]["name"] == "clip-tiny" and status["indices"] == ["shapes", "bare"]
    text = client.get("/status", headers=AUTH).text + client.get("/indices", headers=AUTH).text
    assert "/" not in text.replace("\\/", "")  # no file paths: not the checkpoint's, not the index's


def test_item_files_come_from_the_data_roots_only(client, world):
    ids = world["ids"]
    first = client.get("/images/shapes/0", headers=AUTH)
    assert first.status_code == 200 and first.headers["content-type"] == "image/png"
    assert first.content == (world["root"] / world["rows"][0]["path"]).read_bytes()
    for name in ("link-in", "relative"):
        assert client.get(f"/images/shapes/{ids[name]}", headers=AUTH).status_code == 200, name
    for name in ("outside", "dotdot", "link-out", "fifo", "text"):  # the FIFO is never opened for reading
        r = client.get(f"/images/shapes/{ids[name]}", headers=AUTH)
        assert r.status_code == 404 and r.json()["error"]["code"] == "no_image", (name, r.text)
        assert "secret" not in r.text
    assert client.get(f"/images/shapes/{ids['big']}", headers=AUTH).status_code == 413
    assert client.get("/images/bare/0", headers=AUTH).status_code == 404  # no declared roots: nothing served
    assert client.get("/images/shapes/99999", headers=AUTH).status_code == 404
    assert client.get("/images/shapes/-1", headers=AUTH).status_code == 422
    assert client.get("/images/nope/0", headers=AUTH).status_code == 404


def test_one_pixel_budget_per_request_and_only_the_formats_we_mean(client):
    small = base64.b64encode(_png(60, 60)).decode()  # 3,600 pixels: under the 10,000 limit alone
    assert client.post("/embed", headers=AUTH, json={"images_b64": [small, small]}).status_code == 200
    r = client.post("/embed", headers=AUTH, json={"images_b64": [small, small, small]})  # 10,800 together
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_pixels"
    files = [("image", ("a.png", _png(60, 60), "image/png"))] * 3
    assert client.post("/classify", headers=AUTH, files=files).status_code == 413
    tiff = io.BytesIO()
    Image.new("RGB", (8, 8)).save(tiff, "TIFF")
    for payload in (tiff.getvalue(), b"%!PS-Adobe-3.0 EPSF-3.0\n"):
        r = client.post("/search", headers=AUTH, json={"image_b64": base64.b64encode(payload).decode()})
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_image_type"
    r = client.post("/search", headers=AUTH, files={"image": ("x.png", _png(20, 20), "image/png")}, data={"k": "2"})
    assert r.status_code == 200 and len(r.json()["hits"]) == 2


def test_wrong_methods_answer_405_with_allow(client):
    r = client.put("/search", headers=AUTH)
    assert r.status_code == 405 and r.headers["allow"] == "POST" and r.json()["error"]["code"] == "method_not_allowed"
    assert "GET" in client.post("/indices", headers=AUTH).headers["allow"]


def test_the_live_openapi_document_describes_this_service(client, world):
    doc = client.get("/openapi.json", headers=AUTH).json()
    assert doc["openapi"].startswith("3.1") and doc["security"]
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    search = doc["components"]["schemas"]["SearchRequest"]
    assert [v["required"] for v in search["oneOf"]] == [["text"], ["image_b64"], ["embedding"]]
    embedding = search["oneOf"][2]["properties"]["embedding"]
    assert embedding["minItems"] == embedding["maxItems"] == world["model"].spec.embed_dim
    assert search["oneOf"][0]["properties"]["index"]["anyOf"][0]["enum"] == ["shapes", "bare"]
    filters = search["oneOf"][0]["properties"]["filters"]["anyOf"][0]
    assert set(filters["properties"]) == {"id", "path", "caption", "shape"} and not filters["additionalProperties"]
    assert {"400", "401", "404", "413", "415", "422"} <= set(doc["paths"]["/search"]["post"]["responses"])
    assert client.post("/search", headers=AUTH, json=search["example"]).status_code == 200  # its own example works
    open_doc = _client(world, ServeAuth(open=True)).get("/openapi.json").json()
    assert "security" not in open_doc  # an open service declares no auth


def test_filters_of_the_wrong_type_are_refused(client):
    for filters in ({"shape": 1}, {"id": "3"}, {"id": {"in": [True]}}, {"nope": "x"}):
        r = client.post("/search", headers=AUTH, json={"text": "a shape", "filters": filters})
        assert r.status_code == 422, (filters, r.text)
    r = client.post("/search", headers=AUTH, json={"text": "a shape", "filters": {"id": {"in": [0, 1.0]}}, "k": 5})
    assert r.status_code == 200 and {h["id"] for h in r.json()["hits"]} == {0, 1}
