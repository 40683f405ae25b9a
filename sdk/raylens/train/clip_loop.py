"""The CLIP training loop: plain PyTorch, the same on one process, a CPU cluster or GPUs.

``train_clip(config, epoch_batches, ctx)`` trains with open_clip's contrastive loss. With
``ctx.world_size > 1`` (inside Ray Train, which has set up the process group) the model is wrapped
in DDP and the loss gathers features from every worker, so each step sees global negatives; the
token embedding's gradient is averaged over the rows the step used (:mod:`raylens.train.embedding_sync`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch

from raylens.models import ClipModel, create_model
from raylens.models.clip import open_clip_arch
from raylens.train import checkpointing
from raylens.train.checkpointing import CURVES_PNG, HISTORY_CSV, HISTORY_FILE, TRAIN_STATE_FILE
from raylens.train.config import ClipTrainConfig
from raylens.train.context import TrainContext
from raylens.train.embedding_sync import EmbeddingSync
from raylens.train.losses import SIGLIP_INIT_BIAS, SIGLIP_INIT_SCALE, make_loss
from raylens.train.optim import adamw, decay_groups, warmup_cosine
from raylens.train.result import TrainResult

__all__ = [
    "train_clip",
    "TrainResult",
    "TRAIN_STATE_FILE",
    "HISTORY_FILE",
    "HISTORY_CSV",
    "CURVES_PNG",
    "build_model",
    "autocast_for",
]

log = logging.getLogger("raylens.train")
Evaluator = Callable[[ClipModel], dict[str, Any]]
EpochBatches = Callable[[int], Iterable[dict[str, np.ndarray]]]


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


def build_model(cfg: ClipTrainConfig, device: torch.device) -> ClipModel:
    """The model to train: ``cfg.model`` from ``cfg.pretrained``, with SigLIP's bias, locks and checkpointing."""
    import open_clip

    overrides: dict[str, Any] = {}
    if cfg.loss == "siglip":
        oc_cfg = open_clip.get_model_config(open_clip_arch(cfg.model)) or {}
        if oc_cfg.get("init_logit_bias") is None:
            overrides = {"init_logit_bias": SIGLIP_INIT_BIAS, "init_logit_scale": SIGLIP_INIT_SCALE}
    clip = create_model(cfg.model, pretrained=cfg.pretrained, **overrides).to(device)
    if cfg.lock_image:
        clip.model.lock_image_tower(unlocked_groups=cfg.lock_image_unlocked_groups, freeze_bn_stats=False)
    if cfg.lock_text:
        clip.model.lock_text_tower(unlocked_layers=cfg.lock_text_unlocked_layers, freeze_layer_norm=True)
    if cfg.grad_checkpointing:
        clip.model.set_grad_checkpointing(True)
    return clip


def autocast_for(precision: str, device: torch.device) -> tuple[Callable[[], Any], torch.amp.GradScaler | None]:
    """The autocast context factory and GradScaler for ``precision`` on ``device``."""
    if precision in ("amp_bf16", "bf16"):
        return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)), None
    if precision == "amp":
        if device.type != "cuda":
            log.warning("precision='amp' (fp16) needs CUDA; training in fp32 on %s", device.type)
            return contextlib.nullcontext, None
        return (lambda: torch.autocast("cuda", dtype=torch.float16)), torch.amp.GradScaler("cuda")
    return contextlib.nullcontext, None


_FEATURES = ("image_features", "text_features")


def _accumulated_backward(net, loss_fn, micro: list[tuple[torch.Tensor, torch.Tensor]], autocast, scaler) -> float:
    """One optimizer step's gradients over several micro-batches, with the loss over all of them.

    As open_clip's ``--accum-freq``: features of every micro-batch are first computed without
    gradients; then each micro-batch is run again with gradients and its fresh features replace its
    cached ones in the full-batch loss. The gradient is the one of the large batch's loss (exactly, with
    batch-independent layers; open_clip also adds the temperature's gradient once per micro-batch, we once).
    """
    backward = (lambda t: scaler.scale(t).backward()) if scaler is not None else (lambda t: t.backward())
    if len(micro) == 1:
        with autocast():
            loss = loss_fn(net(*micro[0]))
        backward(loss)
        return loss.item()
    with torch.no_grad(), autocast():
        cached = [{k: v for k, v in net(im, tok).items() if k in _FEATURES} for im, tok in micro]
    for j, (im, tok) in enumerate(micro):
        sync = contextlib.nullcontext() if j == len(micro) - 1 or not hasattr(net, "no_sync") else net.no_sync()
        with sync:
            with autocast():
                out = net(im, tok)
                # the temperature (and bias) get their gradient once, not once per micro-batch
                full = {k: (v if j == 0 or not torch.is_tensor(v) else v.detach()) for k, v in out.items()}
                for k in _FEATURES:
                    full[k] = torch.cat([c[k] for c in cached[:j]] + [out[k]] + [c[k] for c in cached[j + 1 :]])
                loss = loss_fn(full)
            backward(loss)
    return loss.item()


def train_clip(
    cfg: ClipTrainConfig,
    epoch_batches: EpochBatches,
    ctx: TrainContext,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    evaluator: Evaluator | None = None,
    run: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``cfg.model`` on batches with ``image`` (N, 3, S, S) float32 and ``caption`` (N,) str.

    ``epoch_batches(epoch)`` returns one epoch's batches (it is called again for every epoch); each
    optimizer step takes ``cfg.accum_steps`` of them. ``evaluator(model) -> metrics`` runs on rank 0
    every ``cfg.eval_every`` steps and at the end; its metrics join the history. ``run`` (default
    ``ctx.run``: the Ray options, say) is saved in every checkpoint's ``config.json`` beside the train
    config. Resumes from ``ctx.latest_checkpoint()`` when there is one (weights, optimizer, schedule,
    grad scaler, step and history; see :mod:`raylens.train.checkpointing`) and checkpoints every
    ``cfg.checkpoint_every`` steps and at the end.
    """
    torch.manual_seed(cfg.seed + ctx.rank)
    device = torch.device(ctx.device)
    run = dict(ctx.run) if run is None else run
    clip = build_model(cfg, device)
    opt = adamw(decay_groups(clip.model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, cfg.max_steps, cfg.warmup_steps))
    autocast, scaler = autocast_for(cfg.precision, device)
    step, epoch, history, final_dir = 0, 0, [], None
    resumed = checkpointing.resume(ctx, clip.model, opt, scheduler=sched, scaler=scaler, device=device)
    if resumed is not None:
        step, epoch, history, final_dir = resumed.step, resumed.next_epoch, resumed.history, resumed.path

    net: torch.nn.Module = clip.model
    embeddings = EmbeddingSync(clip.model, ctx.world_size)  # the token table's rows, outside DDP
    if ctx.world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            clip.model, device_ids=[device.index] if device.type == "cuda" else None
        )
    loss_fn = make_loss(cfg, ctx.rank, ctx.world_size)
    trainable = [p for p in clip.model.parameters() if p.requires_grad]
    net.train()
    t_start = t_log = time.perf_counter()
    samples_since_log, running = 0, []
    micro: list[tuple[torch.Tensor, torch.Tensor]] = []
    for epoch, batch in _endless(epoch_batches, epoch):  # noqa: B020 - resumes at the saved epoch
        if step >= cfg.max_steps:
            break
        micro.append(
            (
                torch.as_tensor(batch["image"], device=device),
                clip.tokenize([str(c) for c in batch["caption"]]).to(device),
            )
        )
        if len(micro) < cfg.accum_steps:
            continue
        opt.zero_grad(set_to_none=True)
        running.append(_accumulated_backward(net, loss_fn, micro, autocast, scaler))
        embeddings.reduce()
        if scaler is not None:
            scaler.unscale_(opt)
        if cfg.grad_clip_norm:
            torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip_norm)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        sched.step()
        with torch.no_grad():
            clip.model.logit_scale.clamp_(0, math.log(100))
        step += 1
        samples_since_log += sum(len(im) for im, _ in micro) * ctx.world_size
        micro = []
        last = step == cfg.max_steps
        if step % cfg.log_every == 0 or last:
            now = time.perf_counter()
            seconds = max(now - t_log, 1e-9)
            metrics = {
                "step": step,
                "epoch": epoch,
                "loss": float(np.mean(running)),
                "lr": sched.get_last_lr()[-1],
                "samples_per_s": samples_since_log / seconds,
                "steps_per_s": samples_since_log / seconds / (cfg.batch_size * cfg.accum_steps * ctx.world_size),
                "logit_scale": float(clip.model.logit_scale.detach().exp()),
                "elapsed_s": now - t_start,
            }
            want_eval = (
                evaluator is not None and ctx.rank == 0 and (last or (cfg.eval_every and step % cfg.eval_every == 0))
            )
            if want_eval:
                metrics.update(evaluator(clip))
                net.train()
            history.append(metrics)
            running, samples_since_log = [], 0
            if on_step is not None and ctx.rank == 0:
                on_step(metrics)
            if checkpointing.checkpoint_due(step, cfg.checkpoint_every, last=last):
                kept = checkpointing.report(
                    ctx,
                    metrics,
                    write=functools.partial(
                        checkpointing.write_checkpoint,
                        model=clip,
                        optimizer=opt,
                        scheduler=sched,
                        scaler=scaler,
                        step=step,
                        epoch=epoch,
                        history=history,
                        extra={"train": cfg.to_dict(), "run": run},
                        title=f"{cfg.model} ({cfg.loss} loss), step {step}",
                    ),
                )
                final_dir = kept or final_dir
            else:
                ctx.report(metrics)
            t_log = time.perf_counter()  # eval and checkpoint time stays out of samples/s
    return TrainResult(final_dir, history, step, time.perf_counter() - t_start)
