"""Classifier models: ours (small CNN, ResNet, transformers ViT) and timm's by name, through one front door.

Every source resolves (a registered name, a timm name, a transformers folder, a raylens checkpoint),
a head of the wrong size is an error that says so unless ``reset_head``, and checkpoints of
another kind are refused by the classifier loader.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import ViTConfig, ViTForImageClassification

from raylens.errors import CheckpointError
from raylens.models import create_model, list_models, load_model, model_record, save_model
from raylens.models.checkpoint import read_checkpoint, write_checkpoint
from raylens.models.classifier_hub import (
    classifier_head,
    create_classifier,
    is_hf_folder,
    load_classifier,
    new_head,
    num_classes_of,
)
from raylens.models.hf_vit import ViTClassifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_VIT = {"image_size": 16, "patch_size": 8, "hidden_size": 32, "num_layers": 2, "num_heads": 2}


def _x(n=2, size=32):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_our_classifiers_are_registered_as_classifiers():
    assert {"small_cnn", "small_resnet", "vit", "vit_tiny"} <= set(list_models(kind="classifier"))


@pytest.mark.parametrize(
    ("name", "kwargs", "size"),
    [
        ("small_cnn", {"width": 4}, 32),
        ("small_resnet", {"width": 4, "depths": (1, 2, 1)}, 32),
        ("vit", TINY_VIT, 16),
        ("vit_tiny", {"image_size": 16, "patch_size": 8}, 16),
    ],
)
def test_contract_forward_logits_head_reset_and_round_trip(name, kwargs, size, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, **kwargs).eval()
    x = _x(3, size)
    with torch.no_grad():
        logits = model(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (3, 5)
    assert num_classes_of(model) == 5 and model.example_input().shape[-1] == size
    again = load_model(save_model(model, tmp_path / "ckpt"))
    with torch.no_grad():
        torch.testing.assert_close(again(x), logits)
    new_head(model, 7)
    assert num_classes_of(model) == 7 and model_record(model).model_config["num_classes"] == 7
    assert classifier_head(model).out_features == 7
    with torch.no_grad():
        assert model(x).shape == (3, 7)


def test_wrong_head_is_an_error_unless_reset_head_and_reset_keeps_the_body(tmp_path):
    torch.manual_seed(0)
    src = create_model("small_resnet", num_classes=4, width=4, depths=(1, 1, 1))
    ckpt = save_model(src, tmp_path / "four")
    with pytest.raises(ValueError, match=r"4-class head .* 6 classes.*reset_head=True"):
        create_model("small_resnet", num_classes=6, width=4, depths=(1, 1, 1), pretrained=str(ckpt))
    with pytest.raises(ValueError, match=r"4-class head but num_classes=6.*reset_head=True"):
        create_classifier(ckpt, num_classes=6)
    for model in (
        create_model("small_resnet", num_classes=6, width=4, depths=(1, 1, 1), pretrained=str(ckpt), reset_head=True),
        create_classifier(ckpt, num_classes=6, reset_head=True),
    ):
        assert num_classes_of(model) == 6
        torch.testing.assert_close(model.stem[0].weight, src.stem[0].weight)
        assert "reset_head" not in model_record(model).model_config
    same = create_classifier(ckpt)  # None keeps the saved head
    assert num_classes_of(same) == 4 and same.training


def test_timm_names_resolve_with_or_without_prefix_and_check_their_head(tmp_path):
    a = create_classifier("test_resnet", num_classes=3)
    b = create_classifier("timm/test_resnet", num_classes=3)
    assert model_record(a).arch == model_record(b).arch == "timm/test_resnet"
    ckpt = save_model(a, tmp_path / "timm")
    with pytest.raises(ValueError, match="3-class head"):
        create_model("timm/test_resnet", num_classes=5, pretrained=str(ckpt))
    c = create_model("timm/test_resnet", num_classes=5, pretrained=str(ckpt), reset_head=True)
    assert num_classes_of(c) == 5 and model_record(c).model_config == {"num_classes": 5}


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("timm/vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}),
        ("deit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}),
        (
            "timm/swin_tiny_patch4_window7_224",
            {"img_size": 32, "window_size": 4, "embed_dim": 16, "depths": (1, 1), "num_heads": (1, 2)},
        ),
        ("timm/convnext_atto", {"dims": (8, 16, 32, 64), "depths": (1, 1, 1, 1)}),
        ("timm/mobilenetv3_small_050", {}),
        ("timm/efficientnet_b0", {}),
        ("timm/resnet10t", {}),
    ],
)
def test_timm_vit_deit_swin_and_cnns_by_name(name, kwargs):
    model = create_classifier(name, num_classes=4, **kwargs).eval()
    with torch.no_grad():
        assert model(_x()).shape == (2, 4)
    assert num_classes_of(model) == 4


def test_a_transformers_folder_loads_and_our_checkpoint_loads_in_plain_transformers(tmp_path):
    torch.manual_seed(0)
    hf = ViTForImageClassification(
        ViTConfig(
            image_size=16,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=3,
        )
    ).eval()
    hf.save_pretrained(tmp_path / "hf")
    assert is_hf_folder(tmp_path / "hf")
    x = _x(2, 16)
    ours = create_classifier(tmp_path / "hf").eval()
    assert isinstance(ours, ViTClassifier) and num_classes_of(ours) == 3
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(pixel_values=x).logits)
    with pytest.raises(ValueError, match="3-class head but num_classes=10"):
        create_classifier(tmp_path / "hf", num_classes=10)
    tuned = create_classifier(tmp_path / "hf", num_classes=10, reset_head=True)
    assert num_classes_of(tuned) == 10 and model_record(tuned).model_config["hidden_size"] == 32

    # our checkpoint of it: transformers' files plus our keys; both loaders read it
    ckpt = save_model(ours, tmp_path / "ours", extra={"classes": ["a", "b", "c"]})
    config = json.loads((ckpt / "config.json").read_text())
    assert config["model_type"] == "vit" and config["kind"] == "classifier" and config["classes"] == ["a", "b", "c"]
    plain = ViTForImageClassification.from_pretrained(ckpt).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(pixel_values=x).logits, hf(pixel_values=x).logits)
    back = load_classifier(ckpt)
    assert read_checkpoint(ckpt).arch == "vit"
    with torch.no_grad():
        torch.testing.assert_close(back(x), hf(pixel_values=x).logits)
    # a second save does not carry the first save's keys into transformers' config
    save_model(back, tmp_path / "again", extra={"classes": ["x", "y", "z"]})
    assert json.loads((tmp_path / "again" / "config.json").read_text())["classes"] == ["x", "y", "z"]


def test_a_preset_refuses_a_folder_of_another_size(tmp_path):
    small = create_model("vit", num_classes=2, **TINY_VIT)
    small.save_folder(tmp_path / "hf")
    with pytest.raises(ValueError, match="not a vit_tiny"):
        create_model("vit_tiny", pretrained=str(tmp_path / "hf"))


def test_the_classifier_loader_refuses_another_kind_and_missing_checkpoints(tmp_path):
    write_checkpoint(tmp_path / "fusion", kind="fusion", arch="early", model_config={}, state_dict={"w": torch.ones(2)})
    with pytest.raises(CheckpointError, match="holds a fusion model .* not a classifier"):
        load_classifier(tmp_path / "fusion")
    with pytest.raises(CheckpointError, match="not a classifier"):
        create_classifier(tmp_path / "fusion", num_classes=3)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_classifier(tmp_path / "nothing")


def test_unknown_names_and_other_kinds_are_clear_errors():
    with pytest.raises(KeyError, match="not a classifier name, a timm architecture, nor a folder"):
        create_classifier("no_such_net", num_classes=3)
    with pytest.raises(ValueError, match="is a clip model, not a classifier"):
        create_classifier("clip-tiny", num_classes=3)
    with pytest.raises(ValueError, match="multiple of `patch_size`"):
        create_model("vit", num_classes=3, image_size=30, patch_size=8)
