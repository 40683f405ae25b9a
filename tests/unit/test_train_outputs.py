"""Run outputs land under the run's storage (a local path or a URI), beside its checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from raylens.train.options import RayTrainOptions
from raylens.train.outputs import RunOutputs, named_run


def test_local_storage_writes_in_place(tmp_path):
    opts = RayTrainOptions(storage_path=str(tmp_path / "runs"), name="r1")
    out = RunOutputs.for_run(opts)
    assert not out.remote
    assert out.local == tmp_path / "runs" / "r1" / "outputs"
    assert out.scratch == tmp_path / "runs" / "r1" / "data"
    out.local.mkdir(parents=True)
    (out.local / "curves.png").write_bytes(b"png")
    assert out.publish({"curves": out.local / "curves.png"}) == {"curves": str(out.local / "curves.png")}


def test_uri_storage_is_staged_then_copied(tmp_path):
    """A URI (file:// here: the same pyarrow code path as s3:// or gs://) gets the staged files copied up."""
    opts = RayTrainOptions(storage_path=f"file://{tmp_path}/bucket/runs", name="r2")
    out = RunOutputs.for_run(opts)
    assert out.remote and out.dest == f"file://{tmp_path}/bucket/runs/r2/outputs"
    assert not str(out.local).startswith(str(tmp_path / "bucket"))  # staged elsewhere
    (out.local / "model").mkdir(parents=True)
    (out.local / "model" / "config.json").write_text("{}")
    (out.local / "history.csv").write_text("step,loss\n1,0.5\n")
    where = out.publish({"history": out.local / "history.csv", "model": out.local / "model"})
    assert where == {
        "history": f"{out.dest}/history.csv",
        "model": f"{out.dest}/model",
    }
    final = tmp_path / "bucket" / "runs" / "r2" / "outputs"
    assert (final / "history.csv").read_text() == "step,loss\n1,0.5\n"
    assert (final / "model" / "config.json").read_text() == "{}"


def test_workdir_overrides_and_files_must_be_inside(tmp_path):
    out = RunOutputs.for_run(RayTrainOptions(name="r"), tmp_path / "w")
    assert out.dest == str(tmp_path / "w") and out.local == tmp_path / "w"
    with pytest.raises(ValueError):
        out.publish({"x": tmp_path / "elsewhere.png"})


def test_a_run_needs_a_name():
    with pytest.raises(ValueError, match="named_run"):
        RunOutputs.for_run(RayTrainOptions())
    named = named_run(RayTrainOptions(), "nerf")
    assert named.name.startswith("nerf-") and RunOutputs.for_run(named).dest.endswith(f"{named.name}/outputs")
    assert Path(RunOutputs.for_run(named).dest).parent.name == named.name
