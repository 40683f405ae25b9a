"""The NeRF training loop: plain PyTorch on a :class:`~raylens.train.context.TrainContext`.

``train_nerf(cfg, ctx, train_batches, eval_views=...)`` renders batches of training rays, takes an
MSE step, evaluates PSNR and SSIM on held-out views on rank 0, and checkpoints through
:mod:`raylens.train.checkpointing` (weights via :func:`raylens.models.save_model`, train state,
history, curves), so a resumed run goes on where it stopped. With ``ctx.world_size > 1`` (inside
Ray Train; the process group is set up) every worker renders its own rays and the gradients are
averaged across workers before each step (dense MLP gradients in one flat all-reduce as DDP does;
voxel grids over the union of the rows the workers touched), so the replicas stay identical.

The same loop runs in-process (:class:`~raylens.train.context.LocalContext` with
:func:`random_ray_batches`) and on Ray Train (:mod:`.ray_train`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raylens.train.checkpointing import checkpoint_due, report, resume, write_checkpoint
from raylens.train.context import TrainContext
from raylens.train.result import TrainResult
from raylens_domains.multiview.metrics import psnr, ssim

__all__ = [
    "NerfTrainConfig",
    "NerfDataOptions",
    "EvalView",
    "eval_views_from_frames",
    "random_ray_batches",
    "evaluate_views",
    "build_nerf",
    "auto_grid_resolution",
    "nerf_loss",
    "scene_record",
    "train_nerf",
    "PSNR_CURVE_PNG",
    "SCENE_KEY",
]

log = logging.getLogger("raylens.multiview")

PSNR_CURVE_PNG = "psnr_vs_time.png"
"""The PSNR-versus-training-time curve written beside every checkpoint's ``curves.png``."""
SCENE_KEY = "scene"
"""The ``config.json`` key holding the capture's info (scene transform, box, background)."""
EpochBatches = Callable[[int], Iterable[dict[str, np.ndarray]]]


@dataclass
class NerfTrainConfig:
    """What to train and how (the model's and the optimiser's settings; where it runs is Ray's)."""

    model: str = "nerf-fast"
    """Registry name of the NeRF (``nerf-fast`` or ``nerf-vanilla``; ``raylens models --kind nerf``)."""
    model_args: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments of the model factory (``{"resolution": 128}``); the scene's box and
    background are filled in from the capture, and ``nerf-fast``'s grid resolution from the image
    size (:func:`auto_grid_resolution`) when not given."""
    max_steps: int = 3000
    """Optimizer steps (the run also stops at ``time_budget_s``)."""
    time_budget_s: float = 0.0
    """Stop after this many seconds of training (evaluation excluded); 0: no time limit. The
    learning-rate decay then follows the time spent instead of the steps."""
    batch_rays: int = 4096
    """Rays per worker per step."""
    lr: float = 3e-3
    """Learning rate of the MLPs (the grids of ``nerf-fast`` use the model's ``grid_lr``)."""
    lr_final_ratio: float = 0.1
    """The learning rates decay exponentially to this fraction of their start by the end of the run."""
    lr_decay_steps: int = 0
    """Decay over this many steps, then hold at ``lr_final_ratio`` (0: over the whole run, ``max_steps``
    or ``time_budget_s``). A long budget otherwise keeps the rates high for longer, and ``nerf-fast``
    then settles lower (measured: 27.8 dB after 10 minutes against 28.2 dB with a 3,000-step decay)."""
    eval_every: int = 500
    """Evaluate PSNR/SSIM on the held-out views every N steps (0: only at the end)."""
    eval_every_s: float = 0.0
    """Also evaluate every this many seconds of training (0: off); gives the PSNR-versus-time curve."""
    eval_views: int = 0
    """Held-out views to score (0: all of them)."""
    target_psnr: float = 0.0
    """Stop once the held-out PSNR reaches this many dB (0: off); benchmarks time it."""
    checkpoint_every: int = 0
    """Checkpoint every N steps (0: only at the end)."""
    log_every: int = 50
    """Report loss and throughput every N steps."""
    seed: int = 0
    """Seed of the weights (the same on every worker) and of the ray sampling."""

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"`model` must be a registry name such as 'nerf-fast', got {self.model!r}")
        if not isinstance(self.model_args, dict):
            raise ValueError(f"`model_args` must be a dict of model keyword arguments, got {self.model_args!r}")
        for name in ("max_steps", "batch_rays", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "eval_views", "checkpoint_every", "lr_decay_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0 (0 turns it off), got {getattr(self, name)}")
        for name in ("time_budget_s", "eval_every_s", "target_psnr"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0 seconds (0 turns it off), got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"`lr` must be > 0, got {self.lr}")
        if not 0 < self.lr_final_ratio <= 1:
            raise ValueError(f"`lr_final_ratio` must be in (0, 1], got {self.lr_final_ratio}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NerfTrainConfig:
        return cls(**d)


@dataclass
class NerfDataOptions:
    """How the capture becomes training rays and held-out views."""

    downscale: float = 1.0
    """Divide each image side by this (2 halves them); the intrinsics follow."""
    normalize: str = "auto"
    """Move the scene into [-1, 1]^3: ``auto`` (the capture's box when it has one, else the
    cameras), ``aabb``, ``cameras`` or ``none``. Recorded in the checkpoint so renders map back."""
    eval_split: str = "test"
    """Held-out views scored during and after training (``test`` or ``val``)."""
    cache_max_rays: int = 20_000_000
    """Materialise the rays once when the training split has at most this many (pixels); larger
    captures stream from the images every epoch."""
    shuffle_buffer: int = 65_536
    """Rays in each worker's local shuffle buffer (on top of the per-task shuffle of frames' rays)."""
    frames_per_task: int = 4
    """Frames whose rays one Ray Data task makes and mixes."""

    def __post_init__(self):
        if not self.downscale >= 1:
            raise ValueError(f"`downscale` must be >= 1 (2 halves each side), got {self.downscale}")
        if self.normalize not in ("auto", "aabb", "cameras", "none"):
            raise ValueError(f"`normalize` must be auto, aabb, cameras or none, got {self.normalize!r}")
        if self.eval_split not in ("test", "val"):
            raise ValueError(f"`eval_split` must be 'test' or 'val', got {self.eval_split!r}")
        for name in ("cache_max_rays", "shuffle_buffer"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}")
        if self.frames_per_task < 1:
            raise ValueError(f"`frames_per_task` must be >= 1, got {self.frames_per_task}")


@dataclass
class EvalView:
    """One held-out view: its rays and its ground-truth image."""

    origins: np.ndarray
    """(H*W, 3) float32."""
    directions: np.ndarray
    """(H*W, 3) float32, unit length."""
    image: np.ndarray
    """(H, W, 3) float32 in [0, 1]."""
    frame_id: int = 0


def eval_views_from_frames(frames: Iterable[Any]) -> list[EvalView]:
    """:class:`EvalView` s of frames (:class:`~.frames.Frame` objects or frame rows)."""
    from raylens_domains.multiview.frames import Frame, image_float
    from raylens_domains.multiview.rays import camera_rays

    views = []
    for f in frames:
        frame = f if isinstance(f, Frame) else Frame.from_row(f)
        o, d = camera_rays(frame.c2w, frame.intrinsics)
        views.append(EvalView(o.reshape(-1, 3), d.reshape(-1, 3), image_float(frame.image), frame.frame_id))
    return views


def random_ray_batches(rays: dict[str, np.ndarray], batch_size: int, seed: int = 0) -> EpochBatches:
    """``epoch -> batches`` over in-memory rays (``origins``, ``directions``, ``rgb``), reshuffled
    each epoch; the in-process counterpart of a Ray Train shard."""
    n = len(rays["rgb"])
    if n < batch_size:
        raise ValueError(f"{n} training rays are fewer than one batch of {batch_size}; lower `batch_rays`")
    keys = ("origins", "directions", "rgb")

    def epoch_batches(epoch: int) -> Iterator[dict[str, np.ndarray]]:
        order = np.random.default_rng(seed * 100_003 + epoch).permutation(n)
        for i in range(0, n - batch_size + 1, batch_size):
            idx = order[i : i + batch_size]
            yield {k: rays[k][idx] for k in keys}

    return epoch_batches


@torch.no_grad()
def evaluate_views(model, views: list[EvalView], chunk: int = 16384) -> dict[str, Any]:
    """Render every view; returns mean ``val_psnr``, ``val_ssim`` and the per-view PSNRs."""
    if not views:
        return {}
    device = model.device
    psnrs, ssims = [], []
    for v in views:
        out = model.render_chunked(
            torch.as_tensor(v.origins, device=device), torch.as_tensor(v.directions, device=device), chunk=chunk
        )
        image = out.rgb.clamp(0, 1).reshape(v.image.shape).cpu().numpy()
        psnrs.append(psnr(image, v.image))
        ssims.append(ssim(image, v.image))
    return {"val_psnr": float(np.mean(psnrs)), "val_ssim": float(np.mean(ssims)), "val_psnr_views": psnrs}


def build_nerf(cfg: NerfTrainConfig, scene: dict[str, Any] | None, device: str | torch.device):
    """The model to train: ``cfg.model`` over the scene's box, rendering on its background."""
    from raylens.models import create_model, model_kind

    if model_kind(cfg.model) != "nerf":
        raise ValueError(
            f"`model` {cfg.model!r} is a {model_kind(cfg.model)} model; pick a nerf model (nerf-fast, nerf-vanilla)"
        )
    args = dict(cfg.model_args)
    if scene:
        if scene.get("aabb") is not None and "aabb" not in args:
            lo, hi = np.asarray(scene["aabb"], dtype=np.float64).reshape(2, 3)
            args["aabb"] = [float(v) for v in (*lo, *hi)]
        if scene.get("background") is not None and "background" not in args:
            args["background"] = [float(c) for c in scene["background"]]
        views = scene.get("views") or {}
        if cfg.model == "nerf-fast" and "resolution" not in args and views.get("width"):
            args["resolution"] = auto_grid_resolution(int(views["width"]), int(views.get("height") or views["width"]))
    return create_model(cfg.model, **args).to(device)


def auto_grid_resolution(width: int, height: int) -> int:
    """The voxel grid side ``nerf-fast`` gets when ``model_args`` sets none: about 0.64 voxels per
    pixel of the training images' longer side, between 64 and 256. A finer grid than the views can
    pin down overfits: on the default scene (100x100, 60 views) a 128^3 grid peaks at 27.3 dB after
    2 minutes and falls to 25.4 by 10; a 64^3 grid holds about 27.8 from 3 minutes to 10.

    >>> auto_grid_resolution(100, 100), auto_grid_resolution(400, 300), auto_grid_resolution(1920, 1080)
    (64, 256, 256)
    """
    return int(np.clip(round(0.64 * max(width, height)), 64, 256))


def scene_record(info, c2ws: np.ndarray, intrinsics, source: str | None = None) -> dict[str, Any]:
    """What a checkpoint keeps about its capture: the reader's :class:`~.capture.CaptureInfo` (scene
    transform, box, background) plus the typical training camera (``views``, for turntables)."""
    from raylens_domains.multiview.render_views import view_defaults

    record = info.to_dict() if hasattr(info, "to_dict") else dict(info)
    record["views"] = view_defaults(c2ws, intrinsics)
    if source is not None:
        record["source"] = str(source)
    return record


def nerf_loss(out, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The training loss of a render (MSE of the output and of every ``aux`` render, plus the
    model's regularizer) and the output's own MSE (for the training PSNR)."""
    mse = torch.mean((out.rgb - target) ** 2)
    total = mse
    for aux in out.aux:
        total = total + torch.mean((aux.rgb - target) ** 2)
    if out.regularizer is not None:
        total = total + out.regularizer
    return total, mse.detach()


def _endless(epoch_batches: EpochBatches, start_epoch: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    epoch = start_epoch
    while True:
        empty = True
        for batch in epoch_batches(epoch):
            empty = False
            yield epoch, batch
        if empty:
            raise ValueError("the training rays yielded no batch: is the data smaller than one batch per worker?")
        epoch += 1


def _agree(values: list[float], world_size: int, device) -> list[float]:
    """Rank 0's ``values`` on every rank (the stop flag and the schedule must be the same everywhere)."""
    if world_size <= 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return t.tolist()


def _plot_psnr_time(history: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    pts = [(h["time_s"], h["val_psnr"]) for h in history if "val_psnr" in h and "time_s" in h]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    ax.plot([t / 60 for t, _ in pts], [p for _, p in pts], marker="o", ms=3, lw=2)
    ax.set_xlabel("training time (minutes)")
    ax.set_ylabel("PSNR on held-out views (dB)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def train_nerf(
    cfg: NerfTrainConfig,
    ctx: TrainContext,
    train_batches: EpochBatches,
    eval_views: list[EvalView] | None = None,
    scene: dict[str, Any] | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train a NeRF on batches of rays (``origins``, ``directions``, ``rgb``: (B, 3) float32).

    Args:
        cfg: the training config.
        ctx: where it runs (rank, world size, device, report, resume).
        train_batches: ``epoch -> batches`` of this worker's rays (called again for every epoch).
        eval_views: held-out views scored on rank 0 (PSNR, SSIM) during and after training.
        scene: the capture's info (:meth:`~.capture.CaptureInfo.to_dict`: box, background, scene
            transform); it sizes the model and is saved with every checkpoint so renders map back.
        on_step: called on rank 0 with each reported metrics dict (progress lines).

    Returns:
        The final checkpoint (a ``raylens.checkpoint/1`` directory), the history, steps and seconds.
    """
    device = torch.device(getattr(ctx, "device", "cpu"))
    torch.manual_seed(cfg.seed)  # the same initial weights on every worker
    model = build_nerf(cfg, scene, device)
    optimizer = model.make_optimizer(cfg.lr)
    step, epoch, history, spent = 0, 0, [], 0.0
    resumed = resume(ctx, model, optimizer, device=device)
    if resumed is not None:
        step, epoch, history = resumed.step, resumed.next_epoch, resumed.history
        spent = float(history[-1].get("time_s", 0.0)) if history else 0.0
    torch.manual_seed(cfg.seed * 1000 + ctx.rank + step)  # each worker jitters its own samples
    views = list(eval_views or [])[: cfg.eval_views or None] if ctx.rank == 0 else []
    extra = {"train": cfg.to_dict(), "run": dict(getattr(ctx, "run", {}) or {}), SCENE_KEY: scene or {}}
    title = f"{cfg.model} on {Path(str((scene or {}).get('source', 'rays'))).name}"

    def write(directory: Path) -> None:
        write_checkpoint(
            directory, model, optimizer=optimizer, step=step, epoch=epoch, history=history, extra=extra, title=title
        )
        _plot_psnr_time(history, directory / PSNR_CURVE_PNG, title)

    if step >= cfg.max_steps:
        return TrainResult(ctx.latest_checkpoint(), history, step, 0.0)
    model.train()
    t_start = time.perf_counter()
    t_run = t_start - spent  # training time so far = now - t_run - (eval time, added to t_run)
    t_log, rays_since, losses, mses, last_eval_s = time.perf_counter(), 0, [], [], spent
    samples, reached = [], False
    final = None
    for epoch, batch in _endless(train_batches, epoch):  # noqa: B020 - resumes at the saved epoch
        elapsed = time.perf_counter() - t_run
        progress = 1.0 if reached else step / cfg.max_steps
        if cfg.time_budget_s:
            progress = max(progress, elapsed / cfg.time_budget_s)
        decay = min(1.0, step / cfg.lr_decay_steps) if cfg.lr_decay_steps else min(1.0, progress)
        timed_eval = float(bool(cfg.eval_every_s) and elapsed - last_eval_s >= cfg.eval_every_s)
        progress, timed_eval, decay = _agree([progress, timed_eval, decay], ctx.world_size, device)  # rank 0's
        info = model.on_train_step(step)
        lr_scale = cfg.lr_final_ratio**decay
        optimizer.set_lr_scale(lr_scale)
        origins, directions, target = (
            torch.as_tensor(np.asarray(batch[k]), dtype=torch.float32, device=device)
            for k in ("origins", "directions", "rgb")
        )
        out = model.render_rays(origins, directions, perturb=True)
        loss, mse = nerf_loss(out, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step(ctx.world_size)
        step += 1
        losses.append(float(loss.detach()))
        mses.append(float(mse))
        samples.append(out.weights.numel() / len(target))
        rays_since += len(target) * ctx.world_size
        last = step >= cfg.max_steps or progress >= 1.0
        ckpt_due = checkpoint_due(step, cfg.checkpoint_every, last=last)
        if step % cfg.log_every and not last and not timed_eval and not ckpt_due:
            continue
        now = time.perf_counter()
        metrics: dict[str, Any] = {
            "step": step,
            "epoch": epoch,
            "loss": float(np.mean(losses)),
            "psnr_train": -10.0 * math.log10(max(float(np.mean(mses)), 1e-12)),
            "lr": cfg.lr * lr_scale,
            "rays_per_s": rays_since / max(now - t_log, 1e-9),
            "time_s": now - t_run,
            "samples_per_ray": float(np.mean(samples)),
            **{k: v for k, v in info.items() if isinstance(v, int | float)},
        }
        if hasattr(model, "occupied"):
            metrics["occupied"] = float(model.occupied.float().mean())
        if last or timed_eval or (cfg.eval_every and step % cfg.eval_every == 0):
            last_eval_s = metrics["time_s"]
            if views:
                t_eval = time.perf_counter()
                metrics.update(evaluate_views(model, views))
                model.train()
                reached = bool(cfg.target_psnr) and metrics["val_psnr"] >= cfg.target_psnr
                t_run += time.perf_counter() - t_eval  # evaluation time is not training time
        history.append(metrics)
        if on_step is not None and ctx.rank == 0:
            on_step(metrics)
        t_ck = time.perf_counter()
        if ckpt_due:
            kept = report(ctx, metrics, write=write)
            final = kept or final
        else:
            report(ctx, metrics)
        t_run += time.perf_counter() - t_ck
        losses, mses, samples, rays_since, t_log = [], [], [], 0, time.perf_counter()
        if last:
            break
    final = final or ctx.latest_checkpoint()
    return TrainResult(final, history, step, time.perf_counter() - t_start)
