import numpy as np
import pytest
from PIL import Image

from raylens.errors import IndexMismatchError, IndexNotFoundError
from raylens.index import VectorIndex
from raylens.models import create_model
from raylens.search import Searcher


@pytest.fixture(scope="module")
def model():
    return create_model("clip-tiny")


@pytest.fixture()
def searcher(model, tmp_path):
    rng = np.random.default_rng(0)
    paths, images = [], []
    for i in range(6):
        arr = rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
        p = tmp_path / f"{i}.png"
        Image.fromarray(arr).save(p)
        paths.append(str(p))
        images.append(model.preprocess(arr))
    vectors = model.encode_images(np.stack(images))
    index = VectorIndex.build(
        vectors,
        {"path": paths, "caption": [f"picture {i}" for i in range(6)]},
        model="clip-tiny",
        checkpoint_hash=model.checkpoint_hash,
    )
    return Searcher(model, index)


def test_text_and_image_search(searcher):
    hits = searcher.text("picture", k=3)
    assert len(hits) == 3 and hits[0].score >= hits[1].score >= hits[2].score
    same = searcher.image(hits[0].path, k=1)[0]  # by path; bytes and arrays work too
    assert same.path == hits[0].path and same.score == pytest.approx(1.0, abs=1e-4)
    with open(hits[0].path, "rb") as f:
        assert searcher.image(f.read(), k=1)[0].path == hits[0].path
    assert len(searcher.texts(["a", "b"], k=2)) == 2


@pytest.mark.parametrize(
    "query,k,match",
    [
        ("", 3, "empty query"),
        ("  ", 3, "empty query"),
        ("x", 0, "k must be"),
        ("x", 7, r"k must be an int in \[1, 6\]"),
    ],
)
def test_bad_queries(searcher, query, k, match):
    with pytest.raises(ValueError, match=match):
        searcher.text(query, k=k)


def test_missing_query_image_and_index(searcher, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        searcher.image(tmp_path / "nope.png")
    with pytest.raises(IndexNotFoundError):
        Searcher.open(tmp_path / "no-index-here")


def test_model_index_mismatch(model):
    index = VectorIndex.build(
        np.eye(4, 128, dtype=np.float32), {"path": list("abcd")}, model="clip-small", checkpoint_hash="other"
    )
    with pytest.raises(IndexMismatchError, match="built with model 'clip-small'"):
        Searcher(model, index)
