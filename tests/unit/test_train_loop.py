import json
import math

import numpy as np
import pytest
import torch

from raylens.train import ClipTrainConfig, LocalContext, train_clip
from raylens.train.optim import decay_groups, warmup_cosine


def _batches(n=16, s=32, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, 3, s, s)).astype(np.float32)
    captions = np.array([f"a {c} circle" for c in ("red", "blue")] * (n // 2))

    def epoch(e):
        for i in range(0, n, 8):
            yield {"image": images[i : i + 8], "caption": captions[i : i + 8]}

    return epoch


def test_two_steps_report_and_checkpoint(tmp_path):
    cfg = ClipTrainConfig(max_steps=2, batch_size=8, warmup_steps=1, log_every=1)
    ctx = LocalContext(storage=tmp_path)
    result = train_clip(cfg, _batches(), ctx)
    assert result.steps == 2 and [h["step"] for h in ctx.history] == [1, 2]
    assert all(math.isfinite(h["loss"]) and h["loss"] > 0 for h in ctx.history)
    ckpt = result.checkpoint
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "train_state.pt").is_file()
    saved = json.loads((ckpt / "config.json").read_text())
    assert saved["train"]["max_steps"] == 2 and saved["model"]["name"] == "clip-tiny" and saved["step"] == 2
    assert saved["format"] == "raylens.checkpoint/1" and saved["kind"] == "clip" and saved["epoch"] == 0
    from raylens.models import load_model

    assert load_model(ckpt).spec.name == "clip-tiny"  # a training checkpoint is a model checkpoint


def test_loss_goes_down_on_a_learnable_task(tmp_path):
    torch.manual_seed(0)
    cfg = ClipTrainConfig(max_steps=20, batch_size=8, warmup_steps=2, log_every=10, lr=3e-3)
    result = train_clip(cfg, _batches(), LocalContext(storage=tmp_path))
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_resume_continues_from_checkpoint(tmp_path):
    ctx = LocalContext(storage=tmp_path)
    train_clip(
        ClipTrainConfig(max_steps=3, batch_size=8, warmup_steps=1, log_every=1, checkpoint_every=2), _batches(), ctx
    )
    # same context = same run name + storage: a longer run picks up at step 3, not 0
    resumed = train_clip(ClipTrainConfig(max_steps=5, batch_size=8, warmup_steps=1, log_every=1), _batches(), ctx)
    assert [h["step"] for h in resumed.history] == [1, 2, 3, 4, 5]
    assert resumed.steps == 5


def test_schedule_and_groups():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1) and warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(99, 100, 10) < 0.01
    m = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    no_decay, decay = decay_groups(m, 0.1)
    assert len(decay["params"]) == 1 and len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(batch_size=1), "batch_size"),
        (dict(lr=2.0), "lr"),
        (dict(max_steps=400, warmup_steps=500), "warmup_steps"),
        (dict(max_steps=0), "max_steps"),
    ],
)
def test_config_validation_names_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        ClipTrainConfig(**kw)


def test_empty_data_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no batch"):
        train_clip(
            ClipTrainConfig(max_steps=2, batch_size=8, warmup_steps=0),
            lambda e: iter(()),
            LocalContext(storage=tmp_path),
        )


def _text_grads(cfg, batches):
    """Every gradient after one optimizer step's backward, BatchNorm frozen so features are batch-independent."""
    from raylens.train.clip_loop import _accumulated_backward, autocast_for, build_model
    from raylens.train.losses import make_loss

    torch.manual_seed(0)
    clip = build_model(cfg, torch.device("cpu"))
    clip.model.train()
    clip.model.visual.eval()  # BatchNorm on running stats: a row's features no longer depend on its batch
    micro = [(torch.as_tensor(b["image"]), clip.tokenize(list(b["caption"]))) for b in batches]
    autocast, scaler = autocast_for(cfg.precision, torch.device("cpu"))
    loss = _accumulated_backward(clip.model, make_loss(cfg), micro, autocast, scaler)
    return loss, {n: p.grad.clone() for n, p in clip.model.named_parameters() if p.grad is not None}


def test_gradient_accumulation_equals_the_large_batch():
    rng = np.random.default_rng(1)
    images = rng.normal(size=(16, 3, 32, 32)).astype(np.float32)
    captions = np.array(
        [f"a {c} {s}" for c in ("red", "blue", "green", "pink") for s in ("star", "disc", "cube", "cone")]
    )
    whole = [{"image": images, "caption": captions}]
    halves = [{"image": images[:8], "caption": captions[:8]}, {"image": images[8:], "caption": captions[8:]}]
    loss_1, g_1 = _text_grads(ClipTrainConfig(batch_size=16), whole)
    loss_2, g_2 = _text_grads(ClipTrainConfig(batch_size=8, accum_steps=2), halves)
    assert loss_2 == pytest.approx(loss_1, rel=1e-5)
    assert any(n.startswith("visual.") for n in g_1) and "logit_scale" in g_1 and set(g_1) == set(g_2)
    for name in g_1:
        torch.testing.assert_close(g_2[name], g_1[name], rtol=1e-4, atol=1e-6, msg=name)


def test_siglip_trains_and_reloads_in_plain_open_clip(tmp_path):
    import open_clip

    cfg = ClipTrainConfig(loss="siglip", max_steps=4, batch_size=8, warmup_steps=1, log_every=2, lr=3e-3)
    result = train_clip(cfg, _batches(), LocalContext(storage=tmp_path))
    assert all(math.isfinite(h["loss"]) for h in result.history)
    model, _, _ = open_clip.create_model_and_transforms(
        "raylens-clip-tiny", pretrained=str(result.checkpoint / "model.safetensors"), init_logit_bias=0.0
    )
    assert model.logit_bias is not None and float(model.logit_bias.detach()) != 0.0  # the trained bias, loaded
    from raylens.models import create_model

    again = create_model("clip-tiny", pretrained=str(result.checkpoint))  # bias detected from the weights
    assert float(again.model.logit_bias.detach()) == pytest.approx(float(model.logit_bias.detach()))


def test_locked_image_tower_does_not_change(tmp_path):
    cfg = ClipTrainConfig(max_steps=2, batch_size=8, warmup_steps=1, log_every=1, lock_image=True)
    from safetensors.torch import load_file

    from raylens.models import create_model

    result = train_clip(cfg, _batches(), LocalContext(storage=tmp_path))
    trained = load_file(str(result.checkpoint / "model.safetensors"))
    torch.manual_seed(0)
    fresh = create_model("clip-tiny").model.state_dict()
    trunk = [
        k for k in trained if k.startswith("visual.trunk.") and trained[k].is_floating_point() and "running" not in k
    ]
    text = [k for k in trained if k.startswith("transformer.")]
    assert trunk and all(torch.equal(trained[k], fresh[k]) for k in trunk)
    assert any(not torch.equal(trained[k], fresh[k]) for k in text)


def test_bf16_accumulation_checkpointing_and_curves(tmp_path):
    cfg = ClipTrainConfig(
        max_steps=3,
        batch_size=4,
        accum_steps=2,
        precision="amp_bf16",
        grad_checkpointing=True,
        grad_clip_norm=1.0,
        warmup_steps=1,
        log_every=1,
        checkpoint_every=2,
        eval_every=2,
    )
    ctx = LocalContext(storage=tmp_path)
    evals = []

    def evaluator(model):
        evals.append(1)
        return {"zeroshot_top1": 0.5}

    result = train_clip(cfg, _batches(), ctx, evaluator=evaluator, run={"num_workers": 1})
    assert result.steps == 3 and len(evals) == 2  # step 2 and the last step
    assert [h.get("zeroshot_top1") for h in result.history] == [None, 0.5, 0.5]
    ckpt = result.checkpoint
    for f in ("history.csv", "curves.png", "config.json", "train_state.pt"):
        assert (ckpt / f).is_file(), f
    saved = json.loads((ckpt / "config.json").read_text())
    assert saved["train"]["accum_steps"] == 2 and saved["run"] == {"num_workers": 1}
    assert result.history[-1]["samples_per_s"] > 0 and result.history[-1]["steps_per_s"] > 0
