"""The classification recipe piece by piece (decay groups, schedule, losses, EMA, early stopping,
balanced sampling, the batch-transform hook) and the loop on a LocalContext (resume, EMA files,
early stopping, MixUp)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from raylens.models import create_model
from raylens.train.checkpointing import read_history
from raylens.train.classify_config import ClassifyTrainConfig
from raylens.train.classify_loop import (
    BATCH_TRANSFORMS,
    EMA_FILE,
    ArrayBatches,
    EarlyStopping,
    ModelEMA,
    autocast_for,
    classification_loss,
    inverse_frequency_weights,
    random_translate,
    register_batch_transform,
    resolve_batch_transform,
    train_classifier,
    weighted_resample,
)
from raylens.train.context import LocalContext
from raylens.train.optim import decay_groups, warmup_cosine

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = ["a", "b", "c"]


def _blobs(n=96, size=8, seed=0):
    """Three classes told apart by which colour channel is bright: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    images = rng.normal(0, 0.3, size=(n, 3, size, size)).astype(np.float32)
    images[np.arange(n), labels] += 1.5
    return {"image": images, "label": labels.astype(np.int64)}


def _cfg(**kw):
    base = dict(
        model="small_cnn", model_kwargs={"width": 4}, image_size=8, epochs=3, batch_size=16, warmup_epochs=0, lr=3e-3
    )
    return ClassifyTrainConfig(**{**base, **kw})


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"epochs": 0}, "`epochs` must be a positive integer"),
        ({"warmup_epochs": 5, "epochs": 5}, "`warmup_epochs` must be in"),
        ({"precision": "fp8"}, "`precision` must be one of"),
        ({"ema_decay": 1.0}, "`ema_decay` must be in"),
        ({"label_smoothing": 1.0}, "`label_smoothing` must be in"),
        ({"crop_scale": 0.0}, "`crop_scale` must be in"),
        ({"std": [1, 0, 1]}, "`std` must be > 0"),
        ({"mean": [0.5, 0.5]}, "`mean` must be 3 numbers"),
        ({"distill_alpha": 1.5}, "`distill_alpha` must be in"),
        ({"distill_temperature": 0}, "`distill_temperature` must be > 0"),
        ({"teacher": "/no/such/model"}, "`teacher` '/no/such/model' is no checkpoint folder"),
    ],
)
def test_config_errors_name_the_field(kw, message):
    with pytest.raises(ValueError, match=message):
        ClassifyTrainConfig(**kw)


def test_config_round_trips_through_a_dict():
    cfg = _cfg(ema_decay=0.99, adversarial_args={"eps": 0.1})
    assert ClassifyTrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown ClassifyTrainConfig field"):
        ClassifyTrainConfig.from_dict({"epoch": 3})


# ----------------------------------------------------------------------------- recipe pieces


def test_decay_groups_spare_biases_norms_position_embeddings_and_class_tokens():
    vit = create_model("vit", num_classes=3, image_size=16, patch_size=8, hidden_size=32, num_layers=1, num_heads=2)
    no_decay, decay = decay_groups(vit, 0.05)
    names = {id(p): n for n, p in vit.named_parameters()}
    spared = {names[id(p)] for p in no_decay["params"]}
    decayed = {names[id(p)] for p in decay["params"]}
    assert (no_decay["weight_decay"], decay["weight_decay"]) == (0.0, 0.05)
    assert "vit.embeddings.cls_token" in spared and "vit.embeddings.position_embeddings" in spared
    assert all(n.endswith("bias") or "norm" in n or "embeddings" in n for n in spared)
    assert "classifier.weight" in decayed and "vit.embeddings.patch_embeddings.projection.weight" in decayed
    assert len(spared) + len(decayed) == len(list(vit.parameters()))


def test_warmup_then_cosine_to_the_floor():
    lrs = [warmup_cosine(s, 100, 10, min_ratio=0.1) for s in range(101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[55] == pytest.approx(0.55) and lrs[100] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_loss_is_cross_entropy_with_label_smoothing_and_focal_loss_downweights_easy_rows():
    torch.manual_seed(0)
    logits, y = torch.randn(8, 5), torch.randint(0, 5, (8,))
    torch.testing.assert_close(classification_loss(logits, y), F.cross_entropy(logits, y))
    torch.testing.assert_close(
        classification_loss(logits, y, label_smoothing=0.2), F.cross_entropy(logits, y, label_smoothing=0.2)
    )
    soft = torch.softmax(torch.randn(8, 5), -1)
    torch.testing.assert_close(classification_loss(logits, soft), F.cross_entropy(logits, soft))
    # focal: -(1 - p_y)^gamma log p_y per row, averaged
    p = torch.softmax(logits, -1)[torch.arange(8), y]
    torch.testing.assert_close(classification_loss(logits, y, focal_gamma=2.0), (-((1 - p) ** 2) * p.log()).mean())
    easy = torch.tensor([[6.0, 0.0, 0.0]])
    hard = torch.tensor([[0.0, 0.5, 0.0]])
    target = torch.tensor([0])
    ratio = lambda x: classification_loss(x, target, focal_gamma=2.0) / classification_loss(x, target)  # noqa: E731
    assert ratio(easy) < 0.01 < 0.2 < ratio(hard)


def test_balanced_sampling_draws_rare_classes_as_often_as_common_ones():
    labels = np.array([0] * 90 + [1] * 10)
    w = inverse_frequency_weights([90, 10])
    assert w.tolist() == pytest.approx([0.1, 0.9])
    rng = np.random.default_rng(0)
    drawn = np.concatenate([labels[weighted_resample(labels, w, rng)] for _ in range(200)])
    assert abs((drawn == 1).mean() - 0.5) < 0.02
    assert inverse_frequency_weights([5, 0, 5]).tolist() == [0.5, 0.0, 0.5]
    with pytest.raises(ValueError, match="class_counts"):
        inverse_frequency_weights([0, 0])


def test_random_translate_moves_each_image_by_at_most_the_shift():
    x = torch.zeros(64, 1, 9, 9)
    x[:, 0, 4, 4] = 1.0
    moved = random_translate(x, 2, np.random.default_rng(0))
    assert moved.shape == x.shape
    where = moved[:, 0].flatten(1).argmax(1)
    dy, dx = where // 9 - 4, where % 9 - 4
    assert dy.abs().max() == 2 and dx.abs().max() == 2 and len({(a, b) for a, b in zip(dy.tolist(), dx.tolist())}) > 10
    assert (moved.sum((1, 2, 3)) == 1).all()  # the pixel is moved, not lost
    assert random_translate(x, 0, np.random.default_rng(0)) is x


def test_ema_follows_the_timm_rule():
    model = torch.nn.Linear(2, 1)
    ema = ModelEMA(model, decay=0.9)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, step=100)  # decay min(0.9, 101/110) = 0.9
    torch.testing.assert_close(ema.module.weight, start + 0.1)
    assert not ema.module.weight.requires_grad
    ema.update(model, step=0)  # warm-up: decay 1/10
    torch.testing.assert_close(ema.module.weight, start + 0.1 + 0.9 * 0.9)


def test_early_stopping_counts_evaluations_without_improvement():
    es = EarlyStopping(patience=2, min_delta=0.01)
    assert [es.update(v, e) for e, v in enumerate([0.5, 0.505, 0.6, 0.6, 0.605])] == [False, False, False, False, True]
    assert (es.best, es.best_epoch) == (0.6, 2)
    replayed, stopped = EarlyStopping.from_history(
        [{"epoch": e, "val_top1": v} for e, v in enumerate([0.5, 0.505, 0.6, 0.6, 0.605])], 2, 0.01
    )
    assert stopped and replayed.best_epoch == 2


def test_array_batches_give_each_rank_an_equal_disjoint_share():
    arrays = {"label": np.arange(10)}
    ranks = [list(ArrayBatches(arrays, 3, seed=1, rank=r, world_size=3)(0)) for r in range(3)]
    seen = [np.concatenate([b["label"] for b in r]) for r in ranks]
    assert [len(s) for s in seen] == [3, 3, 3]
    assert len(set(np.concatenate(seen))) == 9
    first, again = ArrayBatches(arrays, 4, seed=1)(0), ArrayBatches(arrays, 4, seed=1)(0)
    assert [b["label"].tolist() for b in first] == [b["label"].tolist() for b in again]


def test_batch_transforms_register_and_unknown_ones_are_named():
    calls = []

    @register_batch_transform("record-test")
    def _factory(mean, std, scale=1.0):
        def transform(model, x, y):
            calls.append((type(model).__name__, tuple(x.shape), mean, scale))
            return x * scale, y

        return transform

    try:
        fn = resolve_batch_transform("record-test", {"scale": 2.0}, mean=[0, 0, 0], std=[1, 1, 1])
        assert fn(torch.nn.Identity(), torch.ones(2, 3), torch.zeros(2))[0].sum() == 12
        result = train_classifier(
            _cfg(epochs=1, adversarial="record-test", adversarial_args={"scale": 1.0}),
            _blobs(32),
            LocalContext(device="cpu"),
            classes=CLASSES,
        )
        assert result.steps == 2 and calls[-1] == ("SmallCNN", (16, 3, 8, 8), [0.485, 0.456, 0.406], 1.0)
    finally:
        BATCH_TRANSFORMS.unregister("record-test")
    assert resolve_batch_transform("none", {}, mean=[0] * 3, std=[1] * 3) is None
    with pytest.raises(KeyError, match="unknown adversarial batch transform 'pgd-nope'"):
        resolve_batch_transform("pgd-nope", {}, mean=[0] * 3, std=[1] * 3)


# ----------------------------------------------------------------------------- the loop


def test_the_loop_learns_reports_every_epoch_and_writes_a_servable_checkpoint(tmp_path):
    ctx = LocalContext(storage=tmp_path, device="cpu")
    data, val = _blobs(96), _blobs(48, seed=1)
    result = train_classifier(_cfg(epochs=4), data, ctx, classes=CLASSES, val=val)
    assert [h["epoch"] for h in result.history] == [0, 1, 2, 3]
    assert result.val_metrics.top1 > 0.9 and result.history[-1]["val_top1"] == result.val_metrics.top1
    assert {"loss", "lr", "images_per_s", "train_top1", "val_loss", "val_top5", "val_f1_macro"} <= set(
        result.history[-1]
    )
    names = sorted(p.name for p in result.checkpoint.iterdir())
    assert names == ["config.json", "curves.png", "history.csv", "history.json", "model.safetensors", "train_state.pt"]
    from raylens.models.checkpoint import read_checkpoint
    from raylens.models.classifier_hub import load_classifier

    cfg = read_checkpoint(result.checkpoint).config
    assert cfg["classes"] == CLASSES and cfg["image_size"] == 8 and cfg["train"]["epochs"] == 4 and cfg["epoch"] == 3
    model = load_classifier(result.checkpoint)
    with torch.no_grad():
        assert model(torch.as_tensor(val["image"])).argmax(1).eq(torch.as_tensor(val["label"])).float().mean() > 0.9


def test_a_student_learns_from_a_teacher_checkpoint_and_a_foreign_teacher_is_refused(tmp_path):
    """Distillation in the loop: the student's loss mixes the teacher's soft targets with the labels."""
    from raylens.classify.distill import distillation_loss
    from raylens.train.classify_loop import load_teacher

    data, val = _blobs(96), _blobs(48, seed=1)
    teacher_run = train_classifier(
        _cfg(epochs=4), data, LocalContext(storage=tmp_path / "t", device="cpu"), classes=CLASSES, val=val
    )
    cfg = _cfg(epochs=8, teacher=str(teacher_run.checkpoint), distill_alpha=0.5, distill_temperature=2.0)
    student = train_classifier(cfg, data, LocalContext(storage=tmp_path / "s", device="cpu"), classes=CLASSES, val=val)
    assert student.val_metrics.top1 > 0.9
    # the reported loss is the distillation loss, not plain cross-entropy: recompute one batch both ways
    teacher = load_teacher(cfg, CLASSES)
    x, y = torch.as_tensor(val["image"]), torch.as_tensor(val["label"])
    with torch.no_grad():
        s_logits, t_logits = student.model(x), teacher(x)
        kd = distillation_loss(s_logits, t_logits, y, temperature=2.0, alpha=0.5, label_smoothing=cfg.label_smoothing)
        ce = torch.nn.functional.cross_entropy(s_logits, y, label_smoothing=cfg.label_smoothing)
    assert not torch.isclose(kd, ce)
    assert all(not p.requires_grad for p in teacher.parameters()) and not teacher.training
    with pytest.raises(ValueError, match="distil from a teacher trained on the same class list"):
        load_teacher(cfg, list(reversed(CLASSES)))


class _Interrupted(RuntimeError):
    pass


def test_a_resumed_run_continues_where_it_stopped_and_matches_an_uninterrupted_one(tmp_path):
    data, val = _blobs(64), _blobs(32, seed=1)
    cfg = _cfg(epochs=3, checkpoint_every=1, ema_decay=0.9, mixup_alpha=0.4)
    whole = train_classifier(cfg, data, LocalContext(storage=tmp_path / "a", device="cpu"), classes=CLASSES, val=val)

    batches = ArrayBatches(data, cfg.batch_size, seed=cfg.seed)

    def dies_in_epoch_1(epoch):
        if epoch == 1:
            raise _Interrupted("killed")
        return batches(epoch)

    ctx = LocalContext(storage=tmp_path / "b", device="cpu")
    with pytest.raises(_Interrupted):
        train_classifier(cfg, dies_in_epoch_1, ctx, classes=CLASSES, val=val, steps_per_epoch=4)
    assert [h["epoch"] for h in read_history(ctx.latest_checkpoint())] == [0]
    assert (ctx.latest_checkpoint() / EMA_FILE).is_file()
    resumed = train_classifier(cfg, batches, ctx, classes=CLASSES, val=val, steps_per_epoch=4)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2] and resumed.steps == whole.steps == 12
    for a, b in zip(whole.history, resumed.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4) and a["val_top1"] == b["val_top1"]
    ema_a = load_file(str(whole.checkpoint / EMA_FILE))
    ema_b = load_file(str(resumed.checkpoint / EMA_FILE))
    for k in ema_a:
        torch.testing.assert_close(ema_a[k], ema_b[k], rtol=1e-4, atol=1e-5)
    assert "train_top1" not in resumed.history[-1]  # MixUp batches have no hard labels to score


def test_early_stopping_ends_the_run_and_a_resume_does_not_train_on(tmp_path):
    data = _blobs(64)
    noise = {
        "image": np.random.default_rng(3).normal(size=(30, 3, 8, 8)).astype(np.float32),
        "label": np.zeros(30, np.int64),
    }
    cfg = _cfg(epochs=10, lr=1e-6, min_lr=0.0, early_stop_patience=2, early_stop_min_delta=0.5)
    ctx = LocalContext(storage=tmp_path, device="cpu")
    result = train_classifier(cfg, data, ctx, classes=CLASSES, val=noise)
    assert result.stopped_early and len(result.history) == 3 and result.history[-1]["stopped_early"]
    assert result.best_epoch == 0 and result.checkpoint is not None
    again = train_classifier(cfg, data, ctx, classes=CLASSES, val=noise)
    assert len(again.history) == 3 and again.steps == result.steps


def test_focal_loss_and_balanced_sampling_train_on_imbalanced_data():
    data = _blobs(150)
    rare = np.flatnonzero(data["label"] == 2)[8:]
    skewed = {k: np.delete(v, rare, axis=0) for k, v in data.items()}
    assert np.bincount(skewed["label"])[2] == 8
    val = _blobs(60, seed=2)
    for imbalance in ("focal", "sampling"):
        cfg = _cfg(epochs=5, batch_size=8, imbalance=imbalance)
        result = train_classifier(cfg, skewed, LocalContext(device="cpu"), classes=CLASSES, val=val)
        assert result.val_metrics.per_class[2]["recall"] > 0.5, imbalance


def test_bad_loop_inputs_are_clear_errors():
    ctx = LocalContext(device="cpu")
    with pytest.raises(ValueError, match="2 or more distinct names"):
        train_classifier(_cfg(), _blobs(), ctx, classes=["only"])
    with pytest.raises(ValueError, match="steps_per_epoch is needed"):
        train_classifier(_cfg(), lambda epoch: [], ctx, classes=CLASSES)
    with pytest.raises(ValueError, match="imbalance='sampling' needs class_counts"):
        train_classifier(_cfg(imbalance="sampling"), lambda epoch: [], ctx, classes=CLASSES, steps_per_epoch=1)
    with pytest.raises(ValueError, match="predicts 3 classes but 4 class names"):
        train_classifier(
            _cfg(), _blobs(), ctx, classes=[*CLASSES, "d"], model=create_model("small_cnn", num_classes=3, width=4)
        )
    with pytest.raises(ValueError, match="trained on no batch"):
        train_classifier(_cfg(), lambda epoch: [], ctx, classes=CLASSES, steps_per_epoch=1)
    assert math.isfinite(warmup_cosine(0, 1, 0))


def test_precision_auto_is_fp32_on_cpu_and_bf16_autocasts():
    net = torch.nn.Linear(4, 2)
    x = torch.randn(3, 4)
    autocast, scaler = autocast_for("auto", torch.device("cpu"))
    with autocast():
        assert net(x).dtype == torch.float32
    autocast, scaler = autocast_for("bf16", torch.device("cpu"))
    with autocast():
        assert net(x).dtype == torch.bfloat16
    assert scaler is None and autocast_for("fp16", torch.device("cpu"))[1] is None  # fp16 needs a GPU


@pytest.mark.gpu
def test_the_loop_autocasts_in_bf16_on_a_gpu():
    result = train_classifier(
        _cfg(epochs=2), _blobs(64), LocalContext(device="cuda"), classes=CLASSES, val=_blobs(32, seed=1)
    )
    assert result.val_metrics.top1 > 0.8 and next(result.model.parameters()).device.type == "cuda"
    autocast, scaler = autocast_for("auto", torch.device("cuda"))
    with autocast():
        assert result.model(torch.zeros(2, 3, 8, 8, device="cuda")).dtype in (torch.bfloat16, torch.float16)
