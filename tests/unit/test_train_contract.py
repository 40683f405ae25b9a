"""The training contract every loop shares, without Ray: run options, checkpoint cadence, the train
state round trip and its errors, history and curves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from raylens.errors import CheckpointError
from raylens.models import create_model
from raylens.train import LocalContext, RayTrainOptions
from raylens.train import checkpointing as ck
from raylens.train.curves import plot_curves


@pytest.mark.parametrize(
    "kw,field",
    [
        (dict(num_workers=0), "num_workers"),
        (dict(max_failures=-2), "max_failures"),
        (dict(cpus_per_worker=0), "cpus_per_worker"),
        (dict(num_to_keep=0), "num_to_keep"),
        (dict(shuffle_buffer=-1), "shuffle_buffer"),
        (dict(log_level="LOUD"), "log_level"),
        (dict(eval_max_rows=0), "eval_max_rows"),
        (dict(name="runs/a"), "name"),
        (dict(worker_niceness=-1), "worker_niceness"),
        (dict(worker_niceness=20), "worker_niceness"),
        (dict(worker_niceness="0"), "worker_niceness"),
    ],
)
def test_run_options_name_the_bad_field(kw, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        RayTrainOptions(**kw)


def test_run_options_resolve_storage_and_threads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert RayTrainOptions(storage_path="runs").storage() == str(tmp_path / "runs")
    assert RayTrainOptions(storage_path="s3://bucket/runs").storage() == "s3://bucket/runs"
    assert RayTrainOptions().storage() == str(Path("~/.raylens/runs").expanduser())
    opts = RayTrainOptions(name="r1", log_level="info")
    assert opts.log_level == "INFO" and opts.to_dict()["storage_path"] == opts.storage()
    assert opts.torch_threads(0.5) == 1 and opts.torch_threads(2.4) == 2
    assert RayTrainOptions(use_gpu=True).torch_threads(4) is None


def _tiny():
    torch.manual_seed(0)
    return create_model("timm/test_resnet", num_classes=2)


def _step(model, opt, sched):
    loss = model(torch.randn(2, 3, 32, 32)).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()


def test_checkpoint_round_trip_restores_weights_optimizer_and_schedule(tmp_path):
    model = _tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    _step(model, opt, sched)
    history = [{"step": 1, "epoch": 0, "loss": 1.5, "lr": sched.get_last_lr()[0], "val_acc": 0.5}]
    ck.write_checkpoint(
        tmp_path, model, optimizer=opt, scheduler=sched, step=1, epoch=0, history=history, extra={"train": {"a": 1}}
    )
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["step"] == 1 and saved["epoch"] == 0 and saved["train"] == {"a": 1}
    assert saved["kind"] == "classifier" and saved["arch"] == "timm/test_resnet"
    assert ck.read_history(tmp_path) == history and (tmp_path / "history.csv").read_text().startswith("step,")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"

    fresh = _tiny()
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    fresh_sched = torch.optim.lr_scheduler.StepLR(fresh_opt, step_size=1, gamma=0.5)
    resumed = ck.load_training_state(tmp_path, fresh, fresh_opt, scheduler=fresh_sched)
    assert (resumed.step, resumed.epoch, resumed.next_epoch, resumed.history) == (1, 0, 1, history)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert fresh_sched.get_last_lr() == sched.get_last_lr()
    assert fresh_opt.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]


def test_resume_errors_say_what_is_wrong_and_what_to_do(tmp_path):
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    from raylens.models import save_model

    save_model(model, tmp_path / "weights_only")
    with pytest.raises(CheckpointError, match="no train_state.pt.*start a new run"):
        ck.load_training_state(tmp_path / "weights_only", model, opt)
    ck.write_checkpoint(tmp_path / "full", model, optimizer=opt, step=1, epoch=0, history=[])
    other = create_model("timm/test_resnet", num_classes=5)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        ck.load_training_state(tmp_path / "full", other, torch.optim.SGD(other.parameters(), lr=0.1))


def test_report_writes_on_rank_zero_into_a_folder_the_context_keeps(tmp_path):
    ctx = LocalContext(storage=tmp_path, device="cpu")
    seen = []
    kept = ck.report(ctx, {"step": 1}, write=lambda d: seen.append(d) or (d / "x.txt").write_text("x"))
    assert kept == ctx.latest_checkpoint() == tmp_path / "checkpoint_000000" and (kept / "x.txt").is_file()
    assert not seen[0].exists()  # the temporary folder is gone
    assert ck.report(ctx, {"step": 2}) is None and [h["step"] for h in ctx.history] == [1, 2]
    with pytest.raises(ValueError, match="`rank` must be 0"):
        LocalContext(storage=tmp_path, rank=1, world_size=2)


def test_curves_of_an_epoch_loop_with_validation_metrics(tmp_path):
    history = [{"epoch": e, "loss": 1.0 / (e + 1), "lr": 0.1, "val_auc": 0.5 + e / 10} for e in range(3)]
    assert plot_curves(history, tmp_path / "c.png", title="fusion").stat().st_size > 1000
    with pytest.raises(ValueError, match="history is empty"):
        plot_curves([], tmp_path / "none.png")
