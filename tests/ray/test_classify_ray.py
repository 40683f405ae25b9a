"""Image classification on Ray Train, end to end: 2 workers on class folders and a label table with
bad rows in them (reported, never fatal), checkpoints with EMA weights, curves, test metrics; and
`raylens train classify` on tiny settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

pytestmark = [pytest.mark.ray, pytest.mark.slow]

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


def _square(rgb, seed, size=16):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
    img[3:-3, 3:-3] = rgb
    return img


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Class folders (with a broken PNG and a text file), and a validation CSV with one row of an
    unknown class and one missing image."""
    root = tmp_path_factory.mktemp("classify")
    for name, rgb in COLOURS.items():
        (root / "train" / name).mkdir(parents=True)
        for i in range(16):
            Image.fromarray(_square(rgb, i)).save(root / "train" / name / f"{i}.png")
    (root / "train" / "red" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "train" / "green" / "notes.txt").write_text("not an image")
    (root / "val").mkdir()
    rows = ["path,colour"]
    for name, rgb in COLOURS.items():
        for i in range(4):
            Image.fromarray(_square(rgb, 100 + i)).save(root / "val" / f"{name}{i}.png")
            rows.append(f"{name}{i}.png,{name}")
    rows += ["red0.png,purple", "missing.png,blue"]
    (root / "val" / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_two_workers_train_checkpoint_evaluate_and_report_bad_rows(ray_session, data, tmp_path):
    from raylens.models.checkpoint import read_checkpoint
    from raylens.train.classify_config import ClassifyTrainConfig
    from raylens.train.classify_loop import EMA_FILE
    from raylens.train.options import RayTrainOptions
    from raylens.train.ray_classify import ClassifyJob, run_classify_job

    cfg = ClassifyTrainConfig(
        model="small_cnn",
        model_kwargs={"width": 4},
        image_size=16,
        epochs=2,
        batch_size=8,
        lr=3e-3,
        warmup_epochs=0.5,
        randaugment=True,
        randaugment_magnitude=5,
        ema_decay=0.9,
    )
    job = ClassifyJob(
        str(data / "train"), val=str(data / "val" / "labels.csv"), label_column="colour", workdir=tmp_path / "work"
    )
    opts = RayTrainOptions(num_workers=2, storage_path=str(tmp_path / "runs"), name="colours")
    out = run_classify_job(job, cfg, opts, progress=False)

    assert out.classes == ["blue", "green", "red"]
    assert [h["epoch"] for h in out.train.history] == [0, 1] and "val_top1" in out.train.history[-1]
    names = {p.name for p in out.train.checkpoint.iterdir()}
    assert {"model.safetensors", EMA_FILE, "config.json", "train_state.pt", "curves.png", "history.csv"} <= names
    ck = read_checkpoint(out.train.checkpoint)
    assert ck.config["classes"] == out.classes and ck.config["run"]["num_workers"] == 2
    # no test data: the final model is scored on the validation table
    assert out.evaluated_on.endswith("labels.csv") and out.test_metrics.n == 12
    for key in ("curves", "history", "per_class", "confusion", "metrics", "ingest"):
        assert Path(out.files[key]).stat().st_size > 100, key
    assert read_checkpoint(Path(out.files["model"])).config["image_size"] == 16
    summary = json.loads(Path(out.files["metrics"]).read_text())
    assert summary["test"]["top1"] == out.test_metrics.top1 and summary["epochs_run"] == 2

    skipped = {row["path"].rsplit("/", 1)[-1]: row["reason"] for r in out.ingest.values() for row in r["skipped"]}
    assert "not a readable image" in skipped["broken.png"] or "corrupt" in skipped["broken.png"]
    assert "extension" in skipped["notes.txt"]
    assert "'purple' is not in the class list" in skipped["red0.png"]
    assert skipped["missing.png"] == "file not found"


def test_an_empty_class_folder_is_refused_before_training(ray_session, data, tmp_path):
    from raylens.train.classify_config import ClassifyTrainConfig
    from raylens.train.ray_classify import ClassifyJob, run_classify_job

    root = tmp_path / "with_empty"
    (root / "empty").mkdir(parents=True)
    for name in COLOURS:
        (root / name).symlink_to(data / "train" / name)
    with pytest.raises(ValueError, match=r"class folder\(s\) \['empty'\] hold no image files"):
        run_classify_job(ClassifyJob(str(root), workdir=tmp_path / "w"), ClassifyTrainConfig(model="small_cnn"))


def _cli():
    from raylens.cli_classify import train_classify

    app = typer.Typer()
    app.command("classify")(train_classify)
    app.command("noop")(lambda: None)  # a second command keeps `classify` a subcommand
    return app


def test_the_cli_on_tiny_settings(ray_session, data, tmp_path):
    args = [
        "classify",
        str(data / "train"),
        "--model", "small_resnet",
        "--model-arg", "width=4",
        "--model-arg", "depths=[1,1,1]",
        "--image-size", "16",
        "--epochs", "1",
        "--warmup-epochs", "0",
        "--batch-size", "8",
        "--val-fraction", "0.25",
        "--workers", "2",
        "--storage", str(tmp_path / "runs"),
        "--name", "cli",
        "--workdir", str(tmp_path / "work"),
    ]  # fmt: skip
    out = CliRunner().invoke(_cli(), args, terminal_width=160)
    assert out.exit_code == 0, out.output + repr(out.exception)
    assert (
        "epoch   1/1" in out.output
        and "final metrics" in out.output
        and "scored" in out.output
        and "top-1" in out.output
    )
    assert "broken.png" in out.output  # the ingest report names what was skipped
    for f in ("curves.png", "history.csv", "confusion.png", "per_class.csv", "metrics.json"):
        assert (tmp_path / "work" / f).stat().st_size > 50, f
    assert list((tmp_path / "runs" / "cli").glob("**/model.safetensors"))


def test_the_cli_refuses_a_checkpoint_of_another_kind_as_the_model(ray_session, data, tmp_path):
    import torch

    from raylens.models.checkpoint import write_checkpoint

    fusion = write_checkpoint(
        tmp_path / "fusion", kind="fusion", arch="early", model_config={}, state_dict={"w": torch.ones(1)}
    )
    out = CliRunner().invoke(
        _cli(), ["classify", str(data / "train"), "--model", str(fusion), "--workdir", str(tmp_path / "w")]
    )
    assert out.exit_code != 0
    assert "holds a fusion model" in str(out.exception) and "not a classifier" in str(out.exception)


def test_a_parquet_table_with_embedded_images_splits_and_reports_bad_bytes(ray_session, tmp_path):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from raylens.data.images import ClipPreprocess
    from raylens.data.ray_labelled import read_labelled_images

    def png(rgb):
        buf = io.BytesIO()
        Image.fromarray(_square(rgb, 0)).save(buf, format="PNG")
        return buf.getvalue()

    keys = [f"k{i}" for i in range(40)]
    labels = [["red", "blue"][i % 2] for i in range(40)]
    blobs = [png(COLOURS[label]) for label in labels]
    blobs[3] = b"garbage"
    labels[5] = "mauve"
    pq.write_table(pa.table({"key": keys, "png": blobs, "label": labels}), tmp_path / "t.parquet")
    pre = ClipPreprocess(16)
    parts = {
        part: read_labelled_images(tmp_path / "t.parquet", pre, classes=["blue", "red"], part=part, val_fraction=0.25)
        for part in ("train", "val")
    }
    rows = {part: r.dataset.take_all() for part, r in parts.items()}
    seen = [row["path"] for part in rows.values() for row in part]
    assert len(seen) == len(set(seen)) == 38 and parts["train"].rows + parts["val"].rows == 39
    assert 4 <= len(rows["val"]) <= 16 and rows["val"][0]["image"].shape == (3, 16, 16)
    assert all(row["class_name"] == ["blue", "red"][row["label"]] for part in rows.values() for row in part)
    # a relative key is resolved against the table's folder, as relative paths are
    reasons = {Path(s.path).name: s.reason for r in parts.values() for s in r.report().skipped}
    assert "not a readable image" in reasons["k3"] and "not in the class list" in reasons["k5"], reasons
