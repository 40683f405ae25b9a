import json
import math

import numpy as np
import pytest
import torch

from raylens.train import ClipTrainConfig, LocalContext, train_clip
from raylens.train.clip_loop import cosine_lr, param_groups


def _batches(n=16, s=32, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, 3, s, s)).astype(np.float32)
    captions = np.array([f"a {c} circle" for c in ("red", "blue")] * (n // 2))

    def epoch(e):
        for i in range(0, n, 8):
            yield {"image": images[i:i + 8], "caption": captions[i:i + 8]}

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


def test_loss_goes_down_on_a_learnable_task(tmp_path):
    torch.manual_seed(0)
    cfg = ClipTrainConfig(max_steps=20, batch_size=8, warmup_steps=2, log_every=10, lr=3e-3)
    result = train_clip(cfg, _batches(), LocalContext(storage=tmp_path))
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_resume_continues_from_checkpoint(tmp_path):
    ctx = LocalContext(storage=tmp_path)
    train_clip(ClipTrainConfig(max_steps=3, batch_size=8, warmup_steps=1, log_every=1, checkpoint_every=2), _batches(), ctx)
    # same context = same run name + storage: a longer run picks up at step 3, not 0
    resumed = train_clip(ClipTrainConfig(max_steps=5, batch_size=8, warmup_steps=1, log_every=1), _batches(), ctx)
    assert [h["step"] for h in resumed.history] == [1, 2, 3, 4, 5]
    assert resumed.steps == 5


def test_schedule_and_groups():
    cfg = ClipTrainConfig(max_steps=100, warmup_steps=10)
    assert cosine_lr(0, cfg) == pytest.approx(0.1) and cosine_lr(9, cfg) == pytest.approx(1.0)
    assert cosine_lr(99, cfg) < 0.01
    m = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    no_decay, decay = param_groups(m, 0.1)
    assert len(decay["params"]) == 1 and len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0


@pytest.mark.parametrize("kw,match", [(dict(batch_size=1), "batch_size"), (dict(lr=2.0), "lr"),
                                      (dict(warmup_steps=500), "warmup_steps"), (dict(max_steps=0), "max_steps")])
def test_config_validation_names_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        ClipTrainConfig(**kw)


def test_empty_data_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no batch"):
        train_clip(ClipTrainConfig(max_steps=2, batch_size=8, warmup_steps=0), lambda e: iter(()), LocalContext(storage=tmp_path))
