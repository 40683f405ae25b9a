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
