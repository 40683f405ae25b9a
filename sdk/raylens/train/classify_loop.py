"""The image-classification training loop: plain PyTorch, the same in-process, on CPU workers or GPUs.

:func:`train_classifier` trains any classifier (``forward(x) -> logits``) on batches of
``image`` (N, 3, S, S) float32 and ``label`` (N,) int, on a :class:`~raylens.train.TrainContext`
like every raylens loop: :class:`~raylens.train.LocalContext` in-process, ``RayContext`` inside Ray
Train (:mod:`raylens.train.ray_classify`). With ``ctx.world_size > 1`` the model is wrapped in DDP.
It resumes, checkpoints (every ``checkpoint_every`` epochs and at the end) and writes its history and
curves through :mod:`raylens.train.checkpointing`.

The recipe, each piece a small function tested on its own: AdamW with decay groups, linear
warm-up then cosine (:mod:`raylens.train.optim`), label smoothing or focal
loss (:func:`classification_loss`), gradient clipping, random shifts (:func:`random_translate`; RandAugment
and random crops run in the reader, ``TrainAugment``), MixUp/CutMix (``raylens.data.mix.MixUpCutMix``),
autocast (bf16 on a GPU), EMA weights (:class:`ModelEMA`), early stopping on validation top-1
(:class:`EarlyStopping`) and class-balanced sampling (:func:`weighted_resample`).

Extension point: a *batch transform* ``transform(model, images, labels) -> (images, labels)`` runs
on every training batch before mixing. Adversarial training plugs in here: a factory registered with
:func:`register_batch_transform` is chosen by ``ClassifyTrainConfig.adversarial`` and built with
``factory(mean=cfg.mean, std=cfg.std, **cfg.adversarial_args)``; it gets the unwrapped model (in
train mode; leave no gradients on its parameters, e.g. use ``torch.autograd.grad``) and images
normalised with ``mean``/``std``. A transform can also be passed directly (``batch_transform=``).

>>> import numpy as np, tempfile
>>> from raylens.train.context import LocalContext
>>> rng = np.random.default_rng(0)
>>> data = {"image": rng.normal(size=(64, 3, 8, 8)).astype("float32"), "label": rng.integers(0, 2, 64)}
>>> cfg = ClassifyTrainConfig(model="small_cnn", model_kwargs={"width": 4}, epochs=2, batch_size=32,
...                           warmup_epochs=0, image_size=8)
>>> result = train_classifier(cfg, data, LocalContext(storage=tempfile.mkdtemp(), device="cpu"), classes=["a", "b"])
>>> result.steps, [h["epoch"] for h in result.history], sorted(p.name for p in result.checkpoint.iterdir())[:2]
(4, [0, 1], ['config.json', 'curves.png'])
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from raylens.registry import Registry
from raylens.train import checkpointing
from raylens.train.classify_config import ClassifyTrainConfig
from raylens.train.classify_eval import ClassifyMetrics, evaluate_classifier
from raylens.train.context import TrainContext
from raylens.train.optim import adamw, decay_groups, warmup_cosine
from raylens.train.result import TrainResult

__all__ = [
    "ClassifyTrainConfig",
    "ClassifyTrainResult",
    "BatchTransform",
    "EpochBatches",
    "BATCH_TRANSFORMS",
    "EMA_FILE",
    "ArrayBatches",
    "EarlyStopping",
    "ModelEMA",
    "train_classifier",
    "build_classifier",
    "classification_loss",
    "load_teacher",
    "inverse_frequency_weights",
    "weighted_resample",
    "random_translate",
    "autocast_for",
    "register_batch_transform",
    "resolve_batch_transform",
]

log = logging.getLogger("raylens.train")

BatchTransform = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``transform(model, images, labels) -> (images, labels)``, applied to every training batch."""
EpochBatches = Callable[[int], Iterable[Mapping[str, Any]]]
"""``epoch -> iterable of {"image", "label"} batches`` (a Ray shard's ``epoch_batches``, say)."""
BATCH_TRANSFORMS = Registry("batch transform")
"""Factories of batch transforms by name (``ClassifyTrainConfig.adversarial``); see :func:`register_batch_transform`."""
EMA_FILE = "ema.safetensors"
"""The EMA weights in a checkpoint written with ``ema_decay`` (``model.safetensors`` holds the trained ones)."""


def register_batch_transform(name: str, *, doc: str | None = None):
    """Decorator registering ``factory(mean=..., std=..., **args) -> BatchTransform`` under ``name``.

    >>> @register_batch_transform("identity-example")
    ... def _identity(mean=None, std=None):
    ...     return lambda model, x, y: (x, y)
    >>> resolve_batch_transform("identity-example", {}, mean=[0, 0, 0], std=[1, 1, 1]) is not None
    True
    >>> _ = BATCH_TRANSFORMS.unregister("identity-example")
    """
    if not isinstance(name, str) or not name or name == "none":
        raise ValueError(f"a batch transform needs a name other than 'none', got {name!r}")
    return BATCH_TRANSFORMS.register(name, doc=doc)


def resolve_batch_transform(
    name: str, args: Mapping[str, Any], *, mean: Sequence[float], std: Sequence[float]
) -> BatchTransform | None:
    """The batch transform ``name`` built with ``args`` (None for ``"none"``); plugins are loaded first.

    Raises:
        KeyError: no transform of that name (the known ones are listed).
    """
    if name == "none":
        return None
    if name not in BATCH_TRANSFORMS:
        from raylens.plugins import load_plugins

        load_plugins()  # the robustness tools register fgsm/pgd from their plug-in module
    if name not in BATCH_TRANSFORMS:
        known = ", ".join(BATCH_TRANSFORMS.names()) or "none registered"
        raise KeyError(f"unknown adversarial batch transform {name!r}; known: {known} (or 'none')")
    return BATCH_TRANSFORMS.get(name)(mean=list(mean), std=list(std), **dict(args))


# ----------------------------------------------------------------------------------- recipe pieces


def classification_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    label_smoothing: float = 0.0,
    focal_gamma: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy (or focal loss) of ``logits`` against hard labels ``(N,)`` or soft targets ``(N, C)``.

    Hard labels are smoothed (``1 - s + s/C`` on the label, ``s/C`` elsewhere, as
    ``F.cross_entropy(label_smoothing=s)``); soft targets (MixUp/CutMix) are used as given. With
    ``focal_gamma > 0`` each class term is weighted by ``(1 - p) ** gamma`` (Lin et al.'s focal loss).
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    if targets.ndim == 1:
        c = logits.shape[-1]
        off = label_smoothing / c
        soft = torch.full_like(logp, off).scatter_(1, targets.long().view(-1, 1), 1.0 - label_smoothing + off)
    else:
        soft = targets.float()
    if focal_gamma > 0:
        per_class = -soft * (1.0 - logp.exp()).pow(focal_gamma) * logp
    else:
        per_class = -soft * logp
    return per_class.sum(-1).mean()


def random_translate(images: torch.Tensor, max_shift: int, rng: np.random.Generator) -> torch.Tensor:
    """Shift each ``(C, H, W)`` image of the batch by up to ``max_shift`` pixels along each axis, edges repeated.

    The classic pad-and-crop augmentation of small-image training, on tensors in the loop, so it
    also applies to data cached once in memory.
    """
    if max_shift <= 0:
        return images
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (max_shift,) * 4, mode="replicate")
    dy, dx = rng.integers(0, 2 * max_shift + 1, (2, n))
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


def inverse_frequency_weights(class_counts: Sequence[int]) -> np.ndarray:
    """Per-class sampling weights ``1 / count`` (a class with no rows gets 0), normalised to sum to 1."""
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0 or (counts < 0).any() or counts.sum() == 0:
        raise ValueError(
            f"class_counts must be non-negative counts, one per class, not all 0; got {list(class_counts)}"
        )
    w = np.divide(1.0, counts, out=np.zeros_like(counts), where=counts > 0)
    return w / w.sum()


def weighted_resample(labels: np.ndarray, class_weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of a batch drawn with replacement, row ``i`` with probability ∝ ``class_weights[labels[i]]``.

    Applied to every batch it is ``WeightedRandomSampler``'s class balancing on streamed data: rare
    classes are drawn as often as common ones (in expectation), whatever the shard order.
    """
    w = np.asarray(class_weights, np.float64)[np.asarray(labels)]
    if w.sum() <= 0:
        return np.arange(len(labels))
    return rng.choice(len(labels), size=len(labels), replace=True, p=w / w.sum())


class ModelEMA:
    """An exponential moving average of a model's weights (timm's ``ModelEmaV3`` rule with warm-up).

    ``decay_t = min(decay, (1 + t) / (10 + t))``: early on the average follows the model closely.
    Float tensors are averaged, integer buffers (BatchNorm's counter) copied.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for ema_v, v in zip(self.module.state_dict().values(), model.state_dict().values()):
            if ema_v.dtype.is_floating_point:
                ema_v.lerp_(v.detach(), 1.0 - d)
            else:
                ema_v.copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)


@dataclass
class EarlyStopping:
    """Stop when a metric (higher is better) has not risen by ``min_delta`` for ``patience`` evaluations.

    >>> es = EarlyStopping(patience=2)
    >>> [es.update(v, epoch) for epoch, v in enumerate([0.5, 0.7, 0.69, 0.7, 0.71])]
    [False, False, False, True, False]
    >>> es.best, es.best_epoch
    (0.71, 4)
    """

    patience: int
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int | None = None
    bad_evals: int = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record one evaluation; True when training should stop now."""
        if self.best is None or value > self.best + self.min_delta:
            self.best, self.best_epoch, self.bad_evals = float(value), epoch, 0
            return False
        self.bad_evals += 1
        return self.patience > 0 and self.bad_evals >= self.patience

    @classmethod
    def from_history(
        cls, history: Sequence[Mapping[str, Any]], patience: int, min_delta: float = 0.0, key: str = "val_top1"
    ) -> tuple[EarlyStopping, bool]:
        """The state after replaying ``history`` (a resumed run), and whether it had already stopped."""
        es, stopped = cls(patience, min_delta), False
        for row in history:
            if key in row:
                stopped = es.update(float(row[key]), int(row["epoch"]))
        return es, stopped


class ArrayBatches:
    """``epoch -> batches`` over in-memory arrays: this rank's share, reshuffled every epoch by seed."""

    def __init__(
        self, arrays: Mapping[str, np.ndarray], batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1
    ):
        lens = {k: len(v) for k, v in arrays.items()}
        if len(set(lens.values())) != 1:
            raise ValueError(f"arrays need one length, got {lens}")
        self.arrays, self.batch_size, self.seed = dict(arrays), batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.n = next(iter(lens.values()))

    def rows_per_rank(self) -> int:
        return self.n // self.world_size

    def __call__(self, epoch: int) -> Iterable[dict[str, np.ndarray]]:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        mine = order[self.rank :: self.world_size][: self.rows_per_rank()]  # equal shares keep DDP in step
        for i in range(0, len(mine), self.batch_size):
            j = mine[i : i + self.batch_size]
            yield {k: v[j] for k, v in self.arrays.items()}


def autocast_for(precision: str, device: torch.device) -> tuple[Callable[[], Any], torch.amp.GradScaler | None]:
    """The autocast context factory and grad scaler for ``precision`` on ``device``."""
    if precision == "auto":
        if device.type != "cuda":
            return contextlib.nullcontext, None
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "bf16":
        return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)), None
    if precision == "fp16":
        if device.type != "cuda":
            log.warning("precision='fp16' needs a GPU; training in fp32 on %s", device.type)
            return contextlib.nullcontext, None
        return (lambda: torch.autocast("cuda", dtype=torch.float16)), torch.amp.GradScaler("cuda")
    return contextlib.nullcontext, None


# ----------------------------------------------------------------------------------- the loop


def build_classifier(cfg: ClassifyTrainConfig, num_classes: int) -> nn.Module:
    """``cfg.model`` with ``num_classes`` outputs (``image_size`` passed to factories that take it)."""
    from raylens.models import MODELS
    from raylens.models.classifier_hub import create_classifier

    kwargs = dict(cfg.model_kwargs)
    if cfg.model in MODELS and "image_size" not in kwargs:
        if "image_size" in inspect.signature(MODELS.get(cfg.model)).parameters:
            kwargs["image_size"] = cfg.image_size
    return create_classifier(cfg.model, num_classes=num_classes, reset_head=cfg.reset_head, **kwargs)


@dataclass
class ClassifyTrainResult(TrainResult):
    """What :func:`train_classifier` returns: the run (checkpoint, history, steps) plus the model.

    ``history`` has one row per epoch: ``step``, ``epoch``, ``loss``, ``lr``, ``seconds``,
    ``images_per_s``, ``train_top1`` (unmixed batches), and on rank 0 after an evaluation
    ``val_loss``, ``val_top1``, ``val_top5``, ``val_f1_macro``."""

    model: nn.Module | None = None
    """The model to use (the EMA weights when ``ema_decay`` is set), unwrapped, in eval mode."""
    val_metrics: ClassifyMetrics | None = None
    """The last validation's metrics (None without validation data, or on ranks other than 0)."""
    stopped_early: bool = False
    """Training stopped before ``epochs`` because validation top-1 stopped rising."""
    best_epoch: int | None = None
    """The epoch of the best validation top-1 (None without validation)."""


def load_teacher(cfg: ClassifyTrainConfig, classes: Sequence[str], device: torch.device | str = "cpu") -> nn.Module:
    """``cfg.teacher``, frozen in eval mode on ``device``; an error unless it predicts ``classes`` in order."""
    from raylens.models.checkpoint import read_checkpoint
    from raylens.models.classifier_hub import load_classifier

    path = Path(cfg.teacher).expanduser()
    theirs = read_checkpoint(path).config.get("classes")
    if theirs is not None and list(theirs) != list(classes):
        raise ValueError(
            f"teacher {str(path)!r} predicts the classes {list(theirs)[:8]}..., not this run's {list(classes)[:8]}...: "
            "distil from a teacher trained on the same class list"
        )
    teacher = load_classifier(path, device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def _tensor(value: Any, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dtype or value.dtype)
    arr = np.asarray(value)
    # Ray hands out read-only views of its object store; torch wants writable memory
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy()).to(device=device, dtype=dtype)


def _agree(stop: bool, ctx: TrainContext, device: torch.device) -> bool:
    """Rank 0's decision, the same on every rank (a DDP run must stop together)."""
    if ctx.world_size <= 1:
        return stop
    import torch.distributed as dist

    flag = torch.tensor([1.0 if stop else 0.0], device=device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def train_classifier(
    cfg: ClassifyTrainConfig,
    batches: Mapping[str, np.ndarray] | EpochBatches,
    ctx: TrainContext,
    *,
    classes: Sequence[str],
    val: Mapping[str, np.ndarray] | None = None,
    model: nn.Module | None = None,
    steps_per_epoch: int | None = None,
    class_counts: Sequence[int] | None = None,
    batch_transform: BatchTransform | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> ClassifyTrainResult:
    """Train a classifier on ``ctx``: plain PyTorch, in-process or as a Ray Train worker's loop.

    Args:
        cfg: the recipe.
        batches: ``{"image": (N, 3, S, S) float32, "label": (N,) int}`` arrays (each rank trains on its
            share), or ``epoch -> iterable of such batches`` (a Ray shard).
        ctx: where it runs. Calling again with a context that has a checkpoint resumes: weights,
            optimizer, schedule, EMA, epoch, history, early-stopping state.
        classes: the class names (``classes[label]``); saved in every checkpoint.
        val: validation arrays scored on rank 0 every ``cfg.eval_every`` epochs and after the last.
        model: a classifier to start from (default: ``cfg.model`` with ``len(classes)`` outputs).
        steps_per_epoch: optimizer steps per epoch on each rank, for the schedule; needed when
            ``batches`` is a callable (rows per worker / batch size, rounded up).
        class_counts: training rows per class; needed for ``imbalance: sampling`` with a callable.
        batch_transform: applied to every training batch (default: ``cfg.adversarial``'s).
        on_epoch: called on rank 0 with each epoch's metrics (progress printing).
        extra: more ``config.json`` keys for every checkpoint.

    Returns:
        The last checkpoint, the history (resumed epochs included), the model and the last validation.
    """
    if not isinstance(cfg, ClassifyTrainConfig):
        raise TypeError(f"cfg must be a ClassifyTrainConfig, got {type(cfg).__name__}")
    classes = [str(c) for c in classes]
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be 2 or more distinct names, got {classes}")
    t_start = time.perf_counter()
    device = torch.device(ctx.device)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = build_classifier(cfg, len(classes)) if model is None else model
    from raylens.models import model_record
    from raylens.models.classifier_hub import num_classes_of

    model_record(model)  # checkpoints need it: fail now, not at the first checkpoint
    if num_classes_of(model) != len(classes):
        raise ValueError(
            f"the model predicts {num_classes_of(model)} classes but {len(classes)} class names were given; "
            "pass reset_head (ClassifyTrainConfig.reset_head) to train a new head"
        )
    model = model.to(device)
    if isinstance(batches, Mapping):
        arrays = batches
        if class_counts is None:
            class_counts = np.bincount(np.asarray(arrays["label"]), minlength=len(classes)).tolist()
        batches = ArrayBatches(arrays, cfg.batch_size, seed=cfg.seed, rank=ctx.rank, world_size=ctx.world_size)
        steps_per_epoch = steps_per_epoch or max(1, math.ceil(batches.rows_per_rank() / cfg.batch_size))
    if steps_per_epoch is None or steps_per_epoch < 1:
        raise ValueError(
            "steps_per_epoch is needed with streamed batches (rows per worker / batch size, rounded up), "
            f"got {steps_per_epoch!r}"
        )
    class_weights = None
    if cfg.imbalance == "sampling":
        if class_counts is None:
            raise ValueError("imbalance='sampling' needs class_counts (training rows per class) with streamed batches")
        if len(class_counts) != len(classes):
            raise ValueError(f"class_counts has {len(class_counts)} entries for {len(classes)} classes")
        class_weights = inverse_frequency_weights(class_counts)
    if batch_transform is None:
        batch_transform = resolve_batch_transform(cfg.adversarial, cfg.adversarial_args, mean=cfg.mean, std=cfg.std)
    mixer = None
    if cfg.mixing:
        from raylens.data.mix import MixUpCutMix

        mixer = MixUpCutMix(
            len(classes),
            mixup_alpha=cfg.mixup_alpha,
            cutmix_alpha=cfg.cutmix_alpha,
            prob=cfg.mix_prob,
            label_smoothing=cfg.label_smoothing,
        )

    teacher = load_teacher(cfg, classes, device) if cfg.teacher else None
    opt = adamw(decay_groups(model, cfg.weight_decay), lr=cfg.lr)
    total = cfg.epochs * steps_per_epoch
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, warmup, cfg.min_lr / cfg.lr))
    autocast, scaler = autocast_for(cfg.precision, device)
    ema = ModelEMA(model, cfg.ema_decay) if cfg.ema_decay else None

    step, start_epoch, history, final_dir = 0, 0, [], None
    resumed = checkpointing.resume(ctx, model, opt, scheduler=sched, scaler=scaler, device=device)
    if resumed is not None:
        step, start_epoch, history, final_dir = resumed.step, resumed.next_epoch, resumed.history, resumed.path
        if ema is not None:
            from safetensors.torch import load_file

            ema_file = resumed.path / EMA_FILE
            ema.load_state_dict(
                load_file(str(ema_file), device=str(device)) if ema_file.is_file() else model.state_dict()
            )
    stopper, stopped = EarlyStopping.from_history(history, cfg.early_stop_patience, cfg.early_stop_min_delta)
    if stopped:
        log.info("the resumed run had already stopped early at epoch %s", history[-1]["epoch"])
        start_epoch = cfg.epochs

    net: nn.Module = model
    if ctx.world_size > 1:  # Ray Train has set up the process group (gloo on CPU, NCCL on GPU)
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    run = dict(ctx.run)
    checkpoint_extra = {
        "train": cfg.to_dict(),
        "run": run,
        "classes": classes,
        "image_size": cfg.image_size,
        "mean": cfg.mean,
        "std": cfg.std,
        **dict(extra or {}),
    }
    val_metrics: ClassifyMetrics | None = None
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        rng = np.random.default_rng([cfg.seed, ctx.rank, epoch])
        torch.manual_seed(cfg.seed * 1_000_003 + ctx.rank * 10_007 + epoch)  # dropout, transforms
        net.train()
        loss_sum, seen, correct, scored = 0.0, 0, 0, 0
        for raw in batches(epoch):
            x = _tensor(raw["image"], device, torch.float32)
            y = _tensor(raw["label"], device, torch.long)
            if len(y) < 2:  # BatchNorm cannot train on one image; equal shards skip alike
                continue
            if class_weights is not None:
                idx = torch.as_tensor(weighted_resample(y.cpu().numpy(), class_weights, rng), device=device)
                x, y = x[idx], y[idx]
            if cfg.translate > 0:
                x = random_translate(x, int(round(cfg.translate * x.shape[-1])), rng)
            if batch_transform is not None:
                x, y = batch_transform(model, x, y)
            targets: torch.Tensor = y
            if mixer is not None:
                mixed = mixer(x, y, rng)
                x, targets = mixed.images, mixed.targets
            with autocast():
                logits = net(x)
            if teacher is not None:
                from raylens.classify.distill import distillation_loss

                with torch.no_grad(), autocast():
                    teacher_logits = teacher(x)
                loss = distillation_loss(
                    logits.float(),
                    teacher_logits.float(),
                    targets,
                    temperature=cfg.distill_temperature,
                    alpha=cfg.distill_alpha,
                    label_smoothing=cfg.label_smoothing if targets.ndim == 1 else 0.0,
                )
            else:
                loss = classification_loss(
                    logits,
                    targets,
                    label_smoothing=cfg.label_smoothing if targets.ndim == 1 else 0.0,
                    focal_gamma=cfg.focal_gamma if cfg.imbalance == "focal" else 0.0,
                )
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
            else:
                loss.backward()
            if cfg.grad_clip_norm:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip_norm)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            sched.step()
            step += 1
            if ema is not None:
                ema.update(model, step)
            loss_sum += float(loss.detach()) * len(y)
            seen += len(y)
            if targets.ndim == 1:
                correct += int((logits.detach().argmax(-1) == y).sum())
                scored += len(y)
        if seen == 0:
            raise ValueError(
                f"epoch {epoch} trained on no batch of 2 or more images: give more training images than workers, "
                f"or a batch_size above 1 (got {cfg.batch_size})"
            )
        seconds = time.perf_counter() - t0
        metrics: dict[str, Any] = {
            "step": step,
            "epoch": epoch,
            "loss": loss_sum / seen,
            "lr": sched.get_last_lr()[-1],
            "seconds": seconds,
            "images_per_s": seen * ctx.world_size / max(seconds, 1e-9),
        }
        if scored:
            metrics["train_top1"] = correct / scored
        last = epoch == cfg.epochs - 1
        evaluate_now = (epoch + 1) % cfg.eval_every == 0 or last
        stop = False
        if evaluate_now and val is not None and ctx.rank == 0:
            val_metrics = evaluate_classifier(ema.module if ema is not None else model, val, classes)
            metrics.update({k: v for k, v in val_metrics.to_dict("val_").items() if k in _VAL_KEYS})
            stop = stopper.update(val_metrics.top1, epoch)
            metrics["best_val_top1"] = stopper.best
        if evaluate_now and cfg.early_stop_patience > 0:
            stop = _agree(stop, ctx, device)
        if stop and not last:
            metrics["stopped_early"] = True
            last = True
        history.append(metrics)
        if on_epoch is not None and ctx.rank == 0:
            on_epoch(metrics)
        if checkpointing.checkpoint_due(epoch + 1, cfg.checkpoint_every, last=last):
            kept = checkpointing.report(
                ctx,
                metrics,
                write=functools.partial(
                    _write_checkpoint,
                    model=model,
                    ema=ema,
                    optimizer=opt,
                    scheduler=sched,
                    scaler=scaler,
                    step=step,
                    epoch=epoch,
                    history=history,
                    extra=checkpoint_extra,
                    title=f"{cfg.model}, epoch {epoch + 1}",
                ),
            )
            final_dir = kept or final_dir
        else:
            ctx.report(metrics)
        if last:
            break
    out = ema.module if ema is not None else model
    return ClassifyTrainResult(
        final_dir,
        history,
        step,
        time.perf_counter() - t_start,
        model=out.eval(),
        val_metrics=val_metrics,
        stopped_early=any(h.get("stopped_early") for h in history),
        best_epoch=stopper.best_epoch,
    )


_VAL_KEYS = ("val_loss", "val_top1", "val_top5", "val_f1_macro")


def _write_checkpoint(directory, *, model, ema, title, **kwargs):
    checkpointing.write_checkpoint(directory, model, title=title, **kwargs)
    if ema is not None:
        from raylens.models.checkpoint import save_weights

        save_weights(ema.state_dict(), directory, EMA_FILE)
