"""Attacks (raylens.classify.robust) on a small CNN trained here on digits: FGSM and PGD stay inside
the eps ball (L-inf) and [0, 1], lower the accuracy, PGD at least as much as FGSM; eps 0 changes
nothing; the adversarial-training batch transform; bad input named."""

from __future__ import annotations

import pytest
import torch

from raylens.classify import FineTuneConfig, PgdBatchTransform, fgsm, fine_tune, load_labelled, pgd, robust_accuracy
from raylens.classify.common import IMAGENET_MEAN, IMAGENET_STD

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits_model():
    torch.manual_seed(0)
    train = load_labelled("digits", image_size=16, limit=700)
    test = load_labelled("digits:heldout", image_size=16, limit=96, seed=1)
    from raylens.models import create_model

    model = create_model("small_cnn", num_classes=10, width=8)
    fine_tune(model, train.pixels, train.labels, FineTuneConfig(epochs=4, lr=5e-3))
    return model.eval(), test


def test_attacks_stay_in_the_eps_ball_and_in_pixel_range(digits_model):
    model, test = digits_model
    x, y = test.pixels[:16], test.labels[:16]
    eps = 4 / 255
    for adv in (fgsm(model, x, y, eps), pgd(model, x, y, eps, steps=3)):
        assert adv.shape == x.shape
        assert float((adv - x).abs().max()) <= eps + 1e-6
        assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
        assert float((adv - x).abs().max()) > eps / 2  # it moved
    assert torch.equal(pgd(model, x, y, 0.0), x)


def test_accuracy_under_attack_drops_and_pgd_is_stronger(digits_model):
    model, test = digits_model
    results = robust_accuracy(model, test.pixels, test.labels, eps=(0.0, 8 / 255, 32 / 255), pgd_steps=5)
    by = {(r.attack, round(r.eps, 4)): r for r in results}
    clean = results[0].clean_accuracy
    assert clean >= 0.75, f"the model did not learn digits ({clean:.2f}); the test means nothing"
    assert by[("fgsm", 0.0)].accuracy == pytest.approx(clean) and by[("pgd", 0.0)].accuracy == pytest.approx(clean)
    strong = round(32 / 255, 4)
    assert by[("fgsm", strong)].accuracy < clean - 0.2
    assert by[("pgd", strong)].accuracy <= by[("fgsm", strong)].accuracy + 0.02
    assert by[("pgd", strong)].accuracy < 0.5 * clean
    assert all(r.max_linf <= r.eps + 1e-6 and r.n == len(test) for r in results)
    assert by[("pgd", strong)].steps == 5 and by[("fgsm", strong)].steps == 1


def test_the_adversarial_training_transform(digits_model):
    model, test = digits_model
    model.train()
    model.zero_grad(set_to_none=True)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    pixels, y = test.pixels[:8], test.labels[:8]
    x = (pixels - mean) / std
    transform = PgdBatchTransform(eps=8 / 255, steps=2, fraction=0.5)
    x2, y2 = transform(model, x, y)
    assert model.training, "the transform must hand the model back in training mode"
    assert all(p.grad is None for p in model.parameters()), "input gradients only: no parameter gradients"
    assert torch.equal(y2, y) and torch.equal(x2[4:], x[4:])  # the second half is untouched
    moved = (x2[:4] * std + mean) - pixels[:4]
    assert 0 < float(moved.abs().max()) <= 8 / 255 + 1e-5
    soft = torch.nn.functional.one_hot(y, 10).float()  # MixUp-style class probabilities work too
    x3, y3 = transform(model, x, soft)
    assert x3.shape == x.shape and torch.equal(y3, soft)
    model.eval()


def test_bad_input_is_named(digits_model):
    model, test = digits_model
    x, y = test.pixels[:2], test.labels[:2]
    with pytest.raises(ValueError, match="`eps` is an L-inf radius"):
        fgsm(model, x, y, 8)
    with pytest.raises(ValueError, match="`labels` must be 2 integer class indices"):
        pgd(model, x, torch.tensor([1.0, 2.0]), 0.1)
    with pytest.raises(ValueError, match="`attacks` must name some of"):
        robust_accuracy(model, x, y, attacks=("cw",))
    with pytest.raises(ValueError, match="`fraction` must be in"):
        PgdBatchTransform(fraction=0.0)


def test_adversarial_training_is_a_recipe_option(tmp_path):
    import numpy as np

    from raylens.classify.robust import fgsm_batch_transform
    from raylens.train import LocalContext
    from raylens.train.classify_config import ClassifyTrainConfig
    from raylens.train.classify_loop import resolve_batch_transform, train_classifier

    t = resolve_batch_transform("pgd", {"eps": 0.02, "steps": 2}, mean=[0.5] * 3, std=[0.5] * 3)
    assert isinstance(t, PgdBatchTransform) and (t.eps, t.steps, t.mean) == (0.02, 2, (0.5, 0.5, 0.5))
    f = fgsm_batch_transform(0.02)
    assert (f.steps, f.step_size, f.random_start) == (1, 0.02, False)
    rng = np.random.default_rng(0)
    data = {"image": rng.normal(size=(64, 3, 8, 8)).astype("float32"), "label": rng.integers(0, 2, 64)}
    cfg = ClassifyTrainConfig(
        model="small_cnn",
        model_kwargs={"width": 4},
        epochs=1,
        batch_size=32,
        warmup_epochs=0,
        image_size=8,
        adversarial="pgd",
        adversarial_args={"eps": 0.03, "steps": 1},
    )
    result = train_classifier(cfg, data, LocalContext(storage=tmp_path, device="cpu"), classes=["a", "b"])
    assert result.steps == 2 and np.isfinite(result.history[-1]["loss"])
