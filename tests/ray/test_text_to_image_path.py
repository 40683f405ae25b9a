"""ingest -> 2 training steps -> embed (actor pool) -> index -> search, on a real local Ray."""

import numpy as np
import pytest

from raylens_domains.natural.shapes import generate_shapes

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def shapes_with_bad_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    data = generate_shapes(root, n_train=48, n_heldout=24, seed=3)
    (root / "images/train/000001.png").write_bytes(b"not a png at all")  # corrupt
    (root / "images/train/000002.png").unlink()  # missing
    return data


def test_ingest_train_embed_index_search(ray_session, shapes_with_bad_files, tmp_path):
    from raylens.data.ray_reader import read_captioned_images
    from raylens.embed.ray_embed import embed_images
    from raylens.index import VectorIndex
    from raylens.models import create_model
    from raylens.search import Searcher
    from raylens.train import ClipTrainConfig
    from raylens.train.ray_clip import RayTrainOptions, fit_clip

    data = shapes_with_bad_files
    pre = create_model("clip-tiny").preprocess
    train = read_captioned_images(data.captions_path, pre, split="train")
    cfg = ClipTrainConfig(max_steps=2, batch_size=8, warmup_steps=1, log_every=1)
    result = fit_clip(train.dataset, cfg, RayTrainOptions(num_workers=2, storage_path=str(tmp_path / "runs"), name="t"))
    assert result.steps == 2 and (result.checkpoint / "model.safetensors").is_file()
    assert [h["step"] for h in result.history] == [1, 2]

    report = train.report()
    assert report.n_ok == 46 and report.n_skipped == 2
    reasons = {s.path.rsplit("/", 1)[-1]: s.reason for s in report.skipped}
    assert reasons["000002.png"] == "file not found" and reasons["000001.png"].startswith("not a readable image")

    held = read_captioned_images(data.captions_path, pre, split="heldout")
    ds = embed_images(held, "clip-tiny", str(result.checkpoint), batch_size=8)
    rows = ds.take_all()
    assert len(rows) == 24 and rows[0]["embedding"].shape == (128,) and "image" not in rows[0]
    vectors = np.stack([r["embedding"] for r in rows])
    meta = {k: [str(r[k]) for r in rows] for k in ("path", "caption", "colour", "shape")}
    model = create_model("clip-tiny", pretrained=str(result.checkpoint))
    index = VectorIndex.build(
        vectors, meta, model="clip-tiny", checkpoint_hash=model.checkpoint_hash, checkpoint=str(result.checkpoint)
    )
    index.save(tmp_path / "index")

    searcher = Searcher.open(tmp_path / "index")
    hits = searcher.text("a red circle", k=5)
    assert len(hits) == 5 and all(h.path and h.caption for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # image-to-image: a held-out image finds itself first
    first = searcher.image(rows[0]["path"], k=1)[0]
    assert first.path == rows[0]["path"] and first.score == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="empty query"):
        searcher.text("   ")
    with pytest.raises(ValueError, match="k must be"):
        searcher.text("a red circle", k=0)


def test_missing_captions_column_fails_before_any_task(ray_session, tmp_path):
    from raylens.data.images import ClipPreprocess
    from raylens.data.ray_reader import read_captioned_images

    (tmp_path / "c.csv").write_text("path,colour\na.png,red\n")  # `text` would be found as the caption
    with pytest.raises(ValueError, match="has no 'caption' column.*columns="):
        read_captioned_images(tmp_path / "c.csv", ClipPreprocess(32))
