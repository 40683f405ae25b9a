"""Every natural-image reader through real Ray Data: rows out, bad rows skipped and reported."""

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raylens.data import ReadResult, open_source
from raylens.data.augment import TrainAugment
from raylens.data.images import ClipPreprocess
from raylens.data.webdataset import write_tar, write_webdataset_shards

pytestmark = pytest.mark.ray


def _image(value):
    return np.full((20, 24, 3), value, np.uint8)


def _encoded(value, fmt="PNG"):
    buf = io.BytesIO()
    Image.fromarray(_image(value)).save(buf, format=fmt)
    return buf.getvalue()


def _by_path(rows):
    return {str(r["path"]): r for r in rows}


def test_parquet_embedded_bytes_and_paths(ray_session, tmp_path):
    from raylens.data.ray_reader import read_captioned_images

    Image.fromarray(_image(7)).save(tmp_path / "disk.png")
    pq.write_table(
        pa.table(
            {
                "path": ["e0", "e1", "disk.png", "gone.png", "bad", "nocap", "other"],
                "caption": ["zero", "one", "from disk", "missing file", "corrupt", None, "held out"],
                "image_bytes": [_encoded(0), _encoded(1, "JPEG"), None, None, b"garbage", _encoded(3), _encoded(4)],
                "split": ["train"] * 6 + ["val"],
            }
        ),
        tmp_path / "c.parquet",
        row_group_size=3,
    )
    data = read_captioned_images(tmp_path / "c.parquet", ClipPreprocess(16), split="train", batch_size=2)
    assert data.rows_estimate == 7  # the file's rows, known before any task (the split filters later)
    rows = _by_path(data.dataset.take_all())
    assert sorted(rows) == sorted([str(tmp_path / "e0"), str(tmp_path / "e1"), str(tmp_path / "disk.png")])
    assert rows[str(tmp_path / "disk.png")]["caption"] == "from disk"
    assert rows[str(tmp_path / "e0")]["image"].shape == (3, 16, 16) and "image_bytes" not in rows[str(tmp_path / "e0")]
    report = data.report()
    assert report.n_ok == 3 and {s.path.rsplit("/", 1)[-1]: s.reason.split(" (")[0] for s in report.skipped} == {
        "gone.png": "file not found",
        "bad": "not a readable image",
        "nocap": "missing caption",
    }
    # the last batch ("bad", "nocap") is all skipped: no empty block, so "image" stays an Arrow tensor column
    blocks = list(data.dataset.iter_batches(batch_size=None, batch_format="pyarrow"))
    assert all(b.num_rows > 0 and "Tensor" in type(b.schema.field("image").type).__name__ for b in blocks)

    pq.write_table(pa.table({"path": ["a"], "jpg": [b"x"]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"no 'caption' column: .* it has \['path', 'jpg'\]"):
        read_captioned_images(tmp_path / "bad.parquet", ClipPreprocess(16))


def test_captions_confined_to_an_image_root(ray_session, tmp_path):
    """``image_root``: rows naming files outside it (``../``, absolute, a link out) are skipped with the
    reason; rows inside are read."""
    import os

    from raylens.data.ray_reader import read_captioned_images

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    Image.fromarray(_image(5)).save(data_dir / "in.png")
    Image.fromarray(_image(6)).save(tmp_path / "out.png")
    os.symlink(tmp_path / "out.png", data_dir / "link.png")
    (data_dir / "c.csv").write_text(
        f"path,caption\nin.png,inside\n../out.png,dot-dot\n{tmp_path / 'out.png'},absolute\nlink.png,link out\n"
    )
    data = read_captioned_images(data_dir / "c.csv", ClipPreprocess(16), image_root=data_dir, batch_size=2)
    rows = data.dataset.take_all()
    assert [r["caption"] for r in rows] == ["inside"]
    report = data.report()
    assert report.n_ok == 1 and len(report.skipped) == 3
    assert all(s.reason.startswith("outside the dataset root") for s in report.skipped)
    with pytest.raises(NotADirectoryError, match="image_root"):
        read_captioned_images(data_dir / "c.csv", ClipPreprocess(16), image_root=tmp_path / "nope")


def test_image_folder(ray_session, tmp_path):
    from raylens.data.ray_folders import read_image_folder

    for i, cls in enumerate(["tabby_cat", "dog"]):
        (tmp_path / cls).mkdir()
        for j in range(3):
            Image.fromarray(_image(40 * i + j)).save(tmp_path / cls / f"{j}.png")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / "dog" / "9.png").write_bytes(b"broken png")
    data = read_image_folder(tmp_path, ClipPreprocess(16), shuffle_seed=0, batch_size=2)
    assert isinstance(data, ReadResult) and data.classes == ["dog", "tabby_cat"]
    assert data.rows_estimate == 7  # the listed image files, the broken one included
    rows = data.dataset.take_all()
    assert len(rows) == 6 and rows[0]["image"].shape == (3, 16, 16)
    cat = next(r for r in rows if r["class_name"] == "tabby_cat")
    assert cat["label"] == 1 and cat["caption"] == "a photo of a tabby cat"
    report = data.report()
    skipped = sorted((s.path.rsplit("/", 1)[-1], s.reason.split(" (")[0]) for s in report.skipped)
    assert report.n_ok == 6 and skipped == [("9.png", "not a readable image"), ("notes.txt", "not an image file")]

    with pytest.raises(FileNotFoundError, match="expected the layout"):
        read_image_folder(tmp_path / "nope", ClipPreprocess(16))


def test_webdataset_shards_with_bad_members(ray_session, tmp_path):
    from raylens.data.ray_webdataset import read_webdataset

    write_webdataset_shards([(_image(10 * i), f"caption {i}") for i in range(6)], tmp_path, shard_size=3)
    good = (tmp_path / "00000.tar").read_bytes()
    write_tar(
        tmp_path / "00002.tar",
        [
            ("k1.jpg", _encoded(5, "JPEG")),
            ("k1.txt", b"fine"),
            ("k2.jpg", _encoded(6, "JPEG")),  # no caption
            ("k3.txt", b"no image"),
            ("k4.jpg", b"not a jpeg"),
            ("k4.txt", b"corrupt"),
        ],
    )
    (tmp_path / "00003.tar").write_bytes(good[:700])  # cut inside the first image
    data = read_webdataset(str(tmp_path / "{00000..00003}.tar"), ClipPreprocess(16), batch_size=2)
    rows = data.dataset.take_all()
    keys = sorted(str(r["key"]) for r in rows)
    assert keys == ["000000", "000001", "000002", "000010", "000011", "000012", "k1"]
    assert all(str(r["path"]).endswith(f".tar:{r['key']}") and r["image"].shape == (3, 16, 16) for r in rows)
    report = data.report()
    reasons = {s.path.rsplit("/", 1)[-1]: s.reason.split(" (")[0] for s in report.skipped}
    assert report.n_ok == 7 and reasons == {
        "00002.tar:k2": "missing caption",
        "00002.tar:k3": "missing image",
        "00002.tar:k4": "not a readable image",
        "00003.tar:000000": "truncated or corrupt tar",
    }

    with pytest.raises(FileNotFoundError, match="do not exist"):
        read_webdataset(str(tmp_path / "{00000..00009}.tar"), ClipPreprocess(16))


def test_train_augment_new_draw_each_epoch_same_seed_same_run(ray_session, tmp_path):
    from raylens.data.ray_reader import read_captioned_images

    lines = ["path,caption"]
    for i in range(4):
        noise = np.random.default_rng(i).integers(0, 256, (64, 80, 3), dtype=np.uint8)
        Image.fromarray(noise).save(tmp_path / f"{i}.png")
        lines.append(f"{i}.png,image {i}")
    (tmp_path / "c.csv").write_text("\n".join(lines) + "\n")

    def epochs(seed, n):
        # wide scale range + RandAugment: two draws practically never give the same output
        aug = TrainAugment(16, scale=(0.3, 1.0), hflip=True, randaugment=True, seed=seed)
        data = read_captioned_images(tmp_path / "c.csv", aug, batch_size=2)
        out = [{k: r["image"] for k, r in _by_path(data.dataset.take_all()).items()} for _ in range(n)]
        return out, data.report()

    (e0, e1), report = epochs(seed=1, n=2)
    (again,), _ = epochs(seed=1, n=1)  # other seeds differ: tests/unit/test_augment.py
    assert report.n_ok == 4 and len(e0) == 4
    for path in e0:
        np.testing.assert_array_equal(e0[path], again[path])
        assert not np.array_equal(e0[path], e1[path])


def test_other_tools_layouts_open_through_the_source_registry(ray_session, tmp_path):
    """img2dataset's parquet output and open_clip's tab-separated CSV load as they are, via open_source."""
    pq.write_table(
        pa.table(
            {
                "key": ["000000000", "000000001", "000000002"],
                "url": ["https://example.com/0.jpg", "https://example.com/1.jpg", "https://example.com/2.jpg"],
                "caption": ["zero", "one", "failed download"],
                "jpg": [_encoded(0, "JPEG"), _encoded(1, "JPEG"), None],
                "status": ["success", "success", "failed_to_download"],
                "error_message": [None, None, "HTTP 404"],
            }
        ),
        tmp_path / "00000.parquet",
    )
    i2d = open_source(str(tmp_path / "00000.parquet"), ClipPreprocess(16), batch_size=2)
    rows = _by_path(i2d.dataset.take_all())
    assert sorted(rows) == ["https://example.com/0.jpg", "https://example.com/1.jpg"]
    assert rows["https://example.com/1.jpg"]["caption"] == "one" and "jpg" not in rows["https://example.com/1.jpg"]
    report = i2d.report()
    assert report.n_ok == 2 and [(s.path, s.reason.split(" (")[0]) for s in report.skipped] == [
        ("https://example.com/2.jpg", "remote URL")
    ]

    (tmp_path / "imgs").mkdir()
    for i in range(3):
        Image.fromarray(_image(30 * i)).save(tmp_path / "imgs" / f"{i}.png")
    lines = ["filepath\ttitle\tsource"] + [f"imgs/{i}.png\ta picture, number {i}\tweb" for i in range(3)]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    oc = open_source(str(tmp_path / "train.csv"), ClipPreprocess(16))
    rows = _by_path(oc.dataset.take_all())
    assert sorted(r["caption"] for r in rows.values()) == [f"a picture, number {i}" for i in range(3)]
    assert str(tmp_path / "imgs" / "0.png") in rows and oc.report().n_ok == 3 and oc.name == str(tmp_path / "train.csv")
    # the same file with the roles named by hand (the auto-detection picked the same ones)
    mapped = open_source(f"captions:{tmp_path / 'train.csv'}", ClipPreprocess(16), columns={"caption": "title"})
    assert mapped.dataset.count() == 3


def test_digits_source_is_a_read_result_with_classes_templates_and_a_complete_report(ray_session):
    digits = open_source("digits", ClipPreprocess(16), split="heldout")
    assert isinstance(digits, ReadResult) and digits.name == "digits:heldout"
    assert digits.classes == [str(i) for i in range(10)] and digits.templates == ["a photo of the digit {}"]
    n = digits.report().n_ok
    assert n > 400 and digits.dataset.count() == n
    row = digits.dataset.take(1)[0]
    assert row["image"].shape == (3, 16, 16) and str(row["path"]).startswith("sklearn-digits:")


def test_embedding_decodes_inside_its_tasks_and_still_reports_bad_rows(ray_session, tmp_path):
    """embed_images given a reader's result on CPU decodes and embeds in the same tasks: every good row
    gets an embedding, bad rows are skipped with their reason, and a second run reuses the workers'
    cached model (same vectors)."""
    from raylens.data.ray_folders import read_image_folder
    from raylens.embed.ray_embed import embed_images
    from raylens.models import create_model, save_model

    for cls, value in (("cat", 10), ("dog", 200)):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.fromarray(_image(value + i)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    model = create_model("clip-tiny")
    ckpt = str(save_model(model, tmp_path.parent / f"{tmp_path.name}-ckpt"))
    runs = []
    for _ in range(2):
        data = read_image_folder(tmp_path, model.preprocess, batch_size=4)
        rows = embed_images(data, "clip-tiny", ckpt, batch_size=4).take_all()
        runs.append({str(r["path"]): r["embedding"] for r in rows})
        assert len(rows) == 10 and all("image" not in r for r in rows)
        assert {r["class_name"] for r in rows} == {"cat", "dog"}
        skipped = data.report().skipped
        assert [s.path.rsplit("/", 1)[-1] for s in skipped] == ["broken.png"] and "image" in skipped[0].reason
    for path, vec in runs[0].items():
        want = model.encode_images(model.preprocess(np.asarray(Image.open(path).convert("RGB")))[None])[0]
        np.testing.assert_allclose(vec, want, atol=1e-5)
        np.testing.assert_array_equal(vec, runs[1][path])


def test_embedding_reads_one_block_per_task_where_the_reader_can_replan(ray_session, tmp_path):
    """embed_images on CPU asks the reader for one read block per task (rows_in) instead of the
    decode path's block per batch; every row still comes out once."""
    import ray

    from raylens.embed.ray_embed import embed_images, task_batches
    from raylens.models import create_model

    model = create_model("clip-tiny")
    for i in range(40):
        Image.fromarray(_image(i * 5)).save(tmp_path / f"{i}.png")
    (tmp_path / "captions.csv").write_text("path,caption\n" + "".join(f"{i}.png,c{i}\n" for i in range(40)))
    asked = []
    data = open_source(str(tmp_path / "captions.csv"), model.preprocess, batch_size=2)
    replan = data.rows_in
    data.rows_in = lambda n: asked.append(n) or replan(n)
    ds = embed_images(data, "clip-tiny", None, batch_size=2).materialize()
    per_task = 2 * task_batches(data.rows_estimate, 2, ray.cluster_resources()["CPU"])
    assert asked == [-(-data.rows_estimate // per_task)] and ds.num_blocks() == asked[0] > 1
    assert sorted(r["caption"] for r in ds.take_all()) == sorted(f"c{i}" for i in range(40))


def test_a_read_keeps_its_report_after_the_first_read_of_the_session_is_gone(ray_session):
    """The session's report actor is named; a later read that found it by name must not lose it
    when the read that created it is garbage-collected (a CI failure: ActorDiedError mid-ingest)."""
    import gc
    import time

    import ray

    from raylens.data.ray_reader import IngestReporter

    first = IngestReporter("first")
    second = IngestReporter("second")
    del first
    gc.collect()
    time.sleep(1.0)  # give Ray time to reap an actor whose creating handle went away
    ray.get(second.record.remote(["a.png"], [("b.png", "corrupt")]))
    report = ray.get(second.report.remote())
    assert (report.n_ok, [s.path for s in report.skipped]) == (1, ["b.png"])
