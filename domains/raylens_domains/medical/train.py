"""The plain training loop for the fusion models, plus checkpoints and batch prediction.

:func:`train_fusion` trains one registered model (``early``, ``mid``, ``late``, ``ct_only``,
``mr_only``) on model-ready arrays (:data:`~raylens_domains.medical.transforms.FUSION_COLUMNS`) or on
any ``epoch -> iterable of batches`` callable, on a :class:`~raylens.train.TrainContext` like every
raylens loop: :class:`~raylens.train.LocalContext` in-process, ``raylens.train.ray_fit.RayContext``
inside Ray Train (:mod:`.ray_train`, through the one wrapper ``raylens.train.ray_fit.fit``). With
``ctx.world_size > 1`` the model is wrapped in DDP. It resumes, checkpoints (every
``checkpoint_every`` epochs and at the end) and writes its history and curves through
:mod:`raylens.train.checkpointing`, as every loop does.

Modality dropout: with probability ``modality_dropout`` a case that has both modalities loses one
(chosen at random) for that step: its volumes are zeroed and its ``present`` flag cleared, so mid and
late fusion learn to predict from whichever modality is there.

Checkpoints are ``raylens.checkpoint/1`` directories (``model.safetensors`` + ``config.json`` with the
model's and the training config), written by :func:`raylens.models.save_model` and read by
:func:`raylens.models.load_model`; :func:`save_checkpoint`/:func:`load_checkpoint` are thin calls to them.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from raylens.errors import CheckpointError
from raylens.models import create_model, list_models, load_model, read_checkpoint, save_model
from raylens.train import checkpointing
from raylens.train.context import TrainContext
from raylens.train.optim import adamw
from raylens.train.result import TrainResult

from .metrics import BinaryMetrics, binary_metrics

__all__ = [
    "FusionTrainConfig",
    "FusionTrainResult",
    "ArrayBatches",
    "train_fusion",
    "apply_modality_dropout",
    "predict_proba",
    "evaluate",
    "save_checkpoint",
    "load_checkpoint",
    "MODEL_INPUT_KEYS",
]

MODEL_INPUT_KEYS = ("ct", "mr_aligned", "mr", "present")
"""The batch columns a fusion model reads; ``label`` is the target."""


@dataclass
class FusionTrainConfig:
    """One fusion training run (the model, the optimisation, the checkpoint cadence)."""

    model: str = "early"
    """Registered model name: early, mid, late, ct_only, mr_only."""
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra arguments of the model factory (e.g. ``{"fuse": "concat", "fuse_stage": "layer2"}``)."""
    epochs: int = 12
    """Passes over the training data (every worker runs all of them)."""
    batch_size: int = 16
    """Cases per worker per step."""
    lr: float = 3e-3
    """AdamW learning rate (cosine-decayed to 5% over the run)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    modality_dropout: float = 0.0
    """Probability that a two-modality case loses one modality for a step (mid/late: try 0.2)."""
    member_loss_weight: float = 0.5
    """Late fusion: weight of the per-member losses added to the combined loss."""
    augment: bool = True
    """Random flips along each axis (the same flips for every volume of a case)."""
    seed: int = 0
    """Seeds the weights, the data order and the dropout/augment draws (per epoch and rank, so a resumed
    run draws what an uninterrupted one would)."""
    checkpoint_every: int = 0
    """Also checkpoint every N epochs (0: only at the end); a run resumes from its latest checkpoint."""

    def __post_init__(self):
        if self.model not in list_models(kind="fusion"):
            raise ValueError(f"model must be one of {list_models(kind='fusion')}, got {self.model!r}")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"`lr` must be > 0, got {self.lr}; typical values are 1e-4 to 5e-3")
        if self.weight_decay < 0:
            raise ValueError(f"`weight_decay` must be >= 0, got {self.weight_decay}")
        if self.member_loss_weight < 0:
            raise ValueError(
                f"`member_loss_weight` must be >= 0 (0 = combined loss only), got {self.member_loss_weight}"
            )
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
            raise ValueError(
                f"`checkpoint_every` must be >= 0 epochs (0 = only at the end), got {self.checkpoint_every!r}"
            )
        if not 0.0 <= self.modality_dropout < 1.0:
            raise ValueError(f"`modality_dropout` must be in [0, 1), got {self.modality_dropout}")
        if self.modality_dropout > 0 and self.model in ("ct_only", "mr_only"):
            raise ValueError("`modality_dropout` needs a fusion model; set it to 0 for ct_only/mr_only")


@dataclass
class FusionTrainResult(TrainResult):
    """What :func:`train_fusion` returns: the run (checkpoint, history, steps) plus the trained model.

    ``history`` has one row per epoch: step, epoch, loss, lr, seconds, and ``val_auc``/``val_accuracy``/
    ``val_f1`` when a val set was given (on rank 0)."""

    model: nn.Module | None = None
    """The trained model (unwrapped from DDP), in eval mode after the last validation."""
    config: FusionTrainConfig | None = None
    val_metrics: BinaryMetrics | None = None
    """The last validation's metrics (None without a val set, or on ranks other than 0)."""


class ArrayBatches:
    """``epoch -> batches`` over a dict of equal-length arrays, shuffled per epoch by seed."""

    def __init__(self, arrays: Mapping[str, np.ndarray], batch_size: int, *, shuffle: bool = True, seed: int = 0):
        lens = {k: len(v) for k, v in arrays.items()}
        if len(set(lens.values())) != 1:
            raise ValueError(f"arrays need one length, got {lens}")
        self.arrays, self.batch_size, self.shuffle, self.seed = arrays, batch_size, shuffle, seed
        self.n = next(iter(lens.values()))

    def __call__(self, epoch: int) -> Iterable[dict[str, np.ndarray]]:
        idx = np.random.default_rng([self.seed, epoch]).permutation(self.n) if self.shuffle else np.arange(self.n)
        for i in range(0, self.n, self.batch_size):
            j = idx[i : i + self.batch_size]
            yield {k: v[j] for k, v in self.arrays.items()}


def _to_tensors(batch: Mapping[str, Any], device) -> dict[str, torch.Tensor]:
    out = {}
    for k in (*MODEL_INPUT_KEYS, "label"):
        if k in batch:
            v = batch[k]
            if not isinstance(v, torch.Tensor):
                v = np.asarray(v)
                # Ray hands out read-only views of its object store; torch wants writable memory
                v = torch.from_numpy(v if v.flags.writeable else v.copy())
            out[k] = v.to(device)
    return out


def apply_modality_dropout(batch: dict[str, torch.Tensor], p: float, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Drop CT or MR (never both) from each two-modality case with probability ``p``."""
    if p <= 0:
        return batch
    present = batch["present"].float().clone()
    both = (present.sum(dim=1) >= 2).cpu()
    drop = (torch.rand(len(both), generator=gen) < p) & both
    which = torch.randint(0, 2, (len(both),), generator=gen)
    out = dict(batch)
    for m, keys in ((0, ("ct",)), (1, ("mr", "mr_aligned"))):
        sel = (drop & (which == m)).to(present.device)
        if not sel.any():
            continue
        present[sel, m] = 0
        for k in keys:
            if k in out:
                x = out[k].clone()
                x[sel] = 0
                out[k] = x
    out["present"] = present
    return out


def _augment(batch: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, torch.Tensor]:
    flips = [d for d in (1, 2, 3) if torch.rand(1, generator=gen).item() < 0.5]
    if not flips:
        return batch
    out = dict(batch)
    for k in ("ct", "mr", "mr_aligned"):
        if k in out:
            out[k] = torch.flip(out[k], dims=flips)
    return out


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def _loss(model: nn.Module, batch: dict[str, torch.Tensor], cfg: FusionTrainConfig) -> torch.Tensor:
    y = batch["label"].float()
    bce = nn.functional.binary_cross_entropy_with_logits
    base = _unwrap(model)
    if base.kind == "late" and cfg.member_loss_weight > 0:
        # the combined loss plus each present member's own loss, from one forward (DDP-safe)
        fused, members = model(batch, return_members=True)
        p = batch["present"].float()
        loss = bce(fused, y)
        m_loss = (bce(members, y[:, None].expand_as(members), reduction="none") * p).sum() / p.sum().clamp(min=1)
        return loss + cfg.member_loss_weight * m_loss
    return bce(model(batch), y)


def _epoch_seed(seed: int, rank: int, epoch: int) -> int:
    return (seed * 1_000_003 + rank * 10_007 + epoch) % (2**63)


def _lr(config: FusionTrainConfig, epoch: int) -> float:
    """Cosine decay per epoch to 5% of ``lr`` (the steps per epoch may be unknown for streamed data)."""
    return float(config.lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * epoch / config.epochs))))


def train_fusion(
    config: FusionTrainConfig,
    batches: Mapping[str, np.ndarray] | Callable[[int], Iterable[Mapping[str, Any]]],
    ctx: TrainContext,
    val: Mapping[str, np.ndarray] | None = None,
    *,
    model: nn.Module | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> FusionTrainResult:
    """Train one fusion model on ``ctx``: plain PyTorch, in-process or as a Ray Train worker's loop.

    Args:
        config: the run.
        batches: model-ready arrays (``ct``, ``mr_aligned``, ``mr``, ``present``, ``label``), or a
            callable giving an iterable of such batches for each epoch (a Ray Data shard, say).
        ctx: where it runs (``LocalContext(storage=...)`` in-process; ``RayContext`` on Ray). Calling
            again with a context that has a checkpoint resumes: weights, optimizer, epoch, history.
        val: optional arrays scored on rank 0 after every epoch (AUC, accuracy, F1 join the history).
        model: a model to start from (default: a new ``config.model``).
        on_epoch: called on rank 0 with each epoch's metrics (progress printing).
        extra: more ``config.json`` keys for every checkpoint (the preprocessing ``transform``, say).

    Returns:
        The last checkpoint, the history (resumed epochs included) and the trained model.
    """
    if not isinstance(config, FusionTrainConfig):
        raise TypeError(f"config must be a FusionTrainConfig, got {type(config).__name__}")
    t_start = time.perf_counter()
    torch.manual_seed(config.seed)
    device = torch.device(ctx.device)
    if model is None:
        model = create_model(config.model, **config.model_kwargs)
    model = _unwrap(model).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(params, lr=config.lr, weight_decay=config.weight_decay)
    step, start_epoch, history, final_dir = 0, 0, [], None
    resumed = checkpointing.resume(ctx, model, opt, device=device)
    if resumed is not None:
        step, start_epoch, history, final_dir = resumed.step, resumed.next_epoch, resumed.history, resumed.path
    net: nn.Module = model
    if ctx.world_size > 1:  # Ray Train has set up the process group (gloo on CPU, NCCL on GPU)
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    if isinstance(batches, Mapping):
        batches = ArrayBatches(batches, config.batch_size, seed=config.seed)
    checkpoint_extra = {"train": asdict(config), "run": dict(ctx.run), **(extra or {})}
    val_metrics = None
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        seed = _epoch_seed(config.seed, ctx.rank, epoch)
        torch.manual_seed(seed)  # head dropout
        gen = torch.Generator().manual_seed(seed)  # modality dropout, flips
        net.train()
        total, count = 0.0, 0
        lr = _lr(config, epoch)
        for g in opt.param_groups:
            g["lr"] = lr
        for raw in batches(epoch):
            batch = _to_tensors(raw, device)
            if len(batch["label"]) < 2:  # BatchNorm cannot train on one case; equal shards skip alike
                continue
            if config.modality_dropout > 0:
                batch = apply_modality_dropout(batch, config.modality_dropout, gen)
            if config.augment:
                batch = _augment(batch, gen)
            loss = _loss(net, batch, config)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            total += float(loss.detach()) * len(batch["label"])
            count += len(batch["label"])
        if count == 0:
            raise ValueError(
                f"epoch {epoch} trained on no batch of 2 or more cases: give more training cases than "
                f"workers, or a batch_size above 1 (got {config.batch_size})"
            )
        rec: dict[str, Any] = {
            "step": step,
            "epoch": epoch,
            "loss": total / count,
            "lr": lr,
            "seconds": time.perf_counter() - t0,
        }
        if val is not None and ctx.rank == 0:
            val_metrics = evaluate(model, val, batch_size=config.batch_size * 2, device=device)
            rec.update(val_auc=val_metrics.auc, val_accuracy=val_metrics.accuracy, val_f1=val_metrics.f1)
        history.append(rec)
        if on_epoch is not None and ctx.rank == 0:
            on_epoch(rec)
        last = epoch == config.epochs - 1
        if checkpointing.checkpoint_due(epoch + 1, config.checkpoint_every, last=last):
            kept = checkpointing.report(
                ctx,
                rec,
                write=functools.partial(
                    checkpointing.write_checkpoint,
                    model=model,
                    optimizer=opt,
                    step=step,
                    epoch=epoch,
                    history=history,
                    extra=checkpoint_extra,
                    title=f"{config.model} fusion, epoch {epoch + 1}/{config.epochs}",
                ),
            )
            final_dir = kept or final_dir
        else:
            ctx.report(rec)
    if val_metrics is None and val is not None and ctx.rank == 0:  # resumed at the end: score what was loaded
        val_metrics = evaluate(model, val, batch_size=config.batch_size * 2, device=device)
    model.eval()
    return FusionTrainResult(
        checkpoint=final_dir,
        history=history,
        steps=step,
        seconds=time.perf_counter() - t_start,
        model=model,
        config=config,
        val_metrics=val_metrics,
    )


@torch.no_grad()
def predict_proba(
    model: nn.Module,
    arrays: Mapping[str, np.ndarray],
    *,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    present: tuple[bool, bool] | None = None,
) -> np.ndarray:
    """Probabilities for every case. ``present=(ct, mr)`` forces a modality mask (e.g. MR missing)."""
    device = torch.device(device or next(model.parameters()).device)
    model.eval()
    keys = [k for k in MODEL_INPUT_KEYS if k in arrays]
    n = len(arrays[keys[0]])
    out = []
    for i in range(0, n, batch_size):
        b = {k: np.asarray(arrays[k][i : i + batch_size]) for k in keys}
        if present is not None:
            mask = np.asarray(present, dtype=np.float32)
            b["present"] = np.broadcast_to(mask, (len(b[keys[0]]), 2)).copy()
            for m, ks in ((0, ("ct",)), (1, ("mr", "mr_aligned"))):
                if not present[m]:
                    for k in ks:
                        if k in b:
                            b[k] = np.zeros_like(b[k])
        t = _to_tensors(b, device)
        out.append(torch.sigmoid(model(t)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def evaluate(
    model: nn.Module,
    arrays: Mapping[str, np.ndarray],
    *,
    batch_size: int = 32,
    device=None,
    present: tuple[bool, bool] | None = None,
) -> BinaryMetrics:
    """AUC / accuracy / F1 of ``model`` on labelled arrays (rows with label -1 are left out)."""
    y = np.asarray(arrays["label"]).astype(int)
    keep = y >= 0
    sub = {k: np.asarray(v)[keep] for k, v in arrays.items() if k in (*MODEL_INPUT_KEYS, "label")}
    probs = predict_proba(model, sub, batch_size=batch_size, device=device, present=present)
    return binary_metrics(y[keep], probs)


def save_checkpoint(
    model: nn.Module,
    directory: str | Path,
    *,
    train_config: FusionTrainConfig | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save a fusion model as a ``raylens.checkpoint/1`` directory (``train`` = the training config)."""
    return save_model(
        _unwrap(model), directory, extra={"train": asdict(train_config) if train_config else None, **(extra or {})}
    )


def load_checkpoint(directory: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """Load a fusion checkpoint (format 1 or the older layout) with :func:`raylens.models.load_model`."""
    kind = read_checkpoint(directory).kind
    if kind != "fusion":
        raise CheckpointError(f"{directory} holds a {kind} model, not a fusion model; use raylens.models.load_model")
    return load_model(directory, device=device)
