"""raylens.search: the one search core (grouping, k, filters, the model/index check) and the SDK Searcher."""

import numpy as np
import pytest
from PIL import Image

from raylens.errors import IndexMismatchError, IndexNotFoundError, NoIndexError, NotReadyError, UnknownIndexError
from raylens.index import VectorIndex
from raylens.models import create_model
from raylens.search import (
    IndexSet,
    ModelEncoder,
    ModelIdentity,
    Searcher,
    SearchQuery,
    SearchResult,
    check_compatible,
    search_batch,
    search_batch_async,
)

SHAPES = ["circle", "square", "circle", "star", "circle", "square"]


@pytest.fixture(scope="module")
def model():
    return create_model("clip-tiny")


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8) for _ in range(6)]


@pytest.fixture()
def index(model, images, tmp_path):
    paths = []
    for i, arr in enumerate(images):
        p = tmp_path / f"{i}.png"
        Image.fromarray(arr).save(p)
        paths.append(str(p))
    vectors = model.encode_images(model.preprocess.batch(images))
    return VectorIndex.build(
        vectors,
        {"path": paths, "caption": [f"picture {i}" for i in range(6)], "shape": SHAPES},
        model="clip-tiny",
        checkpoint_hash=model.checkpoint_hash,
    )


@pytest.fixture()
def searcher(model, index):
    return Searcher(model, index)


class CountingEncoder(ModelEncoder):
    """The real model's encoder, counting its calls (how many batches the core sent it)."""

    def __init__(self, model):
        super().__init__(model)
        self.calls: list[tuple[str, int]] = []

    def encode_texts(self, texts):
        self.calls.append(("text", len(texts)))
        return super().encode_texts(texts)

    def encode_images(self, images):
        self.calls.append(("image", len(images)))
        return super().encode_images(images)


def test_text_and_image_search(searcher):
    hits = searcher.text("picture", k=3)
    assert len(hits) == 3 and hits[0].score >= hits[1].score >= hits[2].score
    same = searcher.image(hits[0].path, k=1)[0]  # by path; bytes and arrays work too
    assert same.path == hits[0].path and same.score == pytest.approx(1.0, abs=1e-4)
    with open(hits[0].path, "rb") as f:
        assert searcher.image(f.read(), k=1)[0].path == hits[0].path
    assert len(searcher.texts(["a", "b"], k=2)) == 2
    vector = searcher.model.encode_texts(["picture"])[0]
    assert [h.id for h in searcher.embedding(vector, k=3)] == [h.id for h in hits]


def test_k_above_the_index_size_returns_every_hit(searcher):
    hits = searcher.text("picture", k=7)
    assert len(hits) == 6 and len({h.id for h in hits}) == 6
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert len(searcher.text("picture", k=100, filters={"shape": "circle"})) == 3  # all the filter allows
    with pytest.raises(ValueError, match="k must be an int from 1 to 10000"):
        searcher.text("picture", k=10_001)


@pytest.mark.parametrize(
    "query,k,error,match",
    [
        ("", 3, ValueError, "empty query"),
        ("  ", 3, ValueError, "empty query"),
        ("x", 0, ValueError, "k must be"),
        ("x", 2.5, TypeError, "k must be"),
        ("x", True, TypeError, "k must be"),
    ],
)
def test_bad_queries(searcher, query, k, error, match):
    with pytest.raises(error, match=match):
        searcher.text(query, k=k)


def test_filters_restrict_hits_and_bad_filters_fail_before_encoding(model, index):
    enc = CountingEncoder(model)
    indices = IndexSet({"shapes": index}, model=enc.identity)
    [res] = search_batch([SearchQuery(text="picture", k=6, filters={"shape": ["circle", "star"]})], indices, enc)
    assert {h.metadata["shape"] for h in res.hits} == {"circle", "star"} and len(res.hits) == 4
    enc.calls.clear()
    with pytest.raises(ValueError, match="unknown metadata column 'colour'"):
        search_batch([SearchQuery(text="picture", filters={"colour": "red"})], indices, enc)
    with pytest.raises(ValueError, match=r"\{op: value\}"):
        search_batch([SearchQuery(text="picture", filters={"shape": {"like": "c"}})], indices, enc)
    assert enc.calls == []  # refused before the model ran


def test_one_batch_groups_by_kind_index_and_filters(model, index, images):
    enc = CountingEncoder(model)
    indices = IndexSet({"shapes": index, "same": index}, model=enc.identity)
    queries = [
        SearchQuery(text="picture 1", k=2),
        SearchQuery(text="picture 2", k=5, index="shapes"),  # the default named: the same group
        SearchQuery(text="picture 3", k=3, filters={"shape": "circle"}),
        SearchQuery(text="picture 4", k=3, filters={"shape": {"eq": "circle"}}),  # the same filter, spelled out
        SearchQuery(image=images[4], k=1, index="same"),
        SearchQuery(embedding=model.encode_texts(["picture 1"])[0], k=2),
    ]
    results = search_batch(queries, indices, enc)
    assert all(isinstance(r, SearchResult) for r in results)
    assert sorted(enc.calls) == [("image", 1), ("text", 2), ("text", 2)]  # one call per group
    assert [len(r.hits) for r in results] == [2, 5, 3, 3, 1, 2]
    assert [r.index for r in results] == ["shapes"] * 4 + ["same", "shapes"]
    assert results[4].hits[0].id == 4 and results[4].hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert [h.id for h in results[0].hits] == [h.id for h in results[5].hits]  # text == its own embedding
    alone = search_batch([SearchQuery(text="picture 2", k=5)], indices, enc)[0]
    assert [h.id for h in alone.hits] == [h.id for h in results[1].hits]  # batching changes no answer
    assert {h.metadata["shape"] for h in results[2].hits} == {"circle"}


def test_a_bad_query_fails_alone_with_return_exceptions(model, index):
    enc = ModelEncoder(model)
    indices = IndexSet({"shapes": index}, model=enc.identity)
    queries = [
        SearchQuery(text="picture", k=2),
        SearchQuery(text="picture", index="nope"),
        SearchQuery(embedding=[1.0, 0.0, 0.0]),
        SearchQuery(text="picture", filters={"shape": 3}),  # an int against a string column
    ]
    out = search_batch(queries, indices, enc, return_exceptions=True)
    assert isinstance(out[0], SearchResult) and len(out[0].hits) == 2
    assert isinstance(out[1], UnknownIndexError) and "open ones: ['shapes']" in str(out[1])
    assert isinstance(out[2], ValueError) and "3 numbers" in str(out[2]) and "128-dim" in str(out[2])
    assert isinstance(out[3], ValueError) and "does not compare" in str(out[3])
    with pytest.raises(UnknownIndexError):
        search_batch(queries, indices, enc)


def test_async_core_gives_the_same_answers_groups_and_errors(model, index, images):
    import asyncio

    # the same encoder, awaited (ModelEncoder's aencode_* run its encode_* in worker threads)
    sync_enc, async_enc = CountingEncoder(model), CountingEncoder(model)
    indices = IndexSet({"shapes": index, "same": index}, model=sync_enc.identity)
    queries = [
        SearchQuery(text="picture 1", k=2),
        SearchQuery(text="picture 2", k=5, index="shapes"),
        SearchQuery(text="picture 3", k=3, filters={"shape": "circle"}),
        SearchQuery(image=images[4], k=1, index="same"),
        SearchQuery(embedding=model.encode_texts(["picture 1"])[0], k=2),
        SearchQuery(text="picture", index="nope"),
        SearchQuery(text="picture", filters={"shape": 3}),
    ]
    want = search_batch(queries, indices, sync_enc, return_exceptions=True)
    got = asyncio.run(search_batch_async(queries, indices, async_enc, return_exceptions=True))
    # one call per group (the int filter on a string column fails in its search, after encoding)
    assert sorted(async_enc.calls) == sorted(sync_enc.calls) == [("image", 1), ("text", 1), ("text", 1), ("text", 2)]
    for w, g in zip(want, got, strict=True):
        assert type(w) is type(g)
        if isinstance(w, SearchResult):
            assert w.index == g.index and [h.id for h in w.hits] == [h.id for h in g.hits]
        else:
            assert str(w) == str(g)
    with pytest.raises(UnknownIndexError):  # without return_exceptions the first mistake raises
        asyncio.run(search_batch_async(queries, indices, async_enc))
    with pytest.raises(NotReadyError):  # text needs a model
        asyncio.run(search_batch_async(queries[:1], IndexSet({"shapes": index}), None))
    other = ModelIdentity("clip-tiny", "another", 128)
    with pytest.raises(IndexMismatchError):
        asyncio.run(search_batch_async(queries[:1], IndexSet({"shapes": index}, model=other), async_enc))


def test_model_index_check_happens_on_attach(model, index):
    other = VectorIndex.build(
        np.eye(4, 128, dtype=np.float32), {"path": list("abcd")}, model="clip-small", checkpoint_hash="other"
    )
    with pytest.raises(IndexMismatchError, match="built with model 'clip-small'"):
        Searcher(model, other)
    searcher = Searcher(model, index)
    with pytest.raises(IndexMismatchError, match="index 'default' was built with model 'clip-small'"):
        searcher.index = other  # a swap is checked too, and refused
    assert searcher.index is index
    narrow = VectorIndex.build(np.eye(4, 8, dtype=np.float32), None, model="clip-tiny", checkpoint_hash="")
    with pytest.raises(IndexMismatchError, match="8-dim vectors"):
        check_compatible(ModelIdentity.of(model), narrow, "narrow")
    loose = VectorIndex.build(np.eye(4, 128, dtype=np.float32), None, model="clip-tiny", checkpoint_hash="")
    stranger = ModelIdentity("clip-tiny", "another-checkpoint", 128)  # matches `loose`: it records no checkpoint
    with pytest.raises(IndexMismatchError, match="the encoder is"):  # but the encoder is not that model
        search_batch([SearchQuery(text="a")], IndexSet({"x": loose}, model=stranger), ModelEncoder(model))


def test_index_set_resolution_and_embedding_only_sets(index):
    assert IndexSet().default is None
    with pytest.raises(NoIndexError, match="no index is open"):
        IndexSet().resolve(None)
    s = IndexSet({"a": index, "b": index})
    assert s.default == "a" and s.resolve(None) == ("a", index) and list(s) == ["a", "b"]
    with pytest.raises(UnknownIndexError, match=r"no index named 'c'; open ones: \['a', 'b'\]"):
        s.resolve("c")
    with pytest.raises(TypeError, match="must be a VectorIndex"):
        IndexSet({"a": "runs/index"})
    vector = index.reconstruct([2])[0]
    [res] = search_batch([SearchQuery(embedding=vector, k=1)], s)  # no model: embedding queries only
    assert res.hits[0].id == 2
    with pytest.raises(NotReadyError, match="need a model"):
        search_batch([SearchQuery(text="a")], s)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({}, ValueError, "exactly one of"),
        ({"text": "a", "embedding": [1.0]}, ValueError, "exactly one of"),
        ({"text": 3}, TypeError, "`text` must be a string"),
        ({"image": np.zeros((4, 4), np.uint8)}, ValueError, r"\(H, W, 3\) uint8"),
        ({"image": np.zeros((4, 4, 3), np.float32)}, ValueError, r"\(H, W, 3\) uint8"),
        ({"embedding": [[1.0, 2.0]]}, ValueError, "1-D"),
        ({"embedding": ["x"]}, TypeError, "numbers"),
        ({"embedding": [float("nan")]}, ValueError, "NaN"),
        ({"text": "a", "filters": [1]}, TypeError, "`filters` must be a dict"),
        ({"text": "a", "index": ""}, ValueError, "`index` must be"),
    ],
)
def test_search_query_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        SearchQuery(**kwargs)


def test_missing_query_image_and_index(searcher, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        searcher.image(tmp_path / "nope.png")
    with pytest.raises(IndexNotFoundError):
        Searcher.open(tmp_path / "no-index-here")
    with pytest.raises(TypeError, match="list of strings"):
        searcher.texts("one string")
    with pytest.raises(ValueError, match="no queries"):
        searcher.texts([])
