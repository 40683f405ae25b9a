import numpy as np
import open_clip
import pytest
import torch

from raylens.errors import CheckpointError
from raylens.models import create_model, list_models


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
