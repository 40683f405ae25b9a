"""The checkpoint format (``raylens.checkpoint/1``): writing, reading, native formats, and the older layouts."""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import timm
import torch
from safetensors.torch import save_file

from raylens.errors import CheckpointError
from raylens.models import MODELS, create_model, load_model, read_checkpoint, register_model, save_model
from raylens.models.checkpoint import FORMAT, file_sha256, save_weights, write_checkpoint, write_config
from raylens.serve.classify import load_classifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _weights(d, model) -> None:
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "model.safetensors"))


def _config(d) -> dict:
    return json.loads((d / "config.json").read_text())


def test_format_1_round_trip_and_the_keys_it_owns(tmp_path):
    write_checkpoint(
        tmp_path / "a",
        kind="fusion",
        arch="mid",
        model_config={"encoder": {"widths": (4, 8, 8, 8)}, "fuse": "concat"},
        state_dict={"w": torch.arange(3.0)},
        extra={"train": {"lr": 0.1}, "step": 7},
    )
    cfg = _config(tmp_path / "a")
    assert list(cfg)[:5] == ["format", "kind", "arch", "model_config", "checkpoint_hash"]
    assert cfg["format"] == FORMAT and cfg["step"] == 7 and cfg["model_config"]["encoder"]["widths"] == [4, 8, 8, 8]
    ck = read_checkpoint(tmp_path / "a")
    assert (ck.kind, ck.arch, ck.legacy, ck.config["train"]) == ("fusion", "mid", None, {"lr": 0.1})
    assert ck.checkpoint_hash == file_sha256(ck.weights) == cfg["checkpoint_hash"]

    with pytest.raises(ValueError, match=r"extra may not set the format's own keys \['kind'\]"):
        write_checkpoint(tmp_path / "b", kind="fusion", arch="mid", model_config={}, state_dict={}, extra={"kind": 1})
    with pytest.raises(ValueError, match="kind must be one of"):
        write_checkpoint(tmp_path / "b", kind="gan", arch="x", model_config={}, state_dict={})

    def act(x):  # a plain function: not JSON (builtins like print get patched by Ray's tqdm in the same process)
        return x

    with pytest.raises(ValueError, match=r"model_config.act = <function .*act at .* cannot be saved in config.json"):
        write_checkpoint(tmp_path / "b", kind="fusion", arch="x", model_config={"act": act}, state_dict={})
    assert not (tmp_path / "b").exists()  # refused before anything was written


def test_unreadable_checkpoints_say_what_is_wrong(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="has no config.json"):
        read_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "raylens.checkpoint/2", "kind": "clip"}))
    with pytest.raises(CheckpointError, match="upgrade raylens"):
        read_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(CheckpointError, match="add the keys format='raylens.checkpoint/1', kind, arch"):
        read_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(
        json.dumps({"format": FORMAT, "kind": "fusion", "arch": "mid", "model_config": {}})
    )
    with pytest.raises(CheckpointError, match="has no model.safetensors"):
        read_checkpoint(tmp_path)


def test_native_config_is_kept_and_our_keys_merged(tmp_path):
    """A native library's directory (diffusers/transformers ``save_pretrained``) plus our keys."""
    d = tmp_path / "unet"
    save_weights({"w": torch.ones(2)}, d, name="diffusion_pytorch_model.safetensors")
    (d / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", "sample_size": 32}))
    write_config(
        d,
        kind="diffusion",
        arch="toy-unet",
        model_config={"size": 32},
        weights_file="diffusion_pytorch_model.safetensors",
        keep_existing=True,
    )
    cfg = _config(d)
    assert cfg["_class_name"] == "UNet2DModel" and cfg["sample_size"] == 32 and cfg["kind"] == "diffusion"
    ck = read_checkpoint(d)
    assert ck.weights.name == "diffusion_pytorch_model.safetensors" and ck.model_config == {"size": 32}


class _NativeNet(torch.nn.Module):
    """Stands in for a library model with its own save_pretrained/from_pretrained format."""

    def __init__(self, width: int = 3):
        super().__init__()
        self.width = width
        self.lin = torch.nn.Linear(width, 2)

    def forward(self, x):
        return self.lin(x)

    def example_input(self):
        return torch.ones(1, self.width)


@pytest.fixture
def native_model():
    def save(model, directory):
        save_weights(model.state_dict(), directory, name="native.safetensors")
        (directory / "config.json").write_text(json.dumps({"native_width": model.width}))
        return "native.safetensors"

    def load(ck, device):
        from safetensors.torch import load_file

        model = _NativeNet(json.loads((ck.directory / "config.json").read_text())["native_width"])
        model.load_state_dict(load_file(str(ck.weights)))
        return model

    register_model("test-native-net", kind="diffusion", save=save, load=load)(_NativeNet)
    yield "test-native-net"
    MODELS.unregister("test-native-net")


def test_a_kind_with_a_native_format_saves_and_loads_through_its_hooks(native_model, tmp_path):
    torch.manual_seed(0)
    m = create_model(native_model, width=4)
    d = save_model(m, tmp_path / "ckpt", extra={"step": 3})
    cfg = _config(d)
    assert cfg["native_width"] == 4 and cfg["weights_file"] == "native.safetensors" and cfg["step"] == 3
    assert cfg["model_config"] == {"width": 4} and not (d / "model.safetensors").exists()
    again = load_model(d)
    x = torch.randn(2, 4)
    torch.testing.assert_close(again(x), m(x))
    assert again.raylens_record.arch == native_model and not again.training


def test_load_model_refuses_a_kind_that_does_not_match_the_registry(tmp_path):
    write_checkpoint(tmp_path, kind="clip", arch="mid", model_config={}, state_dict={"w": torch.ones(1)})
    with pytest.raises(CheckpointError, match="says kind 'clip', but 'mid' is registered as a 'fusion' model"):
        load_model(tmp_path)
    write_checkpoint(tmp_path, kind="nerf", arch="nerf-from-a-pack-not-here", model_config={}, state_dict={})
    with pytest.raises(KeyError, match="not registered here .is the pack that registers it installed"):
        load_model(tmp_path)


def test_weights_that_do_not_fit_are_a_checkpoint_error(tmp_path):
    save_model(create_model("timm/test_resnet", num_classes=3), tmp_path)
    cfg = _config(tmp_path)
    cfg["model_config"] = {"num_classes": 5}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="the weights do not fit 'timm/test_resnet'"):
        load_model(tmp_path)


# --------------------------------------------------------------- checkpoints written before format 1


def test_old_clip_checkpoint_loads_and_keeps_its_logit_bias(tmp_path):
    """The layout ClipModel.save wrote: {"model": spec, "open_clip": cfg, "checkpoint_hash", "train", ...}."""
    torch.manual_seed(0)
    m = create_model("clip-tiny", init_logit_bias=-5.0)  # a clip-tiny trained with the SigLIP loss
    d = tmp_path / "old-clip"
    _weights(d, m.model)
    oc = dict(open_clip.get_model_config("raylens-clip-tiny"), init_logit_bias=-5.0)
    old = {
        "model": m.spec.to_dict(),
        "open_clip": oc,
        "checkpoint_hash": "0123456789abcdef",
        "train": {"steps": 3},
        "step": 3,
    }
    (d / "config.json").write_text(json.dumps(old))

    ck = read_checkpoint(d)
    assert (ck.legacy, ck.kind, ck.arch, ck.model_config) == ("clip", "clip", "clip-tiny", {"init_logit_bias": -5.0})
    again = load_model(d)
    assert again.checkpoint_hash == "0123456789abcdef" and again.model.logit_bias is not None
    q = ["a red circle"]
    np.testing.assert_allclose(again.encode_texts(q), m.encode_texts(q), atol=1e-6)
    # and the old layout still loads the pre-format way, too
    assert create_model("clip-tiny", pretrained=str(d)).checkpoint_hash == "0123456789abcdef"


def test_old_fusion_checkpoint_loads(tmp_path):
    """The layout medical save_checkpoint wrote: {"model": {"name", ...model config}, "train": ...}."""
    torch.manual_seed(0)
    m = create_model("mid", encoder={"widths": [4, 8, 8, 8]}, fuse="concat", fuse_stage="layer2").eval()
    d = tmp_path / "old-fusion"
    _weights(d, m)
    old = {
        "model": m.config_dict(),
        "train": {"model": "mid", "epochs": 1},
        "transform": {"spatial_size": [16, 16, 16]},
    }
    (d / "config.json").write_text(json.dumps(old))

    ck = read_checkpoint(d)
    assert (ck.legacy, ck.kind, ck.arch, ck.model_config["fuse"]) == ("fusion", "fusion", "mid", "concat")
    assert ck.config["transform"] == {"spatial_size": [16, 16, 16]}
    again = load_model(d)
    x = m.example_input()
    torch.testing.assert_close(again(x), m(x))


def test_old_timm_classifier_checkpoint_loads_and_serves(tmp_path):
    """The layout save_timm_classifier wrote: {"arch": <timm name>, "classes", "image_size"}."""
    torch.manual_seed(0)
    m = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    d = tmp_path / "old-timm"
    _weights(d, m)
    (d / "config.json").write_text(json.dumps({"arch": "test_resnet", "classes": ["a", "b", "c"], "image_size": 32}))

    ck = read_checkpoint(d)
    assert (ck.legacy, ck.kind, ck.arch, ck.model_config) == (
        "timm",
        "classifier",
        "timm/test_resnet",
        {"num_classes": 3},
    )
    again = load_model(d)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(again(x), m(x))
    clf = load_classifier(d)
    assert clf.kind == "timm" and clf.classes == ["a", "b", "c"]
    assert clf.predict([np.zeros((40, 40, 3), np.uint8)])[0]["label"] in ("a", "b", "c")
