import io

import numpy as np
import pytest
from PIL import Image

from raylens.data.captions import inspect_captions, read_captions
from raylens.data.decode import decode_captioned_batch
from raylens.data.images import ClipPreprocess


def test_csv_and_jsonl_resolve_relative_paths(tmp_path):
    (tmp_path / "c.csv").write_text("path,caption,split\nimg/a.png,a cat,train\n/abs/b.png,a dog,heldout\n")
    rows = read_captions(tmp_path / "c.csv")
    assert rows[0]["path"] == str(tmp_path.resolve() / "img/a.png") and rows[1]["path"] == "/abs/b.png"
    assert [r["caption"] for r in read_captions(tmp_path / "c.csv", split="heldout")] == ["a dog"]
    (tmp_path / "c.jsonl").write_text('{"path": "x.png", "caption": "7", "label": 7}\n\n')
    assert read_captions(tmp_path / "c.jsonl")[0]["label"] == "7"
    assert inspect_captions(tmp_path / "c.csv").columns == ["path", "caption", "split"]


@pytest.mark.parametrize(
    "name,text,match",
    [
        ("c.csv", "path,words\na.png,hi\n", r"no 'caption' column: none of .* it has \['path', 'words'\]"),
        ("c.csv", "path,caption\n", "no rows"),
        ("c.jsonl", "{not json}\n", "not valid JSON"),
        ("c.txt", "whatever", "must end in .csv, .tsv or .jsonl"),
    ],
)
def test_bad_captions_files(tmp_path, name, text, match):
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=match):
        read_captions(tmp_path / name)


def test_missing_file_and_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_captions(tmp_path / "nope.csv")
    (tmp_path / "c.csv").write_text("path,caption\na.png,x\n")
    with pytest.raises(ValueError, match="no 'split' column"):
        read_captions(tmp_path / "c.csv", split="train")


def test_decode_batch_skips_bad_rows_and_keeps_good(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(good)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(buf, format="PNG")
    (tmp_path / "trunc.png").write_bytes(buf.getvalue()[:60])
    (tmp_path / "text.png").write_text("hello")
    batch = {
        "path": np.array(
            [
                str(good),
                str(tmp_path / "trunc.png"),
                str(tmp_path / "text.png"),
                str(tmp_path / "missing.png"),
                str(good),
            ]
        ),
        "caption": np.array(["grey", "x", "y", "z", ""]),
        "label": np.array([1, 2, 3, 4, 5]),
    }
    out, skipped = decode_captioned_batch(batch, ClipPreprocess(16))
    assert out["image"].shape == (1, 3, 16, 16) and out["label"].tolist() == [1]
    reasons = {s.path.split("/")[-1] + ("#5" if s.reason == "missing caption" else ""): s.reason for s in skipped}
    assert reasons["trunc.png"].startswith("corrupt or truncated")
    assert reasons["text.png"].startswith("not a readable image")
    assert reasons["missing.png"] == "file not found"
    assert reasons["good.png#5"] == "missing caption"


def test_decode_batch_preprocesses_small_images_together_with_the_same_result(tmp_path):
    """Small images of several sizes go through one batched preprocess per size; a photo over
    BATCH_PIXELS goes alone. Every row matches the one-by-one preprocess exactly."""
    from raylens.data.images import BATCH_PIXELS

    rng = np.random.default_rng(0)
    shapes = [(40, 40), (30, 50), (40, 40), (300, 260), (30, 50)]
    assert 300 * 260 > BATCH_PIXELS
    arrays = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(tmp_path / f"{i}.png")
    batch = {"path": np.array([str(tmp_path / f"{i}.png") for i in range(5)]), "caption": np.array(["c"] * 5)}
    pre = ClipPreprocess(16)
    out, skipped = decode_captioned_batch(batch, pre)
    assert not skipped
    np.testing.assert_array_equal(out["image"], np.stack([pre(a) for a in arrays]))
    np.testing.assert_array_equal(pre.batch(arrays), out["image"])  # the photo goes alone inside batch() too


def test_decode_batch_finds_the_row_that_spoils_a_batched_preprocess(tmp_path):
    """A transform whose batch call fails on one odd image costs that row only (one by one)."""

    class Picky(ClipPreprocess):
        def __call__(self, image):
            if image[0, 0, 0] == 0:
                raise ValueError("no black corners")
            return super().__call__(image)

        def batch(self, images):
            return np.stack([self(im) for im in images])

    for i, v in enumerate((200, 0, 100)):
        Image.fromarray(np.full((20, 20, 3), v, np.uint8)).save(tmp_path / f"{i}.png")
    batch = {"path": np.array([str(tmp_path / f"{i}.png") for i in range(3)]), "caption": np.array(["a", "b", "c"])}
    out, skipped = decode_captioned_batch(batch, Picky(8))
    assert out["caption"].tolist() == ["a", "c"] and out["image"].shape == (2, 3, 8, 8)
    assert [(s.path.rsplit("/", 1)[-1], s.reason) for s in skipped] == [
        ("1.png", "could not decode or preprocess (ValueError: no black corners)")
    ]
    np.testing.assert_array_equal(out["image"][1], ClipPreprocess(8)(np.full((20, 20, 3), 100, np.uint8)))
