"""Fusion models (forward, missing-modality inference), the plain training loop, checkpoints, metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from raylens.models import create_model, list_models
from raylens.train import LocalContext
from raylens_domains.medical import (
    EncoderConfig,
    FusionTrainConfig,
    binary_metrics,
    evaluate,
    load_checkpoint,
    save_checkpoint,
    save_roc_png,
    train_fusion,
)
from raylens_domains.medical.fusion import FUSE_STAGES
from raylens_domains.medical.metrics import metrics_table
from raylens_domains.medical.train import ArrayBatches, apply_modality_dropout, predict_proba

S = 16
ENC = EncoderConfig(widths=(4, 8, 8, 8))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(n=3, seed=0, present=(1.0, 1.0)):
    g = torch.Generator().manual_seed(seed)
    return {
        "ct": torch.randn(n, S, S, S, generator=g),
        "mr_aligned": torch.randn(n, S, S, S, generator=g),
        "mr": torch.randn(n, S, S, S, generator=g),
        "present": torch.tensor([present] * n),
    }


def _arrays(n=24, seed=0):
    """A toy task that needs both modalities: label = bright CT cube AND bright MR cube."""
    rng = np.random.default_rng(seed)
    ct = rng.normal(0, 0.1, (n, S, S, S)).astype(np.float32)
    mr = rng.normal(0, 0.1, (n, S, S, S)).astype(np.float32)
    a, b = rng.integers(0, 2, n), rng.integers(0, 2, n)
    ct[a == 1, 4:9, 4:9, 4:9] += 1.0
    mr[b == 1, 6:11, 6:11, 6:11] += 1.0
    return {
        "ct": ct,
        "mr": mr,
        "mr_aligned": mr.copy(),
        "present": np.ones((n, 2), np.float32),
        "label": (a & b).astype(np.int64),
    }


@pytest.mark.parametrize("name", ["early", "mid", "late", "ct_only", "mr_only"])
def test_every_model_gives_one_logit_per_case_and_an_embedding(name):
    m = create_model(name, encoder=ENC).eval()
    x = _batch()
    with torch.no_grad():
        out = m(x)
        emb = m.embed(x)
    assert out.shape == (3,) and torch.isfinite(out).all()
    assert emb.ndim == 2 and emb.shape[0] == 3


@pytest.mark.parametrize("stage", FUSE_STAGES)
@pytest.mark.parametrize("fuse", ["concat", "attention"])
def test_mid_fusion_at_every_stage(stage, fuse):
    m = create_model("mid", encoder=ENC, fuse_stage=stage, fuse=fuse).eval()
    with torch.no_grad():
        assert m(_batch(2)).shape == (2,)


@pytest.mark.parametrize(
    "name,kw",
    [
        ("mid", {"fuse": "attention"}),
        ("mid", {"fuse": "concat"}),
        ("late", {"combine": "learned"}),
        ("late", {"combine": "mean"}),
        ("late", {"combine": "logit"}),
    ],
)
def test_absent_modality_is_ignored_by_mid_and_late_fusion(name, kw):
    """With MR marked absent, whatever is in the MR input does not change the prediction."""
    m = create_model(name, encoder=ENC, **kw).eval()
    x1, x2 = _batch(seed=1, present=(1.0, 0.0)), _batch(seed=2, present=(1.0, 0.0))
    x2["ct"] = x1["ct"]
    with torch.no_grad():
        assert torch.allclose(m(x1), m(x2), atol=1e-5)
        # and with both present the MR does matter
        b1, b2 = dict(x1, present=torch.ones(3, 2)), dict(x2, present=torch.ones(3, 2))
        assert not torch.allclose(m(b1), m(b2), atol=1e-5)


def test_late_fusion_with_one_modality_is_that_members_probability():
    m = create_model("late", encoder=ENC, combine="mean").eval()
    x = _batch(present=(0.0, 1.0))
    with torch.no_grad():
        p = torch.sigmoid(m(x))
        assert torch.allclose(p, torch.sigmoid(m.members["mr"](x)), atol=1e-4)


def test_registry_errors_list_the_names():
    assert list_models(kind="fusion") == ["ct_only", "early", "late", "mid", "mr_only"]
    with pytest.raises(KeyError, match="Did you mean: mid"):
        create_model("midd")
    with pytest.raises(ValueError, match="fuse_stage"):
        create_model("mid", fuse_stage="layer9")
    with pytest.raises(ValueError, match="combine"):
        create_model("late", combine="max")
    with pytest.raises(ValueError, match="widths"):
        EncoderConfig(widths=(1, 2))


def test_modality_dropout_never_drops_both():
    x = {k: v for k, v in _batch(n=200).items()}
    x["present"][:50, 1] = 0  # some cases have CT only already
    out = apply_modality_dropout(x, 0.9, torch.Generator().manual_seed(0))
    p = out["present"]
    assert (p.sum(dim=1) >= 1).all()
    dropped_mr = (p[:, 1] == 0) & (x["present"][:, 1] == 1)
    assert dropped_mr.any() and (out["mr"][dropped_mr] == 0).all() and (out["mr_aligned"][dropped_mr] == 0).all()
    assert (out["present"][:50, 0] == 1).all()  # single-modality cases keep what they have


def test_train_config_validation():
    with pytest.raises(ValueError, match="model must be one of"):
        FusionTrainConfig(model="huge")
    with pytest.raises(ValueError, match="modality_dropout"):
        FusionTrainConfig(model="ct_only", modality_dropout=0.2)
    with pytest.raises(ValueError, match="epochs"):
        FusionTrainConfig(epochs=0)


@pytest.mark.parametrize("name", ["early", "mid", "late"])
def test_training_loop_learns_the_toy_task_and_checkpoints_round_trip(name, tmp_path):
    arrays = _arrays(32)
    cfg = FusionTrainConfig(
        model=name,
        epochs=4,
        batch_size=8,
        lr=5e-3,
        model_kwargs={"encoder": ENC},
        modality_dropout=0.1 if name != "early" else 0.0,
        seed=1,
    )
    seen = []
    ctx = LocalContext(storage=tmp_path / "run", device="cpu")
    res = train_fusion(cfg, arrays, ctx, arrays, on_epoch=lambda m: seen.append(m["epoch"]))
    assert seen == list(range(4)) and len(res.history) == 4 and res.steps == 16
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert {"val_auc", "val_accuracy", "val_f1", "lr", "step"} <= set(res.history[-1])
    assert res.checkpoint == ctx.latest_checkpoint() and len(ctx.checkpoints) == 1  # only at the end
    from_run = load_checkpoint(res.checkpoint)
    assert np.allclose(predict_proba(res.model, arrays), predict_proba(from_run, arrays), atol=1e-5)
    save_checkpoint(res.model, tmp_path / "ckpt", train_config=cfg)
    again = load_checkpoint(tmp_path / "ckpt")
    assert np.allclose(predict_proba(res.model, arrays), predict_proba(again, arrays), atol=1e-5)
    m = evaluate(again, arrays)
    assert 0.0 <= m.auc <= 1.0 and m.n == 32


class Preempted(RuntimeError):
    pass


def _stopping_batches(arrays, cfg, stop_at=None):
    """The arrays' batches, but the process 'dies' when epoch ``stop_at`` starts."""
    every_epoch = ArrayBatches(arrays, cfg.batch_size, seed=cfg.seed)

    def batches(epoch):
        if epoch == stop_at:
            raise Preempted(f"stopped at epoch {epoch}")
        return every_epoch(epoch)

    return batches


def test_fusion_training_resumes_where_it_stopped_as_if_never_stopped(tmp_path):
    arrays = _arrays(16)
    cfg = FusionTrainConfig(
        model="mid", epochs=4, batch_size=8, model_kwargs={"encoder": ENC}, modality_dropout=0.3, checkpoint_every=2
    )
    straight = train_fusion(cfg, arrays, LocalContext(storage=tmp_path / "straight", device="cpu"), arrays)

    ctx = LocalContext(storage=tmp_path / "stopped", device="cpu")
    with pytest.raises(Preempted):
        train_fusion(cfg, _stopping_batches(arrays, cfg, stop_at=2), ctx, arrays)
    assert [json.loads((c / "config.json").read_text())["epoch"] for c in ctx.checkpoints] == [1]
    resumed = train_fusion(cfg, _stopping_batches(arrays, cfg), ctx, arrays)  # same context: same run

    assert [h["epoch"] for h in resumed.history] == [0, 1, 2, 3] and resumed.steps == straight.steps == 8
    for a, b in zip(straight.history, resumed.history):  # weights, optimizer, lr and draws all carried over
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4) and a["lr"] == pytest.approx(b["lr"])
        assert a["val_auc"] == pytest.approx(b["val_auc"], abs=1e-6) or np.isnan(a["val_auc"])
    for (k, w1), w2 in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(w1, w2, rtol=1e-4, atol=1e-5, msg=k)
    last = resumed.checkpoint
    for f in ("model.safetensors", "config.json", "train_state.pt", "history.json", "history.csv", "curves.png"):
        assert (last / f).is_file(), f
    saved = json.loads((last / "config.json").read_text())
    assert saved["epoch"] == 3 and saved["step"] == 8 and saved["train"]["checkpoint_every"] == 2
    assert len(json.loads((last / "history.json").read_text())) == 4

    # a finished run called again trains nothing and hands back its last checkpoint
    again = train_fusion(cfg, _stopping_batches(arrays, cfg, stop_at=0), ctx, arrays)
    assert again.checkpoint == last and again.history == resumed.history and again.val_metrics is not None


def test_fusion_checkpoint_cadence_counts_epochs(tmp_path):
    arrays = _arrays(8)
    cfg = FusionTrainConfig(
        model="early", epochs=5, batch_size=4, model_kwargs={"encoder": ENC}, checkpoint_every=2, augment=False
    )
    ctx = LocalContext(storage=tmp_path, device="cpu")
    res = train_fusion(cfg, arrays, ctx)
    assert [json.loads((c / "config.json").read_text())["epoch"] for c in ctx.checkpoints] == [1, 3, 4]
    assert [h["epoch"] for h in ctx.history] == [0, 1, 2, 3, 4] and res.val_metrics is None


def test_fusion_loop_names_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="checkpoint_every"):
        FusionTrainConfig(checkpoint_every=-1)
    with pytest.raises(ValueError, match="no batch of 2 or more cases"):
        train_fusion(
            FusionTrainConfig(model="early", epochs=1, model_kwargs={"encoder": ENC}),
            {k: v[:1] for k, v in _arrays(4).items()},
            LocalContext(storage=tmp_path, device="cpu"),
        )


def test_predict_with_a_forced_missing_modality():
    arrays = _arrays(8)
    m = create_model("mid", encoder=ENC)
    p = predict_proba(m, arrays, present=(True, False))
    assert p.shape == (8,) and np.all((p >= 0) & (p <= 1))


def test_array_batches_cover_every_row_once():
    b = ArrayBatches({"x": np.arange(10)}, 4, seed=0)
    seen = np.concatenate([batch["x"] for batch in b(0)])
    assert sorted(seen) == list(range(10))
    with pytest.raises(ValueError, match="one length"):
        ArrayBatches({"x": np.arange(3), "y": np.arange(4)}, 2)


def test_load_checkpoint_refuses_a_non_checkpoint(tmp_path):
    from raylens.errors import CheckpointError

    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path)


def test_metrics_and_roc_png(tmp_path):
    m = binary_metrics([0, 0, 1, 1, 1], [0.1, 0.6, 0.4, 0.8, 0.9])
    assert m.auc == pytest.approx(5 / 6) and m.accuracy == pytest.approx(0.6) and m.f1 == pytest.approx(2 / 3)
    path = save_roc_png(
        {"a": ([0, 0, 1, 1, 1], [0.1, 0.6, 0.4, 0.8, 0.9]), "b": ([0, 1], [0.2, 0.3])}, tmp_path / "roc.png"
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| a | 0.833 |" in metrics_table({"a": m})
    with pytest.raises(ValueError, match="0 or 1"):
        binary_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="same length"):
        binary_metrics([0, 1], [0.1])
    assert np.isnan(binary_metrics([1, 1], [0.1, 0.2]).auc)
