import json

import numpy as np
import open_clip
import pytest
import torch

from raylens.errors import CheckpointError
from raylens.models import (
    MODELS,
    ModelRecord,
    create_model,
    example_input,
    list_models,
    load_model,
    model_info,
    model_kind,
    model_record,
    register_model,
    save_model,
)


def test_list_and_unknown_name():
    assert {"clip-tiny", "clip-small", "ViT-B-32"} <= set(list_models())
    with pytest.raises(KeyError, match="Did you mean: clip-tiny"):
        create_model("clip-tiyn")


def test_encode_shapes_and_normalised():
    m = create_model("clip-tiny")
    s = m.spec.image_size
    img = m.encode_images(np.zeros((2, 3, s, s), np.float32))
    txt = m.encode_texts(["a red circle", "a blue star"])
    assert img.shape == txt.shape == (2, m.spec.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1, atol=1e-5)
    with pytest.raises(ValueError, match="preprocessed"):
        m.encode_images(np.zeros((2, 3, s + 1, s + 1), np.float32))
    with pytest.raises(TypeError):
        m.encode_texts("not a list")


def test_create_model_lays_convolutions_out_channels_last_with_the_same_outputs():
    """The one door puts 2-D convolution weights in NHWC (oneDNN's fast path, see
    raylens.models.layout); the embeddings match the NCHW layout's to float rounding."""
    m = create_model("clip-tiny")
    convs = [c for c in m.model.visual.modules() if isinstance(c, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert not all(c.weight.is_contiguous() for c in convs)
    x = np.random.default_rng(0).normal(size=(4, 3, m.spec.image_size, m.spec.image_size)).astype(np.float32)
    nhwc = m.encode_images(x)
    m.model.visual.to(memory_format=torch.contiguous_format)
    np.testing.assert_allclose(nhwc, m.encode_images(x), atol=1e-4)


def test_checkpoint_roundtrip_into_raylens_and_plain_open_clip(tmp_path):
    torch.manual_seed(0)
    m = create_model("clip-tiny")
    m.save(tmp_path / "ckpt", extra={"note": "x"})
    again = create_model("clip-tiny", pretrained=str(tmp_path / "ckpt"))
    assert again.checkpoint_hash == m.checkpoint_hash != "untrained"
    q = ["a small red circle on a grey background"]
    np.testing.assert_allclose(again.encode_texts(q), m.encode_texts(q), atol=1e-6)
    # plain open_clip loads the same weights by architecture name + file path
    oc, _, preprocess = open_clip.create_model_and_transforms(
        "raylens-clip-tiny", pretrained=str(tmp_path / "ckpt" / "model.safetensors")
    )
    with torch.no_grad():
        ref = torch.nn.functional.normalize(oc.encode_text(m.tokenize(q)), dim=-1).numpy()
    np.testing.assert_allclose(ref, m.encode_texts(q), atol=1e-6)


def test_checkpoint_for_another_model_is_refused(tmp_path):
    create_model("clip-tiny").save(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="holds a 'raylens-clip-tiny' model"):
        create_model("clip-small", pretrained=str(tmp_path / "ckpt"))
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        create_model("clip-tiny", pretrained=str(tmp_path))


# ------------------------------------------------------------------- the one front door, every kind


def test_every_kind_through_one_door():
    assert list_models(kind="fusion") == ["ct_only", "early", "late", "mid", "mr_only"]
    assert (model_kind("clip-tiny"), model_kind("ViT-B-32"), model_kind("late")) == ("clip", "clip", "fusion")
    assert model_kind("timm/resnet18") == "classifier"
    clip = list_models(kind="clip")
    assert "clip-tiny" in clip and "ViT-B-32" in clip and "mid" not in clip and "timm/resnet18" not in clip
    assert "timm/resnet18" in list_models("timm/resnet1*", kind="classifier")
    assert list_models("clip-*", kind="fusion") == []
    names = list_models()
    assert names.index("mid") < names.index("ViT-B-32") < names.index("timm/resnet18")  # registered, then families
    with pytest.raises(ValueError, match="kind must be one of"):
        list_models(kind="gan")


def test_an_unknown_name_is_one_key_error_with_close_matches_across_kinds():
    with pytest.raises(KeyError, match="Did you mean: mid"):
        create_model("midd")
    with pytest.raises(KeyError, match="Did you mean: timm/test_resnet"):
        model_kind("timm/test_resnt")
    with pytest.raises(KeyError, match="unknown model 'vit-b-32'.*ViT-B-32"):
        create_model("vit-b-32")


@pytest.fixture
def scratch_model():
    @register_model("test-scratch-linear", kind="classifier", doc="A tiny linear classifier for tests.")
    def _factory(width: int = 4, num_classes: int = 2, pretrained=None, **extra):
        return torch.nn.Linear(width, num_classes, bias=extra.get("bias", True))

    yield "test-scratch-linear"
    MODELS.unregister("test-scratch-linear")


def test_create_model_records_the_resolved_config(scratch_model, tmp_path):
    m = create_model(scratch_model, num_classes=3, bias=False, pretrained=None)
    assert model_record(m) == ModelRecord("classifier", scratch_model, {"width": 4, "num_classes": 3, "bias": False})
    assert model_info(scratch_model).doc == "A tiny linear classifier for tests."
    with pytest.raises(TypeError, match="offers no example input"):
        example_input(m)
    again = load_model(save_model(m, tmp_path))
    assert again.weight.shape == (3, 4) and again.bias is None
    torch.testing.assert_close(again.weight, m.weight)


def test_save_model_needs_a_record_and_register_model_a_kind(tmp_path):
    with pytest.raises(TypeError, match="build it with raylens.models.create_model"):
        save_model(torch.nn.Linear(2, 2), tmp_path)
    with pytest.raises(ValueError, match="kind must be one of"):
        register_model("test-bad-kind", kind="gan")


def test_clip_checkpoint_is_format_1_plus_open_clip_keys(tmp_path):
    m = create_model("clip-tiny")
    cfg = json.loads((save_model(m, tmp_path, extra={"step": 1}) / "config.json").read_text())
    assert (cfg["format"], cfg["kind"], cfg["arch"], cfg["step"]) == ("raylens.checkpoint/1", "clip", "clip-tiny", 1)
    assert cfg["model"]["name"] == "clip-tiny" and cfg["open_clip"]["embed_dim"] == 128
    assert cfg["checkpoint_hash"] == m.checkpoint_hash


def test_cli_lists_models_with_kind_and_description():
    from typer.testing import CliRunner

    from raylens.cli import app

    out = CliRunner().invoke(app, ["models", "--kind", "fusion"], terminal_width=200)
    assert out.exit_code == 0 and "mid  fusion  Mid fusion" in out.output and "clip-tiny" not in out.output
    out = CliRunner().invoke(app, ["models"], terminal_width=200)
    assert "clip-tiny  clip" in out.output and "timm models  classifier" in out.output
    out = CliRunner().invoke(app, ["models", "timm/test_res*"], terminal_width=200)
    assert "timm/test_resnet  classifier" in out.output
    assert CliRunner().invoke(app, ["models", "--kind", "gan"]).exit_code != 0
