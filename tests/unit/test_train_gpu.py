"""The CUDA training paths: fp16 AMP with a GradScaler, bf16 autocast. Skipped without a GPU."""

import json

import numpy as np
import pytest
import torch

from raylens.train import ClipTrainConfig, LocalContext, train_clip

pytestmark = pytest.mark.gpu


def _batches(e):
    rng = np.random.default_rng(e)
    for _ in range(2):
        yield {
            "image": rng.normal(size=(8, 3, 32, 32)).astype(np.float32),
            "caption": np.array(["a red circle", "a blue star"] * 4),
        }


@pytest.mark.parametrize("precision", ["amp", "amp_bf16"])
def test_amp_trains_saves_and_resumes_the_scaler(tmp_path, precision):
    ctx = LocalContext(storage=tmp_path)
    cfg = ClipTrainConfig(
        max_steps=3, batch_size=8, warmup_steps=1, log_every=1, precision=precision, checkpoint_every=2
    )
    result = train_clip(cfg, _batches, ctx)
    assert all(np.isfinite(h["loss"]) for h in result.history)
    state = torch.load(result.checkpoint / "train_state.pt", weights_only=True)
    assert (state["scaler"] is not None) == (precision == "amp")
    resumed = train_clip(ClipTrainConfig(**{**cfg.to_dict(), "max_steps": 4}), _batches, ctx)
    assert resumed.steps == 4 and json.loads((resumed.checkpoint / "config.json").read_text())["step"] == 4
