"""`raylens train digits --eval digits`: the command a user types, end to end on local Ray."""

import pytest
from typer.testing import CliRunner

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_train_command_on_digits_writes_curves_confusion_and_a_checkpoint(ray_session, tmp_path):
    from raylens.cli import app

    out = CliRunner().invoke(app, ["train", "digits", "--eval", "digits", "--steps", "6", "--batch-size", "32",
                                   "--workers", "1", "--warmup-steps", "1", "--storage", str(tmp_path / "runs"),
                                   "--name", "cli", "--workdir", str(tmp_path / "work")])
    assert out.exit_code == 0, out.output + repr(out.exception)
    assert "zeroshot_top1" in out.output and "checkpoint" in out.output
    for f in ("curves.png", "history.csv", "confusion.png"):
        assert (tmp_path / "work" / f).stat().st_size > 500, f
    assert list((tmp_path / "runs" / "cli").glob("**/model.safetensors"))


def test_train_command_names_unknown_data_and_the_kinds_it_reads(ray_session, tmp_path):
    from raylens.cli import app

    out = CliRunner().invoke(app, ["train", str(tmp_path / "nope"), "--steps", "2"])
    assert out.exit_code != 0
    assert "nope" in str(out.exception) and "captions file" in str(out.exception)
