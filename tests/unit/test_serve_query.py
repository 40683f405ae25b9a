"""raylens.serve.query / ab / http / classify: request parsing, A/B arithmetic, FastAPI errors, classifiers (no Ray)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from fastapi import FastAPI, Request
from PIL import Image

from raylens.serve.ab import TrafficSplit
from raylens.serve.limits import ServeError, ServeLimits, check_api_key, configured_api_key
from raylens.serve.query import (
    check_filters,
    decode_b64,
    decode_upload,
    parse_search,
    parse_search_form,
    parse_texts_or_images,
)

LIMITS = ServeLimits(max_pixels=10_000, max_batch=3, max_k=20, max_text_chars=50)


def _png(w: int = 16, h: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


def _err(fn, *a, **kw) -> tuple[int, str]:
    with pytest.raises(ServeError) as e:
        fn(*a, **kw)
    return e.value.status_code, e.value.code


def test_parse_text_image_and_embedding_queries():
    q = parse_search(
        {"text": "a red circle", "k": 5, "filters": {"shape": ["circle", "square"]}, "index": "natural"}, LIMITS
    )
    assert (q.kind, q.text, q.k, q.index) == ("text", "a red circle", 5, "natural")
    q = parse_search({"image_b64": base64.b64encode(_png()).decode()}, LIMITS)
    assert q.kind == "image" and q.image.shape == (16, 16, 3) and q.k == 10
    q = parse_search({"image_b64": "data:image/png;base64," + base64.b64encode(_png()).decode()}, LIMITS)
    assert q.image.dtype == np.uint8
    q = parse_search({"embedding": [0.1, 0.2, 0.3]}, LIMITS)
    assert q.kind == "embedding" and q.embedding.dtype == np.float32


@pytest.mark.parametrize(
    "body,status,code",
    [
        ([], 400, "bad_request"),
        ({}, 422, "one_query"),
        ({"text": "a", "embedding": [1.0]}, 422, "one_query"),
        ({"text": "a", "kk": 3}, 422, "unknown_fields"),
        ({"text": 3}, 422, "bad_text"),
        ({"text": "   "}, 400, "empty_text"),
        ({"text": "x" * 51}, 413, "text_too_long"),
        ({"text": "a", "k": 0}, 422, "bad_k"),
        ({"text": "a", "k": 21}, 422, "bad_k"),
        ({"text": "a", "k": True}, 422, "bad_k"),
        ({"text": "a", "k": 2.5}, 422, "bad_k"),
        ({"text": "a", "index": "../etc"}, 422, "bad_index_name"),
        ({"text": "a", "filters": [1]}, 422, "bad_filters"),
        ({"text": "a", "filters": {"c": {"like": 1}}}, 422, "bad_filters"),
        ({"text": "a", "filters": {"c": [{"x": 1}]}}, 422, "bad_filters"),
        ({"text": "a", "filters": {"c": [1, "a"]}}, 422, "bad_filters"),
        ({"text": "a", "filters": {"c": float("nan")}}, 422, "bad_filters"),
        ({"embedding": []}, 422, "bad_embedding"),
        ({"embedding": [0.0, 0.0]}, 422, "bad_embedding"),
        ({"embedding": [1.0, "x"]}, 422, "bad_embedding"),
        ({"embedding": [float("inf")]}, 422, "bad_embedding"),
        ({"image_b64": "!!!"}, 400, "bad_base64"),
        ({"image_b64": base64.b64encode(b"not an image").decode()}, 415, "unsupported_image_type"),
        ({"image_b64": base64.b64encode(b"\x89PNG\r\n\x1a\n truncated").decode()}, 400, "bad_image"),
        ({"text": None, "embedding": [1.0]}, 422, "one_query"),
        ({"embedding": None}, 422, "one_query"),
        ({"embedding": [2e6, 1.0]}, 422, "bad_embedding"),
        ({"embedding": [1e-7, 0.0]}, 422, "bad_embedding"),
        ({"text": "a\ud800"}, 400, "bad_text"),
        ({"text": "\u3000\x1c"}, 400, "empty_text"),
        ({"text": "a", "filters": {"c": 2**64}}, 422, "bad_filters"),
        ({"text": "a", "filters": {"c": "x" * 257}}, 422, "bad_filters"),
        ({"image_b64": 7}, 400, "bad_base64"),
    ],
)
def test_bad_search_bodies_are_4xx_with_a_reason(body, status, code):
    assert _err(parse_search, body, LIMITS) == (status, code)


def test_pixel_limit_refuses_before_decoding():
    assert decode_upload(_png(100, 100), LIMITS).shape == (100, 100, 3)
    assert _err(decode_upload, _png(101, 100), LIMITS) == (413, "too_many_pixels")
    # a bomb: a tiny PNG that claims 20000x20000 pixels is refused from its header
    bomb = io.BytesIO()
    Image.new("L", (20000, 20000)).save(bomb, "PNG")
    assert len(bomb.getvalue()) < 1_000_000
    assert _err(decode_upload, bomb.getvalue(), LIMITS) == (413, "too_many_pixels")
    assert _err(decode_upload, _png()[:40], LIMITS) == (400, "bad_image")
    assert _err(decode_upload, b"", LIMITS) == (400, "bad_image")


def test_form_search_and_batches():
    q = parse_search_form({"k": "4", "filters": json.dumps({"shape": "circle"})}, _png(), LIMITS)
    assert q.kind == "image" and q.k == 4 and q.filters == {"shape": "circle"}
    q = parse_search_form({"text": "a star", "index": "natural"}, None, LIMITS)
    assert q.kind == "text" and q.index == "natural"
    assert _err(parse_search_form, {"text": "a", "filters": "{"}, None, LIMITS) == (422, "bad_filters")
    assert _err(parse_search_form, {"text": "a"}, _png(), LIMITS) == (422, "one_query")
    assert _err(parse_search_form, {"k": "abc", "text": "a"}, None, LIMITS) == (422, "bad_k")
    assert parse_texts_or_images({"texts": ["a", "b"]}, LIMITS) == ("text", ["a", "b"])
    kind, imgs = parse_texts_or_images({"images_b64": [base64.b64encode(_png()).decode()]}, LIMITS)
    assert kind == "image" and imgs[0].shape == (16, 16, 3)
    assert _err(parse_texts_or_images, {"texts": ["a"] * 4}, LIMITS) == (413, "batch_too_large")
    assert _err(parse_texts_or_images, {"texts": []}, LIMITS) == (400, "empty_batch")
    assert _err(parse_texts_or_images, {"texts": ["a"]}, LIMITS, allow_texts=False) == (422, "unknown_fields")
    assert check_filters({"label": {"in": [1, 2]}, "split": "train"}) == {"label": {"in": [1, 2]}, "split": "train"}
    assert decode_b64(base64.b64encode(b"abc").decode()) == b"abc"


def test_traffic_split_arithmetic_and_stickiness():
    split = TrafficSplit({"a": 3, "b": 1}, seed=0)
    assert split.fraction("a") == 0.75
    assert [split.choose(u) for u in (0.0, 0.74, 0.75, 0.999)] == ["a", "a", "b", "b"]
    n = 20_000
    share = sum(split.pick() == "a" for _ in range(n)) / n
    assert abs(share - 0.75) < 5 * (0.75 * 0.25 / n) ** 0.5
    assert len({split.choose_for("caller-7") for _ in range(10)}) == 1
    assert split.route("b") == "b"
    with pytest.raises(KeyError, match="unknown model version"):
        split.route("c")
    for bad in ({}, {"a": -1}, {"a": 0}, {"": 1}, {"a": float("nan")}):
        with pytest.raises(ValueError):
            TrafficSplit(bad)


def test_api_key_from_a_file(monkeypatch, tmp_path):
    monkeypatch.delenv("RAYLENS_API_KEY", raising=False)
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    monkeypatch.setenv("RAYLENS_API_KEY_FILE", str(key_file))
    assert configured_api_key() == "from-file"
    check_api_key("from-file")
    assert _err(check_api_key, "nope") == (401, "unauthorized")
    monkeypatch.setenv("RAYLENS_API_KEY", "env-wins")
    assert configured_api_key() == "env-wins"
    monkeypatch.delenv("RAYLENS_API_KEY")
    key_file.write_text("")
    with pytest.raises(ValueError, match="empty"):
        configured_api_key()  # a named but empty key file fails closed
    monkeypatch.setenv("RAYLENS_API_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="cannot be read"):
        configured_api_key()


def test_fastapi_errors_are_json(monkeypatch):
    from fastapi.testclient import TestClient

    from raylens.serve.http import enable_cors, install_error_handlers, read_body, require_api_key

    monkeypatch.setenv("RAYLENS_API_KEY", "k")
    api = install_error_handlers(FastAPI())

    @api.post("/echo")
    async def echo(request: Request, n: int = 1):
        require_api_key(request)
        return {"n": n, "size": len(await read_body(request, ServeLimits(max_body_bytes=10)))}

    assert not enable_cors(api, "")
    c = TestClient(api)
    assert c.post("/echo", content=b"abc", headers={"x-api-key": "k"}).json() == {"n": 1, "size": 3}
    for resp, status in [
        (c.post("/echo", content=b"abc"), 401),
        (c.post("/echo", content=b"x" * 11, headers={"x-api-key": "k"}), 413),
        (c.post("/echo?n=x", content=b"a", headers={"x-api-key": "k"}), 422),
        (c.get("/nope"), 404),
        (c.get("/echo"), 405),
    ]:
        assert resp.status_code == status and resp.json()["error"]["status"] == status


def test_timm_classifier_checkpoint_round_trip(tmp_path):
    import timm

    from raylens.serve.classify import load_classifier, save_timm_classifier

    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    save_timm_classifier(model, tmp_path / "clf", arch="test_resnet", classes=["cat", "dog", "bird"], image_size=32)
    clf = load_classifier(tmp_path / "clf")
    out = clf.predict([np.zeros((40, 50, 3), np.uint8), np.full((32, 32, 3), 255, np.uint8)])
    assert len(out) == 2 and out[0]["label"] in ("cat", "dog", "bird")
    assert abs(sum(out[0]["probabilities"].values()) - 1) < 1e-5 and clf.kind == "timm"
    with pytest.raises(ValueError, match="classes"):
        save_timm_classifier(model, tmp_path / "bad", arch="test_resnet", classes=["a", "a"], image_size=32)


def test_clip_zero_shot_classifier(tmp_path):
    from raylens.models import create_model
    from raylens.serve.classify import load_classifier

    create_model("clip-tiny").save(tmp_path / "clip")
    with pytest.raises(ValueError, match="give `classes`"):
        load_classifier(tmp_path / "clip")
    clf = load_classifier(tmp_path / "clip", classes=["circle", "square"], templates=["a {} shape"])
    out = clf.predict([np.zeros((32, 32, 3), np.uint8)])
    assert out[0]["label"] in ("circle", "square") and clf.kind == "clip-zero-shot"
    assert abs(out[0]["probabilities"]["circle"] + out[0]["probabilities"]["square"] - 1) < 1e-5


def test_search_requests_become_the_cores_queries():
    """HTTP parsing yields raylens.search.SearchQuery: the object the one search core runs, as in the SDK."""
    from raylens.search import SearchQuery

    q = parse_search({"embedding": [0.5, 0.5], "k": 20, "filters": {"shape": {"in": ["a"]}}}, LIMITS)
    assert isinstance(q, SearchQuery) and q.kind == "embedding" and q.k == 20 and q.filters == {"shape": {"in": ["a"]}}
    q = parse_search_form({"k": "2", "index": "natural"}, _png(), LIMITS)
    assert isinstance(q, SearchQuery) and (q.kind, q.k, q.index, q.text) == ("image", 2, "natural", None)
    assert q.image.shape == (16, 16, 3)


def test_errors_from_anywhere_answer_one_json_shape():
    """Endpoints raise or catch any error; the client always gets {"error": {status, code, message}}."""
    import pickle

    from fastapi.testclient import TestClient

    from raylens.errors import IndexMismatchError, NoIndexError, RaylensError, UnknownIndexError
    from raylens.serve.http import install_error_handlers, json_error

    api = install_error_handlers(FastAPI())
    raised = {
        "unknown": UnknownIndexError("no index named 'x'; open ones: ['natural']"),
        "mismatch": IndexMismatchError("index 'x' was built with model 'clip-small'"),
        "no-index": NoIndexError("no index is open"),
        "fault": RaylensError("/secret/path is corrupt"),
        "serve": ServeError(413, "body_too_large", "too big"),
    }

    @api.get("/raise/{name}")
    async def raise_it(name: str):
        raise pickle.loads(pickle.dumps(raised[name]))  # as it arrives from another deployment

    @api.get("/caught")
    async def caught():
        try:
            raise ValueError("`filters` names unknown metadata column 'c'")
        except Exception as exc:
            return json_error(exc)

    c = TestClient(api, raise_server_exceptions=False)
    expect = {
        "unknown": (404, "unknown_index"),
        "mismatch": (409, "index_mismatch"),
        "no-index": (503, "no_index"),
        "fault": (500, "internal_error"),
        "serve": (413, "body_too_large"),
    }
    for name, (status, code) in expect.items():
        r = c.get(f"/raise/{name}")
        assert r.status_code == status and r.json()["error"]["code"] == code, (name, r.text)
    assert "secret" not in c.get("/raise/fault").text  # a 500 carries no details
    assert "internal error" == c.get("/raise/fault").json()["error"]["message"]
    assert c.get("/raise/unknown").json()["error"]["message"] == "no index named 'x'; open ones: ['natural']"
    r = c.get("/caught")
    assert r.status_code == 422 and r.json()["error"] == {
        "status": 422,
        "code": "invalid_input",
        "message": "`filters` names unknown metadata column 'c'",
    }
