"""Compression: structured pruning really removes channels (smaller tensors, fewer parameters), keeps
a trained model's outputs close after fine-tuning, and saves/loads through the one front door;
the distillation loss is the textbook formula; distillation trains a student; the table's ratios."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raylens.classify import (
    DistillConfig,
    FineTuneConfig,
    PixelModel,
    accuracy,
    count_parameters,
    distill,
    distillation_loss,
    fine_tune,
    load_labelled,
    prune_channels,
)
from raylens.classify.prune import find_prunable
from raylens.classify.report import Variant, compare, markdown_table, torch_forward
from raylens.models import create_model, load_model, model_record, save_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():
    return load_labelled("digits", image_size=16, limit=700), load_labelled("digits:heldout", image_size=16, limit=200)


@pytest.fixture(scope="module")
def trained(digits):
    train, _ = digits
    torch.manual_seed(0)
    model = create_model("small_resnet", num_classes=10, width=8, depths=(1, 1, 1))
    fine_tune(model, train.pixels, train.labels, FineTuneConfig(epochs=5, lr=1e-2, batch_size=32))
    return model.eval()


def test_pruning_removes_channels_from_a_plain_cnn_and_a_resnet():
    torch.manual_seed(0)
    cnn = create_model("small_cnn", num_classes=10, width=8)
    r = prune_channels(cnn, amount=0.5, example_input=torch.rand(1, 3, 16, 16))
    # every conv but none: all six feed a conv or (pooled, flattened) the head
    assert set(r.channels) == {f"features.{i}.0" for i in (0, 1, 3, 4, 6, 7)}
    assert all(after == before // 2 for before, after in r.channels.values())
    m = r.model
    assert m.features[0][0].weight.shape == (4, 3, 3, 3) and m.features[1][0].weight.shape == (4, 4, 3, 3)
    assert m.features[0][1].running_mean.shape == (4,) and m.head.weight.shape == (10, 16)
    assert r.params_after < 0.3 * r.params_before  # conv parameters go with the square of the width
    assert cnn.features[0][0].weight.shape == (8, 3, 3, 3)  # the original is untouched (not inplace)
    assert m(torch.rand(3, 3, 16, 16)).shape == (3, 10)

    res = create_model("small_resnet", num_classes=10, width=8, depths=(1, 1, 1))
    chains = {c.conv for c in find_prunable(res, torch.rand(1, 3, 16, 16))}
    # only the inner channels of each block: the stem and conv2 feed the residual sums
    assert chains == {"stages.0.0.conv1", "stages.1.0.conv1", "stages.2.0.conv1"}
    r2 = prune_channels(res, amount=0.75, example_input=torch.rand(1, 3, 16, 16))
    assert r2.model.stages[2][0].conv1.weight.shape[0] == 8 and r2.model.stages[2][0].conv2.weight.shape[1] == 8
    assert r2.params_after < r2.params_before


@pytest.mark.parametrize(
    "name, kwargs", [("small_cnn", {"width": 8}), ("small_resnet", {"width": 8, "depths": (1, 1, 1)})]
)
def test_pruning_is_exact_removal(name, kwargs):
    """The pruned model computes what the original computes with the removed channels cut off downstream."""
    import copy

    torch.manual_seed(0)
    model = create_model(name, num_classes=10, **kwargs).eval()
    for m in model.modules():  # trained-like BatchNorm: removed channels would leak through its bias
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.bias.data.uniform_(-1, 1)
    r = prune_channels(model, amount=0.5, example_input=torch.rand(1, 3, 16, 16))
    ref = copy.deepcopy(model)
    modules = dict(ref.named_modules())
    norms = {c.conv: modules[c.conv].weight.detach().abs().flatten(1).sum(1) for c in r.chains}  # before any cut
    for chain in r.chains:
        n, k = r.channels[chain.conv]
        kept = set(torch.topk(norms[chain.conv], k).indices.tolist())
        drop = torch.tensor([i for i in range(n) if i not in kept])
        f = chain.features_per_channel
        modules[chain.consumer].weight.data[:, (drop.view(-1, 1) * f + torch.arange(f)).flatten()] = 0
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(r.model.eval()(x), ref(x), rtol=1e-5, atol=1e-5)


def test_pruned_model_keeps_outputs_close_after_fine_tune(digits, trained):
    train, test = digits
    net = PixelModel(trained)
    before = accuracy(net, test.pixels, test.labels)
    assert before >= 0.85, f"the model did not learn digits ({before:.2f}); the test means nothing"
    r = prune_channels(trained, amount=0.5, example_input=torch.rand(1, 3, 16, 16))
    fine_tune(r.model, train.pixels, train.labels, FineTuneConfig(epochs=3, lr=3e-3, batch_size=32))
    pruned = PixelModel(r.model.eval())
    after = accuracy(pruned, test.pixels, test.labels)
    assert after >= before - 0.08, f"pruned {after:.3f} vs original {before:.3f}"
    with torch.no_grad():
        agree = (net(test.pixels).argmax(1) == pruned(test.pixels).argmax(1)).float().mean()
    assert float(agree) >= 0.85
    assert r.param_ratio < 0.9


def test_a_pruned_checkpoint_loads_through_the_front_door(tmp_path, trained):
    r = prune_channels(trained, amount=0.5, example_input=torch.rand(1, 3, 16, 16))
    rec = model_record(r.model)
    assert rec.arch == "pruned" and rec.model_config["base"] == "small_resnet"
    again = load_model(save_model(r.model, tmp_path / "pruned"))
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(again(x), r.model.eval()(x))
    assert count_parameters(again) == r.params_after
    twice = prune_channels(again, amount=0.5, example_input=torch.rand(1, 3, 16, 16))  # prune a pruned model
    assert model_record(twice.model).model_config["base"] == "small_resnet"
    assert count_parameters(load_model(save_model(twice.model, tmp_path / "twice"))) == twice.params_after


def test_distillation_loss_is_the_textbook_formula():
    torch.manual_seed(0)
    s, t = torch.randn(5, 4, requires_grad=True), torch.randn(5, 4)
    y = torch.tensor([0, 1, 2, 3, 0])
    T, a = 3.0, 0.6
    p_t = F.softmax(t / T, dim=1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / T, dim=1))).sum(1).mean()
    want = a * T * T * kl + (1 - a) * F.cross_entropy(s, y)
    got = distillation_loss(s, t, y, temperature=T, alpha=a)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(distillation_loss(s, t, y, alpha=0.0), F.cross_entropy(s, y))
    assert float(distillation_loss(t, t, y, temperature=T, alpha=1.0)) == pytest.approx(0.0, abs=1e-6)
    got.backward()
    assert s.grad is not None and t.grad is None  # the teacher is a target, not trained
    soft = F.one_hot(y, 4).float()  # MixUp-style labels
    assert math.isfinite(float(distillation_loss(s.detach(), t, soft)))
    with pytest.raises(ValueError, match="same shape"):
        distillation_loss(s, torch.randn(5, 3), y)
    with pytest.raises(ValueError, match="`temperature` must be > 0"):
        DistillConfig(temperature=0)


def test_distillation_trains_a_student_toward_the_teacher(digits, trained):
    train, test = digits
    torch.manual_seed(1)
    student = create_model("small_cnn", num_classes=10, width=4)
    assert count_parameters(student) < 0.5 * count_parameters(trained)
    res = distill(
        trained,
        student,
        train.pixels,
        train.labels,
        DistillConfig(epochs=4, lr=1e-2, batch_size=32),
        val=(test.pixels, test.labels),
    )
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert res.history[-1]["val_accuracy"] >= 0.6
    assert all(p.requires_grad for p in trained.parameters())  # the teacher is handed back as it came


def test_the_table_ratios(digits, trained):
    _, test = digits
    x, y = test.normalized((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), test.labels.numpy()
    orig = Variant("original", "torch", torch_forward(trained), 1000, 4000)
    half = Variant("half", "torch", torch_forward(trained), 500, 1000)
    rows = compare([orig, half], x[:40], y[:40], repeats=3)
    assert rows[0].param_ratio == 1.0 and rows[1].param_ratio == 0.5 and rows[1].file_ratio == 0.25
    assert rows[1].accuracy_delta_points == 0.0 and rows[0].speedup_b1 == 1.0
    assert rows[1].latency_b1_ms > 0 and rows[1].latency_b32_ms > 0
    assert np.isfinite([rows[1].speedup_b1, rows[1].speedup_b32]).all()
    assert markdown_table(rows).count("\n") == 4
