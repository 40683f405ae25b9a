"""Captions files in other tools' layouts (img2dataset, clip-retrieval, LAION, open_clip) load without renaming."""

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raylens.data.captions import inspect_captions, read_captions, resolve_columns
from raylens.data.decode import decode_captioned_batch
from raylens.data.images import ClipPreprocess


def _png(value=80):
    buf = io.BytesIO()
    Image.fromarray(np.full((12, 12, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _renamed_batch(file, layout):
    """The batch the Ray reader decodes: the parquet table with the mapped columns renamed."""
    table = pq.read_table(file).rename_columns([layout.renames.get(c, c) for c in layout.columns])
    return {c: np.asarray(table[c].to_pylist(), dtype=object) for c in table.column_names}


def test_img2dataset_parquet_output_embedded_jpg_named_by_url(tmp_path):
    # img2dataset --output_format parquet: the image in a binary "jpg" column next to its metadata
    pq.write_table(
        pa.table(
            {
                "key": ["000000000", "000000001", "000000002"],
                "url": ["https://example.com/a.png", "https://example.com/b.png", "https://example.com/c.png"],
                "caption": ["a grey square", "a dark square", "never downloaded"],
                "jpg": [_png(80), _png(20), None],
                "status": ["success", "success", "failed_to_download"],
                "error_message": [None, None, "HTTP 404"],
                "width": [12, 12, None],
                "height": [12, 12, None],
                "sha256": ["x", "y", None],
            }
        ),
        tmp_path / "00000.parquet",
    )
    layout = inspect_captions(tmp_path / "00000.parquet")
    assert layout.roles == {"path": "url", "caption": "caption", "image_bytes": "jpg"}
    out, skipped = decode_captioned_batch(_renamed_batch(tmp_path / "00000.parquet", layout), ClipPreprocess(8))
    assert out["path"].tolist() == ["https://example.com/a.png", "https://example.com/b.png"]
    assert out["image"].shape == (2, 3, 8, 8) and out["status"].tolist() == ["success", "success"]
    assert [(s.path, s.reason.split(" (")[0]) for s in skipped] == [("https://example.com/c.png", "remote URL")]
    assert "download the images first" in skipped[0].reason


def test_img2dataset_input_list_with_local_paths_and_file_urls(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(_png())
    uri = (tmp_path / "imgs" / "a.png").as_uri()
    (tmp_path / "list.csv").write_text(f"url,text\nimgs/a.png,a relative one\n{uri},a file url\n")
    assert inspect_captions(tmp_path / "list.csv").roles == {"path": "url", "caption": "text"}
    rows = read_captions(tmp_path / "list.csv")
    assert [r["path"] for r in rows] == [str((tmp_path / "imgs" / "a.png").resolve()), str(tmp_path / "imgs/a.png")]
    assert [r["caption"] for r in rows] == ["a relative one", "a file url"] and "url" not in rows[0]


def test_clip_retrieval_and_laion_parquet(tmp_path):
    # clip-retrieval inference metadata: image_path + caption; LAION parquet: URL + TEXT (+ scores)
    pq.write_table(pa.table({"image_path": ["/data/a.jpg"], "caption": ["a cat"]}), tmp_path / "meta.parquet")
    assert inspect_captions(tmp_path / "meta.parquet").roles == {"path": "image_path", "caption": "caption"}
    pq.write_table(
        pa.table({"SAMPLE_ID": [1], "URL": ["https://x/y.jpg"], "TEXT": ["a dog"], "similarity": [0.3]}),
        tmp_path / "laion.parquet",
    )
    layout = inspect_captions(tmp_path / "laion.parquet")
    assert layout.roles == {"path": "URL", "caption": "TEXT"} and layout.renames == {"URL": "path", "TEXT": "caption"}


def test_open_clip_tab_separated_csv(tmp_path):
    # open_clip's CsvDataset default: tab-separated, columns filepath and title
    (tmp_path / "train.csv").write_text("filepath\ttitle\n/data/a.jpg\ta cat, sitting\n/data/b.jpg\ta dog\n")
    layout = inspect_captions(tmp_path / "train.csv")
    assert layout.delimiter == "\t" and layout.roles == {"path": "filepath", "caption": "title"}
    rows = read_captions(tmp_path / "train.csv")
    assert rows[0] == {"path": "/data/a.jpg", "caption": "a cat, sitting"}


def test_explicit_mapping_wins_over_detection(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"caption": "auto", "alt_text": "chosen", "url": "a.png", "set": "train"}\n')
    layout = inspect_captions(tmp_path / "c.jsonl", {"caption": "alt_text", "split": "set"})
    assert layout.roles == {"path": "url", "caption": "alt_text", "split": "set"}
    assert layout.displaced == ["caption"]  # the unchosen "caption" column is left out, not duplicated
    (row,) = read_captions(tmp_path / "c.jsonl", columns={"caption": "alt_text", "split": "set"}, split="train")
    assert row == {"path": str(tmp_path.resolve() / "a.png"), "caption": "chosen", "split": "train"}


@pytest.mark.parametrize(
    "present,columns,match",
    [
        (["id", "words"], None, r"no 'path' column: none of \['path', .*\] matched; it has \['id', 'words'\]. Name"),
        (["url", "words"], None, r"no 'caption' column.*columns=\{'caption': 'YOUR_COLUMN'\}"),
        (["url", "text"], {"caption": "nope"}, r"maps 'caption' to 'nope', but .* it has \['url', 'text'\]"),
        (["url", "text"], {"image": "url"}, r"unknown role\(s\) \['image'\]; the roles are"),
        (["url", "text"], {"path": "url", "caption": "url"}, "two roles to one column"),
    ],
)
def test_mapping_errors_list_the_columns_and_the_fix(present, columns, match):
    with pytest.raises(ValueError, match=match):
        resolve_columns(present, columns)


def test_bytes_role_only_for_binary_columns_and_then_a_key_names_the_row():
    assert resolve_columns(["image", "caption"]) == {"path": "image", "caption": "caption"}
    assert resolve_columns(["image", "caption", "key"], binary=["image"]) == {
        "path": "key",
        "caption": "caption",
        "image_bytes": "image",
    }
    with pytest.raises(ValueError, match=r"no 'path' column \(with embedded images .*'key'\] matched"):
        resolve_columns(["id", "caption", "jpg"], binary=["jpg"])
