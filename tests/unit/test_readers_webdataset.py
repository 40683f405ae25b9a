"""WebDataset shards (img2dataset layout): writer, shard patterns, and every bad-member case."""

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from raylens.data.decode import decode_captioned_batch
from raylens.data.images import ClipPreprocess
from raylens.data.report import SkippedRow
from raylens.data.webdataset import expand_shards, iter_shard, shard_batches, write_tar, write_webdataset_shards


def _jpeg(value=90):
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 20, 3), value, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _pairs(n):
    return [(np.full((16, 20, 3), 10 * i, np.uint8), f"caption {i}") for i in range(n)]


def _results(shard):
    return [
        (x.path.rsplit(":", 1)[-1], x.reason if isinstance(x, SkippedRow) else x.caption) for x in iter_shard(shard)
    ]


def test_writer_uses_img2dataset_layout(tmp_path):
    shards = write_webdataset_shards(_pairs(5), tmp_path, shard_size=2)
    assert [p.name for p in shards] == ["00000.tar", "00001.tar", "00002.tar"]
    with tarfile.open(shards[1]) as tf:
        names = tf.getnames()
        meta = json.loads(tf.extractfile("000010.json").read())
    assert names == ["000010.jpg", "000010.txt", "000010.json", "000011.jpg", "000011.txt", "000011.json"]
    assert meta == {"key": "000010", "caption": "caption 2", "status": "success"}
    samples = list(iter_shard(shards[1]))
    assert [s.path for s in samples] == [f"{shards[1]}:000010", f"{shards[1]}:000011"]
    assert samples[0].image_bytes[:2] == b"\xff\xd8"  # a JPEG


def test_shard_patterns(tmp_path):
    write_webdataset_shards(_pairs(6), tmp_path, shard_size=2)
    want = [str(tmp_path / f"0000{i}.tar") for i in range(3)]
    assert expand_shards(str(tmp_path / "{00000..00002}.tar")) == want
    assert expand_shards(str(tmp_path / "*.tar")) == want
    assert expand_shards([tmp_path / "00002.tar", str(tmp_path / "0000{0,1}.tar")]) == [want[2], *want[:2]]
    with pytest.raises(FileNotFoundError, match=r"1 shard\(s\) do not exist.*00003.tar"):
        expand_shards(str(tmp_path / "{00000..00003}.tar"))
    with pytest.raises(ValueError, match="no shard matched"):
        expand_shards(str(tmp_path / "*.tgz"))


def test_bad_members_are_skipped_with_shard_and_key(tmp_path):
    shard = write_tar(
        tmp_path / "s.tar",
        [
            ("a.jpg", _jpeg()),
            ("a.txt", b"ok"),
            ("b.jpg", _jpeg()),  # image without caption
            ("c.txt", b"caption without image"),  # caption without image
            ("d.png", _jpeg()),
            ("d.json", json.dumps({"caption": "from json"}).encode()),
            ("e.jpg", _jpeg()),
            ("e.json", b"{not json"),  # bad json, no txt
            ("f.jpg", _jpeg()),
            ("f.txt", b"   "),  # blank caption
            ("g.jpg", _jpeg()),
            ("g.jpg", _jpeg()),
            ("g.txt", b"twice"),  # duplicate member
            ("h.txt", b"x"),
            ("h.cls", b"3"),  # no image
            ("dir/i.webp", _jpeg()),
            ("dir/i.txt", b"in a folder"),
        ],
    )
    got = _results(shard)
    assert got == [
        ("a", "ok"),
        ("b", "missing caption"),
        ("c", "missing image"),
        ("d", "from json"),
        ("e", "missing caption"),
        ("f", "missing caption"),
        ("g", "duplicate member (g.jpg)"),
        ("h", "missing image"),
        ("dir/i", "in a folder"),
    ]


def test_corrupt_image_is_skipped_at_decode_with_shard_key(tmp_path):
    shard = write_tar(
        tmp_path / "s.tar",
        [
            ("a.jpg", _jpeg()),
            ("a.txt", b"fine"),
            ("b.jpg", _jpeg()[:40]),
            ("b.txt", b"cut jpeg"),
            ("c.jpg", b"hello"),
            ("c.txt", b"text as jpeg"),
        ],
    )
    ((batch, skipped),) = list(shard_batches(shard, batch_size=10))
    assert skipped == [] and batch["path"].tolist() == [f"{shard}:a", f"{shard}:b", f"{shard}:c"]
    out, bad = decode_captioned_batch(batch, ClipPreprocess(8))
    assert out["path"].tolist() == [f"{shard}:a"] and out["image"].shape == (1, 3, 8, 8) and "image_bytes" not in out
    assert [s.path for s in bad] == [f"{shard}:b", f"{shard}:c"]
    assert bad[0].reason.startswith("corrupt or truncated image") and bad[1].reason.startswith("not a readable image")


@pytest.mark.parametrize(
    "cut,want",
    [
        (700, [("00000.tar:000000", "truncated or corrupt tar")]),  # inside the first image
        (4000, [("00000.tar:000000", "truncated or corrupt tar")]),  # inside a header
        (5000, [("00000.tar:000000", "caption 0"), ("00000.tar:000001", "truncated or corrupt tar")]),
        (300, [("00000.tar", "not a readable tar file")]),  # not even one header
    ],
)
def test_truncated_tar_keeps_what_came_before(tmp_path, cut, want):
    (shard,) = write_webdataset_shards(_pairs(3), tmp_path / "w", shard_size=3)
    (tmp_path / "00000.tar").write_bytes(shard.read_bytes()[:cut])
    got = [
        (p.rsplit("/", 1)[-1], r.split(" (")[0])
        for p, r in (
            (x.path, x.reason if isinstance(x, SkippedRow) else x.caption) for x in iter_shard(tmp_path / "00000.tar")
        )
    ]
    assert got == want


def test_unreadable_shards(tmp_path):
    (tmp_path / "x.tar").write_bytes(b"this is not a tar file at all" * 30)
    assert _results(tmp_path / "x.tar")[0][1].startswith("not a readable tar file")
    assert list(iter_shard(tmp_path / "gone.tar")) == [SkippedRow(str(tmp_path / "gone.tar"), "file not found")]


def test_shard_batches_split_and_carry_skips(tmp_path):
    shard = write_tar(
        tmp_path / "s.tar",
        [(f"{k}.jpg", _jpeg()) for k in "ab"]
        + [("a.txt", b"late")]
        + [(f"{k}.{e}", d) for k in "cde" for e, d in (("jpg", _jpeg()), ("txt", b"c"))],
    )
    batches = list(shard_batches(shard, batch_size=2))
    assert [b["key"].tolist() for b, _ in batches] == [["c", "d"], ["e"]]
    # "a" and "b" come before the first batch; the late "a.txt" starts a new sample "a" without image
    assert [(s.path.rsplit(":", 1)[-1], s.reason) for s in batches[0][1]] == [
        ("a", "missing caption"),
        ("b", "missing caption"),
        ("a", "missing image"),
    ]


def test_oversized_members_skip_their_sample_and_unasked_members_are_not_read(tmp_path, monkeypatch):
    """A gzip bomb member (8 MiB of zeros, a few KB compressed) is read only up to the cap; a member
    whose extension nobody asked for is never read; the samples around them come through."""
    from raylens.data import webdataset

    monkeypatch.setitem(webdataset.MAX_MEMBER_BYTES, "image", 2**20)
    shard = tmp_path / "bomb.tar.gz"
    with tarfile.open(shard, "w:gz") as tf:
        for name, data in [
            ("a.jpg", _jpeg()),
            ("a.txt", b"before"),
            ("b.jpg", bytes(8 * 2**20)),
            ("b.txt", b"the bomb"),
            ("c.jpg", _jpeg()),
            ("c.txt", b"after"),
            ("c.npy", bytes(4 * 2**20)),  # not an image or caption: skipped unread
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    assert shard.stat().st_size < 200_000
    assert _results(shard) == [("a", "before"), ("b", "jpg member over 1048576 bytes"), ("c", "after")]
