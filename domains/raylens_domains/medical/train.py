"""The plain training loop for the fusion models, plus checkpoints and batch prediction.

:func:`train_fusion` trains one registered model (``early``, ``mid``, ``late``, ``ct_only``,
``mr_only``) on model-ready arrays (:data:`~raylens_domains.medical.transforms.FUSION_COLUMNS`) or on
any ``epoch -> iterable of batches`` callable. It knows nothing about Ray: the Ray Train wrapper
(:mod:`.ray_train`) passes Ray Data shards as the batch source, ``prepare_model`` as ``wrap_model``
and a ``report`` callback that calls ``ray.train.report`` with a checkpoint.

Modality dropout: with probability ``modality_dropout`` a case that has both modalities loses one
(chosen at random) for that step: its volumes are zeroed and its ``present`` flag cleared, so mid and
late fusion learn to predict from whichever modality is there.

Checkpoints are a directory with ``model.safetensors`` and ``config.json`` (the model's and the
training config), loaded with :func:`load_checkpoint`; nothing is unpickled.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from raylens.errors import CheckpointError

from .fusion import FUSION_MODELS, create_fusion_model
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
    """One training run."""

    model: str = "early"
    """Registered model name: early, mid, late, ct_only, mr_only."""
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra arguments of the model factory (e.g. ``{"fuse": "concat", "fuse_stage": "layer2"}``)."""
    epochs: int = 12
    batch_size: int = 16
    lr: float = 3e-3
    """AdamW learning rate (cosine-decayed to 5% over the run)."""
    weight_decay: float = 1e-4
    modality_dropout: float = 0.0
    """Probability that a two-modality case loses one modality for a step (mid/late: try 0.2)."""
    member_loss_weight: float = 0.5
    """Late fusion: weight of the per-member losses added to the combined loss."""
    augment: bool = True
    """Random flips along each axis (the same flips for every volume of a case)."""
    seed: int = 0

    def __post_init__(self):
        if self.model not in FUSION_MODELS:
            raise ValueError(f"model must be one of {FUSION_MODELS.names()}, got {self.model!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.modality_dropout < 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1), got {self.modality_dropout}")
        if self.modality_dropout > 0 and self.model in ("ct_only", "mr_only"):
            raise ValueError("modality_dropout needs a fusion model; set it to 0 for ct_only/mr_only")


@dataclass
class FusionTrainResult:
    """What :func:`train_fusion` returns."""

    model: nn.Module
    config: FusionTrainConfig
    history: list[dict[str, float]]
    """Per epoch: loss, seconds, and val metrics when a val set was given."""
    val_metrics: BinaryMetrics | None = None


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


def train_fusion(
    config: FusionTrainConfig,
    train: Mapping[str, np.ndarray] | Callable[[int], Iterable[Mapping[str, Any]]],
    val: Mapping[str, np.ndarray] | None = None,
    *,
    model: nn.Module | None = None,
    wrap_model: Callable[[nn.Module], nn.Module] | None = None,
    report: Callable[[int, dict[str, float], nn.Module], None] | None = None,
    device: str | torch.device | None = None,
) -> FusionTrainResult:
    """Train one fusion model. Plain PyTorch: unit-testable, and what :mod:`.ray_train` runs per worker.

    Args:
        config: the run.
        train: model-ready arrays (``ct``, ``mr_aligned``, ``mr``, ``present``, ``label``), or a
            callable giving an iterable of such batches for each epoch (a Ray Data shard, say).
        val: optional arrays scored after every epoch.
        model: a model to continue from (default: a new ``config.model``).
        wrap_model: applied to the model before training (``ray.train.torch.prepare_model``).
        report: called as ``report(epoch, metrics, model)`` after every epoch.
        device: default CUDA when available, else CPU.
    """
    if not isinstance(config, FusionTrainConfig):
        raise TypeError(f"config must be a FusionTrainConfig, got {type(config).__name__}")
    torch.manual_seed(config.seed)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if model is None:
        model = create_fusion_model(config.model, **config.model_kwargs)
    model = model.to(device)
    if wrap_model is not None:
        model = wrap_model(model)
    batches = ArrayBatches(train, config.batch_size, seed=config.seed) if isinstance(train, Mapping) else train
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, float]] = []
    val_metrics = None
    for epoch in range(config.epochs):
        t0 = time.perf_counter()
        model.train()
        total, count = 0.0, 0
        # cosine decay per epoch (the number of steps per epoch may be unknown for streamed data)
        lr = config.lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * epoch / config.epochs)))
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
            loss = _loss(model, batch, config)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(batch["label"])
            count += len(batch["label"])
        rec = {"epoch": epoch, "loss": total / max(count, 1), "lr": lr, "seconds": time.perf_counter() - t0}
        if val is not None:
            val_metrics = evaluate(_unwrap(model), val, batch_size=config.batch_size * 2, device=device)
            rec.update(val_auc=val_metrics.auc, val_accuracy=val_metrics.accuracy, val_f1=val_metrics.f1)
        history.append(rec)
        if report is not None:
            report(epoch, rec, _unwrap(model))
    return FusionTrainResult(model=_unwrap(model), config=config, history=history, val_metrics=val_metrics)


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
    """Write ``model.safetensors`` + ``config.json`` into ``directory`` (created if needed)."""
    from safetensors.torch import save_file

    model = _unwrap(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"))
    cfg = {"model": model.config_dict(), "train": asdict(train_config) if train_config else None, **(extra or {})}
    (directory / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
    return directory


def load_checkpoint(directory: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model from ``config.json`` and load ``model.safetensors`` (no pickle)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg_path, w_path = directory / "config.json", directory / "model.safetensors"
    if not cfg_path.is_file() or not w_path.is_file():
        raise CheckpointError(f"{directory} is not a fusion checkpoint (needs config.json and model.safetensors)")
    cfg = json.loads(cfg_path.read_text())["model"]
    name = cfg.pop("name")
    model = create_fusion_model(name, **cfg)
    missing, unexpected = model.load_state_dict(load_file(str(w_path), device=str(device)), strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint in {directory} does not match model {name!r}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.to(device).eval()
