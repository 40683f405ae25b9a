"""A small in-memory training loop for compression steps: fine-tune after pruning, distil a student.

Compression works on models that are already trained, on data that fits in memory (a calibration or
fine-tuning set of a few thousand images), in one process: this loop is that and no more. Training
from scratch on a dataset, on several workers, is the training recipe's job (``raylens train classify``).

The loop: AdamW, cosine learning rate with linear warm-up, random shifts (pad + crop) as the only
augmentation, a fixed seed; an optional ``teacher`` turns it into knowledge distillation
(:func:`raylens.classify.distill.distillation_loss`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from raylens.classify.common import IMAGENET_MEAN, IMAGENET_STD, PixelModel, accuracy, check_labels, check_pixels
from raylens.train.optim import adamw, decay_groups, warmup_cosine

__all__ = ["FineTuneConfig", "FineTuneResult", "fine_tune", "random_shift"]


@dataclass
class FineTuneConfig:
    """How :func:`fine_tune` trains."""

    epochs: int = 5
    """Passes over the data."""
    batch_size: int = 64
    """Images per step."""
    lr: float = 2e-3
    """Peak AdamW learning rate."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to biases and norm parameters)."""
    warmup_fraction: float = 0.1
    """Share of the steps with a linear warm-up before the cosine decay."""
    shift: int = 2
    """Random translation in pixels (pad by ``shift``, crop back); 0 turns augmentation off."""
    label_smoothing: float = 0.0
    """Label smoothing of the cross-entropy term."""
    seed: int = 0
    """Seed of the data order, the shifts and any random initialisation done here."""
    mean: tuple[float, float, float] = field(default=IMAGENET_MEAN)
    """The model's input normalisation (the loop is fed [0, 1] pixels)."""
    std: tuple[float, float, float] = field(default=IMAGENET_STD)

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"`{name}` must be an int >= 1, got {v!r}")
        if not self.lr > 0:
            raise ValueError(f"`lr` must be > 0, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ValueError(f"`weight_decay` must be >= 0, got {self.weight_decay!r}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"`warmup_fraction` must be in [0, 1), got {self.warmup_fraction!r}")
        if not isinstance(self.shift, int) or self.shift < 0:
            raise ValueError(f"`shift` must be an int >= 0 (pixels), got {self.shift!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"`label_smoothing` must be in [0, 1), got {self.label_smoothing!r}")


@dataclass
class FineTuneResult:
    """The trained model (the one passed in, trained in place) and what happened."""

    model: torch.nn.Module
    history: list[dict[str, Any]]
    """One row per epoch: ``epoch``, ``loss``, ``train_accuracy``, ``seconds`` (and ``val_accuracy``)."""


def random_shift(x: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``shift`` pixels (zero padding, i.e. black borders)."""
    if shift == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (shift, shift, shift, shift))
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


def fine_tune(
    model: torch.nn.Module,
    pixels: torch.Tensor,
    labels: Sequence[int] | torch.Tensor,
    config: FineTuneConfig | None = None,
    *,
    teacher: torch.nn.Module | None = None,
    temperature: float = 4.0,
    alpha: float = 0.7,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> FineTuneResult:
    """Train ``model`` in place on ``pixels`` (``(N, 3, S, S)`` in [0, 1]) and ``labels``.

    With a ``teacher`` the loss is :func:`~raylens.classify.distill.distillation_loss` at
    ``temperature`` with weight ``alpha`` on the teacher's soft targets; otherwise cross-entropy.
    ``val`` (pixels, labels) adds a ``val_accuracy`` to each epoch's row.
    """
    from raylens.classify.distill import distillation_loss

    cfg = config or FineTuneConfig()
    x = check_pixels(pixels)
    y = check_labels(labels, len(x))
    gen = torch.Generator().manual_seed(cfg.seed)
    net = PixelModel(model, cfg.mean, cfg.std)
    teach = PixelModel(teacher, cfg.mean, cfg.std).eval() if teacher is not None else None
    opt = adamw(decay_groups(model, cfg.weight_decay), lr=cfg.lr)
    steps_per_epoch = max(1, len(x) // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    warm = max(1, int(total * cfg.warmup_fraction))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, warm))
    history: list[dict[str, Any]] = []
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(len(x), generator=gen)
        loss_sum, correct, seen = 0.0, 0, 0
        for s in range(steps_per_epoch):
            idx = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
            xb, yb = random_shift(x[idx], cfg.shift, gen), y[idx]
            out = net(xb)
            if teach is not None:
                with torch.no_grad():
                    t_out = teach(xb)
                loss = distillation_loss(
                    out, t_out, yb, temperature=temperature, alpha=alpha, label_smoothing=cfg.label_smoothing
                )
            else:
                loss = F.cross_entropy(out, yb, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += int((out.argmax(1) == yb).sum())
            seen += len(idx)
        model.eval()
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": loss_sum / seen,
            "train_accuracy": correct / seen,
            "seconds": time.perf_counter() - t0,
        }
        if val is not None:
            row["val_accuracy"] = accuracy(net, check_pixels(val[0], "val pixels"), check_labels(val[1], len(val[0])))
        history.append(row)
    model.eval()
    return FineTuneResult(model, history)
