"""`raylens train fusion phantoms ...`: the command a user types, end to end on local Ray."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_train_fusion_on_phantoms_writes_curves_roc_history_and_a_checkpoint(ray_session, tmp_path):
    from raylens.cli import app
    from raylens.models import load_model

    args = ["train", "fusion", "phantoms", "--patients", "10", "--size", "16", "--spacing", "6", "--epochs", "2"]
    args += ["--batch-size", "2", "--model", "late", "--model-arg", "combine=logit", "--workers", "1"]
    args += ["--storage", str(tmp_path / "runs"), "--name", "cli", "--workdir", str(tmp_path / "work")]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output + repr(out.exception)
    assert "val_auc" in out.output and "checkpoint" in out.output and "ingest" in out.output
    for f in ("curves.png", "roc.png", "history.csv", "ingest_report.json"):
        assert (tmp_path / "work" / f).stat().st_size > 100, f
    last = sorted(p.parent for p in (tmp_path / "runs" / "cli").glob("checkpoint_*/config.json"))[-1]
    saved = json.loads((last / "config.json").read_text())
    assert saved["epoch"] == 1 and saved["model_config"]["combine"] == "logit"
    assert saved["transform"]["spatial_size"] == [16, 16, 16] and saved["run"]["name"] == "cli"
    assert load_model(last).kind == "late"
