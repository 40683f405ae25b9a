"""Parquet captions (paths or embedded ``image_bytes``): checked from the footer, decoded per batch."""

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raylens.data.captions import inspect_captions, parquet_files, read_captions
from raylens.data.decode import decode_captioned_batch
from raylens.data.images import ClipPreprocess


def _png_bytes(value=50):
    buf = io.BytesIO()
    Image.fromarray(np.full((10, 10, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _write(file, /, **columns):
    file.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), file)
    return file


def test_parquet_columns_from_file_and_folder(tmp_path):
    f = _write(tmp_path / "d/part-0.parquet", path=["a.png"], caption=["a cat"], image_bytes=[_png_bytes()])
    _write(tmp_path / "d/sub/part-1.parquet", path=["b.png"], caption=["a dog"], image_bytes=[None])
    assert inspect_captions(f).columns == ["path", "caption", "image_bytes"]
    assert inspect_captions(tmp_path / "d").roles == {
        "path": "path",
        "caption": "caption",
        "image_bytes": "image_bytes",
    }
    assert [p.name for p in parquet_files(tmp_path / "d")] == ["part-0.parquet", "part-1.parquet"]


@pytest.mark.parametrize(
    "columns,match",
    [
        ({"path": ["a"], "words": ["x"]}, r"no 'caption' column: .* it has \['path', 'words'\]"),
        ({"jpg": [b"x"], "caption": ["x"]}, r"no 'path' column \(with embedded images the path only names each row"),
        ({"path": ["a"], "caption": ["x"], "image_bytes": ["text"]}, "'image_bytes' must be binary"),
        ({"path": pa.array([], pa.string()), "caption": pa.array([], pa.string())}, "has no rows"),
    ],
)
def test_bad_parquet_is_a_clear_error(tmp_path, columns, match):
    f = _write(tmp_path / "c.parquet", **columns)
    with pytest.raises(ValueError, match=match):
        inspect_captions(f)


def test_not_parquet_or_missing(tmp_path):
    (tmp_path / "c.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(ValueError, match="not a readable parquet file"):
        inspect_captions(tmp_path / "c.parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no .parquet files"):
        inspect_captions(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"pass a .csv, .tsv, .jsonl or .parquet file"):
        inspect_captions(tmp_path / "nope.parquet")
    with pytest.raises(ValueError, match=r"must end in .csv, .tsv or .jsonl"):  # the list reader stays text-only
        read_captions(tmp_path / "c.parquet")


def test_decode_embedded_bytes_path_fallback_and_bad_rows(tmp_path):
    Image.fromarray(np.full((10, 10, 3), 9, np.uint8)).save(tmp_path / "on_disk.png")
    f = _write(
        tmp_path / "c.parquet",
        path=["emb.png", str(tmp_path / "on_disk.png"), "bad.png", "nocap.png"],
        caption=["embedded", "read from path", "corrupt bytes", None],
        image_bytes=[_png_bytes(), None, b"\x89PNG broken", _png_bytes()],
    )
    table = pq.read_table(f)
    batch = {c: np.asarray(table[c].to_pylist(), dtype=object) for c in table.column_names}
    out, skipped = decode_captioned_batch(batch, ClipPreprocess(8))
    assert out["path"].tolist() == ["emb.png", str(tmp_path / "on_disk.png")] and "image_bytes" not in out
    assert out["image"].shape == (2, 3, 8, 8)
    assert {s.path: s.reason.split(" (")[0] for s in skipped} == {
        "bad.png": "not a readable image",
        "nocap.png": "missing caption",
    }
