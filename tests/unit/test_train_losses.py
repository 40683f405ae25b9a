"""The training losses against the formulas written out, and the eval metrics against hand-made cases."""

import numpy as np
import pytest
import torch

from raylens.train import ClipTrainConfig
from raylens.train.evaluate import EvalData, retrieval_recall, zero_shot_accuracy, zero_shot_confusion
from raylens.train.losses import clip_loss_reference, make_loss, siglip_loss_reference


def _features(n=6, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)
    return img, txt


def test_clip_loss_matches_the_formula():
    img, txt = _features()
    scale = torch.tensor(12.5)
    got = make_loss(ClipTrainConfig())({"image_features": img, "text_features": txt, "logit_scale": scale})
    assert got.item() == pytest.approx(clip_loss_reference(img, txt, scale).item(), rel=1e-6)
    # a perfect pairing at a high temperature gives a loss near zero, a random one near log(n)
    perfect = make_loss(ClipTrainConfig())(
        {"image_features": img, "text_features": img, "logit_scale": torch.tensor(100.0)}
    )
    assert perfect.item() < 0.05 < got.item()


def test_siglip_loss_matches_the_formula():
    img, txt = _features()
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    out = {"image_features": img, "text_features": txt, "logit_scale": scale, "logit_bias": bias}
    got = make_loss(ClipTrainConfig(loss="siglip"))(out)
    assert got.item() == pytest.approx(siglip_loss_reference(img, txt, scale, bias).item(), rel=1e-6)


def test_siglip_without_bias_is_a_clear_error():
    img, txt = _features()
    with pytest.raises(ValueError, match="logit_bias"):
        make_loss(ClipTrainConfig(loss="siglip"))(
            {"image_features": img, "text_features": txt, "logit_scale": torch.tensor(1.0), "logit_bias": None}
        )


def test_zero_shot_accuracy_and_recall_on_known_geometry():
    eye = np.eye(3, dtype=np.float32)
    images = np.stack([eye[0], eye[1], eye[2], eye[1]])  # image 3 looks like class 1
    labels = np.array([0, 1, 2, 2])
    acc = zero_shot_accuracy(images, labels, eye)
    assert acc["zeroshot_top1"] == pytest.approx(0.75)
    assert zero_shot_confusion(images, labels, eye).tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    captions = ["zero", "one", "two", "two"]
    texts = np.stack([eye[0], eye[1], eye[2], eye[2]])
    r = retrieval_recall(images, texts, captions, ks=(1, 2))
    assert r["i2t_R@1"] == pytest.approx(0.75) and r["i2t_R@2"] == pytest.approx(1.0)
    # caption "two": its best image is image 2 (a hit); "one": image 1 or 3, both rank above others
    assert r["t2i_R@1"] == pytest.approx(1.0)


def test_eval_data_checks_its_input():
    with pytest.raises(ValueError, match="empty"):
        EvalData.from_batches([])
    with pytest.raises(ValueError, match="as many captions"):
        EvalData(np.zeros((2, 3, 4, 4)), ["a"])
    d = EvalData.from_batches(
        [{"image": np.zeros((5, 3, 4, 4)), "caption": np.array(list("abcde")), "label": np.arange(5)}], max_rows=3
    )
    assert len(d) == 3 and d.labels.tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"loss": "triplet"}, "loss"),
        ({"precision": "fp8"}, "precision"),
        ({"accum_steps": 0}, "accum_steps"),
        ({"zeroshot_templates": ["no slot"]}, "template"),
        ({"lock_image": True, "lock_text": True}, "nothing left"),
    ],
)
def test_config_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        ClipTrainConfig(**bad)
