"""The job configs under examples/jobs/ (one per training kind) load through the real CLI, and a wrong key
is refused with the valid ones listed, before anything runs (``--dry-run``)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

JOBS = Path(__file__).resolve().parents[2] / "examples" / "jobs"
DATA = {"clip": "digits", "classify": "digits", "fusion": "phantoms", "nerf": "capture"}


def _dry_run(kind: str, config: Path):
    from raylens.cli import app

    return CliRunner().invoke(app, ["train", kind, DATA[kind], "--config", str(config), "--dry-run"])


def test_there_is_one_job_config_per_training_kind():
    assert sorted(p.stem for p in JOBS.glob("*.yaml")) == sorted(DATA)


@pytest.mark.parametrize("kind", sorted(DATA))
def test_job_config_resolves_through_the_cli(kind):
    config = JOBS / f"{kind}.yaml"
    result = _dry_run(kind, config)
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.output)
    for section, values in yaml.safe_load(config.read_text()).items():
        for key, value in values.items():
            assert resolved[section][key] == value, f"{kind}: {section}.{key}"
    # each job keeps its outputs and checkpoints under one named run, and retries on a cluster
    assert resolved["ray"]["name"] and resolved["ray"]["storage_path"] and resolved["ray"]["max_failures"] >= 1


def test_a_wrong_key_is_named_with_the_valid_ones(tmp_path):
    bad = tmp_path / "classify.yaml"
    shutil.copy(JOBS / "classify.yaml", bad)
    bad.write_text(bad.read_text().replace("  epochs: 15", "  epoch: 15"))
    result = _dry_run("classify", bad)
    assert result.exit_code != 0
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())  # the error box wraps lines
    assert "unknown key(s) ['epoch']" in text and "valid keys:" in text and "'epochs'" in text, text
