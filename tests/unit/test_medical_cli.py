"""`raylens train fusion` without Ray: registration, options from FusionTrainConfig, input checks."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from raylens_domains.medical.cli import FusionJob, in_validation, read_labels


def test_fusion_is_a_training_kind_with_the_config_fields_as_options():
    from raylens.cli import app

    out = CliRunner().invoke(
        app,
        ["train", "fusion", "phantoms", "--model", "mid", "--epochs", "3", "--checkpoint-every", "1", "--dry-run"],
    )
    assert out.exit_code == 0, out.output
    assert "model: mid" in out.output and "epochs: 3" in out.output and "checkpoint_every: 1" in out.output
    assert "num_workers: 2" in out.output  # RayTrainOptions, shared with `raylens train clip`
    bad = CliRunner().invoke(app, ["train", "fusion", "phantoms", "--model", "huge"])
    assert bad.exit_code != 0 and "huge" in bad.output


def test_job_checks_name_the_input_and_the_fix(tmp_path):
    with pytest.raises(ValueError, match="does not exist.*'phantoms'"):
        FusionJob(data=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="--labels is needed"):
        FusionJob(data=str(tmp_path))
    with pytest.raises(ValueError, match="`val_fraction`"):
        FusionJob(data="phantoms", val_fraction=1.0)
    with pytest.raises(ValueError, match="`label_key`"):
        FusionJob(data="phantoms", label_key="PatientName")
    assert FusionJob(data="phantoms", workdir="w").workdir.name == "w"


def test_labels_csv(tmp_path):
    good = tmp_path / "labels.csv"
    good.write_text("PatientID,label\nP1,1\nP2,0\n")
    assert read_labels(good) == {"P1": 1, "P2": 0}
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("id,label\nP1,1\n")
    with pytest.raises(ValueError, match="needs the columns PatientID and label"):
        read_labels(wrong)
    bad = tmp_path / "bad.csv"
    bad.write_text("PatientID,label\nP1,yes\n")
    with pytest.raises(ValueError, match="line 2: label must be 0 or 1"):
        read_labels(bad)
    with pytest.raises(ValueError, match="does not exist"):
        read_labels(tmp_path / "missing.csv")


def test_validation_split_is_stable_and_near_the_fraction():
    keys = [f"2.25.{i}" for i in range(2000)]
    held = [in_validation(k, 0.25) for k in keys]
    assert held == [in_validation(k, 0.25) for k in keys] and 0.22 < sum(held) / len(keys) < 0.28
