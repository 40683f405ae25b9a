"""The CLIP training loop: plain PyTorch, the same on one process, a CPU cluster or GPUs.

``train_clip(config, epoch_batches, ctx)`` trains with open_clip's contrastive loss. With
``ctx.world_size > 1`` (inside Ray Train, which has set up the process group) the model is wrapped
in DDP and the loss gathers features from every worker, so each step sees global negatives.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from raylens.models import ClipModel, create_model
from raylens.runtime import pick_device
from raylens.train.config import ClipTrainConfig
from raylens.train.context import TrainContext

__all__ = ["train_clip", "TrainResult", "TRAIN_STATE_FILE", "HISTORY_FILE", "param_groups", "cosine_lr"]

TRAIN_STATE_FILE = "train_state.pt"
HISTORY_FILE = "history.json"
EpochBatches = Callable[[int], Iterable[dict[str, np.ndarray]]]


@dataclass
class TrainResult:
    """What a training run produced."""

    checkpoint: Path | None
    """The final checkpoint directory (model.safetensors, config.json, history.json)."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """One dict per logged step: step, epoch, loss, lr, samples_per_s."""
    steps: int = 0
    seconds: float = 0.0

    @property
    def final_loss(self) -> float:
        return float(self.history[-1]["loss"]) if self.history else float("nan")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups as open_clip makes them: no decay on norms, biases, embeddings' scale and logit scale."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def cosine_lr(step: int, cfg: ClipTrainConfig) -> float:
    """Multiplier of the peak lr at ``step``: linear warm-up, then cosine to zero."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _endless(epoch_batches: EpochBatches, start_epoch: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    epoch = start_epoch
    while True:
        empty = True
        for batch in epoch_batches(epoch):
            empty = False
            yield epoch, batch
        if empty:
            raise ValueError("the training data yielded no batch: is the dataset smaller than one batch per worker?")
        epoch += 1


def _save(model: ClipModel, opt, sched, step: int, epoch: int, cfg: ClipTrainConfig,
          history: list[dict[str, Any]], directory: Path) -> Path:
    model.save(directory, extra={"train": cfg.to_dict(), "step": step, "epoch": epoch})
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step, "epoch": epoch},
               directory / TRAIN_STATE_FILE)
    (directory / HISTORY_FILE).write_text(json.dumps(history))
    return directory


def train_clip(cfg: ClipTrainConfig, epoch_batches: EpochBatches, ctx: TrainContext,
               on_step: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train ``cfg.model`` on batches with ``image`` (N, 3, S, S) float32 and ``caption`` (N,) str.

    ``epoch_batches(epoch)`` returns one epoch's batches (it is called again for every epoch).
    Resumes from ``ctx.latest_checkpoint()`` when there is one: weights, optimizer, schedule, step.
    """
    import open_clip

    torch.manual_seed(cfg.seed + ctx.rank)
    device = torch.device(pick_device())
    clip = create_model(cfg.model, pretrained=cfg.pretrained).to(device)
    opt = torch.optim.AdamW(param_groups(clip.model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lr(s, cfg))
    step, epoch, history = 0, 0, []
    resume = ctx.latest_checkpoint()
    if resume is not None:
        from safetensors.torch import load_file

        clip.model.load_state_dict(load_file(str(Path(resume) / "model.safetensors"), device=str(device)))
        state = torch.load(Path(resume) / TRAIN_STATE_FILE, map_location=device, weights_only=True)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, epoch = int(state["step"]), int(state["epoch"]) + 1
        hist_file = Path(resume) / HISTORY_FILE
        history = json.loads(hist_file.read_text()) if hist_file.is_file() else []

    net: torch.nn.Module = clip.model
    if ctx.world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(clip.model, device_ids=[device.index] if device.type == "cuda" else None)
    loss_fn = open_clip.ClipLoss(local_loss=cfg.local_loss, gather_with_grad=cfg.gather_with_grad,
                                 cache_labels=True, rank=ctx.rank, world_size=ctx.world_size)
    net.train()
    t_start = t_log = time.perf_counter()
    samples_since_log, running = 0, []
    final_dir = None
    for epoch, batch in _endless(epoch_batches, epoch):
        if step >= cfg.max_steps:
            break
        images = torch.as_tensor(batch["image"], device=device)
        tokens = clip.tokenize([str(c) for c in batch["caption"]]).to(device)
        out = net(images, tokens)
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            clip.model.logit_scale.clamp_(0, math.log(100))
        step += 1
        running.append(loss.item())
        samples_since_log += len(images) * ctx.world_size
        last = step == cfg.max_steps
        if step % cfg.log_every == 0 or last:
            now = time.perf_counter()
            metrics = {"step": step, "epoch": epoch, "loss": float(np.mean(running)), "lr": sched.get_last_lr()[-1],
                       "samples_per_s": samples_since_log / max(now - t_log, 1e-9),
                       "logit_scale": float(clip.model.logit_scale.detach().exp())}
            history.append(metrics)
            running, samples_since_log, t_log = [], 0, now
            if on_step is not None and ctx.rank == 0:
                on_step(metrics)
            want_ckpt = last or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)
            if want_ckpt and ctx.rank == 0:
                with tempfile.TemporaryDirectory(prefix="raylens-ckpt-") as tmp:
                    _save(clip, opt, sched, step, epoch, cfg, history, Path(tmp))
                    ctx.report(metrics, checkpoint_dir=tmp)
                    final_dir = ctx.latest_checkpoint()
            else:
                ctx.report(metrics)
    return TrainResult(final_dir, history, step, time.perf_counter() - t_start)
