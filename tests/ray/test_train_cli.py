"""`raylens train clip digits --eval digits`: the command a user types, end to end on local Ray."""

import pytest
from typer.testing import CliRunner

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_train_command_on_digits_writes_curves_confusion_and_a_checkpoint(ray_session, tmp_path):
    from raylens.cli import app

    out = CliRunner().invoke(
        app,
        [
            "train",
            "clip",
            "digits",
            "--eval",
            "digits",
            "--steps",
            "6",
            "--batch-size",
            "32",
            "--workers",
            "1",
            "--warmup-steps",
            "1",
            "--storage",
            str(tmp_path / "runs"),
            "--name",
            "cli",
            "--workdir",
            str(tmp_path / "work"),
        ],
    )
    assert out.exit_code == 0, out.output + repr(out.exception)
    assert "zeroshot_top1" in out.output and "checkpoint" in out.output
    for f in ("curves.png", "history.csv", "confusion.png"):
        assert (tmp_path / "work" / f).stat().st_size > 500, f
    assert list((tmp_path / "runs" / "cli").glob("**/model.safetensors"))


def test_train_command_names_unknown_data_and_the_kinds_it_reads(ray_session, tmp_path):
    from raylens.cli import app

    out = CliRunner().invoke(app, ["train", "clip", str(tmp_path / "nope"), "--steps", "2"])
    assert out.exit_code != 0
    assert "nope" in str(out.exception) and "captions file" in str(out.exception)


def _coloured(rgb, size=24):
    import numpy as np

    img = np.zeros((size, size, 3), np.uint8)
    img[4:-4, 4:-4] = rgb
    return img


def test_train_from_class_folders_with_zero_shot_on_their_classes(ray_session, tmp_path):
    from PIL import Image

    from raylens.cli import app

    for name, rgb in {"red_square": (220, 20, 20), "blue_square": (20, 20, 220)}.items():
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(24):
            Image.fromarray(_coloured(rgb)).save(tmp_path / "data" / name / f"{i}.png")
    (tmp_path / "data" / "red_square" / "broken.png").write_bytes(b"not a png")
    out = CliRunner().invoke(
        app,
        [
            "train",
            "clip",
            str(tmp_path / "data"),
            "--eval",
            str(tmp_path / "data"),
            "--steps",
            "3",
            "--batch-size",
            "16",
            "--workers",
            "1",
            "--warmup-steps",
            "1",
            "--augment",
            "--hflip",
            "--storage",
            str(tmp_path / "runs"),
            "--workdir",
            str(tmp_path / "work"),
        ],
    )
    assert out.exit_code == 0, out.output + repr(out.exception)
    assert "1 skipped" in out.output, out.output  # the broken file, reported
    assert (tmp_path / "work" / "confusion.png").is_file() and "zeroshot_top1" in out.output


def test_siglip_with_accumulation_from_webdataset_shards(ray_session, tmp_path):
    import json

    from raylens.data.webdataset import write_webdataset_shards
    from raylens.train import ClipTrainConfig
    from raylens.train.ray_clip import RayTrainOptions
    from raylens.train.ray_recipe import TrainJob, run_train_job

    colours = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 230, 20)}
    pairs = [(_coloured(rgb), f"a {c} square") for _ in range(16) for c, rgb in colours.items()]
    write_webdataset_shards(pairs, tmp_path / "shards", shard_size=20)
    cfg = ClipTrainConfig(loss="siglip", accum_steps=2, max_steps=3, batch_size=8, warmup_steps=1, log_every=1)
    result = run_train_job(
        TrainJob(train=str(tmp_path / "shards" / "{00000..00003}.tar"), workdir=tmp_path / "work"),
        cfg,
        RayTrainOptions(num_workers=1, storage_path=str(tmp_path / "runs"), name="wds"),
    )
    assert result.steps == 3 and all(h["loss"] > 0 for h in result.history)
    saved = json.loads((result.checkpoint / "config.json").read_text())
    assert saved["train"]["loss"] == "siglip" and "init_logit_bias" in saved["open_clip"]
