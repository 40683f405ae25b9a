"""Every registered model (timm's practice): build it, run a forward pass, save it, load it back.

Parametrised over the one registry, so the models a pack registers later (the multiview pack's
``nerf`` models, say) are tested the moment they are registered. A model takes part by offering a
tiny input: an ``example_input()`` method, or ``register_model(..., example_input=fn)``;
``test_overrides`` in its registration make it small. One timm architecture stands for the
``timm/*`` family (the open_clip family is covered by our registered CLIP configs).
"""

from __future__ import annotations

import pytest
import torch

from raylens.models import (
    MODELS,
    create_model,
    example_input,
    load_model,
    model_infos,
    model_kind,
    model_record,
    read_checkpoint,
    save_model,
)
from raylens.models.checkpoint import jsonable

FAMILY_CASES = {"timm/test_resnet": {"num_classes": 3}}
REGISTERED = [i.name for i in model_infos() if i.source == "registered"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _assert_same(a, b, where="output"):
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"{where}: {m}")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("name", REGISTERED + list(FAMILY_CASES))
def test_build_forward_save_load(name, tmp_path):
    torch.manual_seed(0)
    overrides = MODELS.meta(name).get("test_overrides", {}) if name in MODELS else FAMILY_CASES[name]
    model = create_model(name, **overrides)
    record = model_record(model)
    assert (record.kind, record.arch) == (model_kind(name), name)
    model.eval()
    x = example_input(model)
    with torch.no_grad():
        out = model(x)

    directory = save_model(model, tmp_path / "ckpt")
    ck = read_checkpoint(directory)
    assert (ck.kind, ck.arch, ck.legacy) == (record.kind, name, None)
    assert ck.checkpoint_hash == model.checkpoint_hash

    again = load_model(directory)
    assert type(again) is type(model)
    assert jsonable(model_record(again).model_config) == jsonable(record.model_config)
    assert again.checkpoint_hash == ck.checkpoint_hash
    with torch.no_grad():
        _assert_same(out, again(x))


def test_the_zoo_covers_every_kind_that_is_registered():
    assert {"clip-tiny", "siglip-tiny", "early", "mid", "late", "ct_only", "mr_only"} <= set(REGISTERED)
    kinds = {MODELS.meta(n)["kind"] for n in REGISTERED}
    assert {"clip", "fusion"} <= kinds
