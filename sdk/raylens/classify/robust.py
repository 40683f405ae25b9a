"""Robustness: FGSM and PGD attacks (L-inf, in pixel units), accuracy under attack, adversarial training.

Written against the model API: any classifier from :func:`raylens.models.create_model` or
:func:`raylens.models.load_model` (a module returning logits, or an output with ``.logits``) with
its mean/std. The attacks themselves are captum's (``captum.robust.FGSM``/``PGD``, with the
cross-entropy loss on logits); torchattacks is not used (its ``requests`` pin conflicts with ours).

``eps`` is an L-inf radius on ``[0, 1]`` pixels: every attacked image stays within ``eps`` of the
original and within ``[0, 1]``, whatever normalisation the model uses.

>>> import torch
>>> from raylens.models import create_model
>>> m = create_model("timm/test_resnet", num_classes=3).eval()
>>> x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
>>> adv = pgd(m, x, y, eps=4 / 255, steps=2)
>>> bool((adv - x).abs().max() <= 4 / 255 + 1e-6), bool(adv.min() >= 0 and adv.max() <= 1)
(True, True)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from raylens.classify.common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PixelModel,
    check_labels,
    check_pixels,
    predict_logits,
)

__all__ = [
    "ATTACKS",
    "AttackResult",
    "PgdBatchTransform",
    "fgsm",
    "pgd",
    "attack",
    "robust_accuracy",
    "pgd_batch_transform",
    "fgsm_batch_transform",
]

ATTACKS = ("fgsm", "pgd")


def _loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # per-sample cross-entropy on logits; ``target`` may be class indices or (MixUp) class probabilities
    return F.cross_entropy(out, target, reduction="none")


def _check_eps(eps: float) -> float:
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 <= eps <= 1:
        raise ValueError(
            f"`eps` is an L-inf radius on [0, 1] pixels and must be in [0, 1] (8/255 = 0.031...), got {eps!r}"
        )
    return float(eps)


class _Eval:
    """Evaluation mode for the attack's forward passes (no BatchNorm statistics updated), restored after;
    captum's note that it made the inputs require gradients (it always must) is silenced."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.was = model, model.training
        self.warnings = warnings.catch_warnings()

    def __enter__(self):
        self.model.eval()
        self.warnings.__enter__()
        warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")

    def __exit__(self, *exc):
        self.warnings.__exit__(*exc)
        self.model.train(self.was)


def fgsm(
    model: torch.nn.Module,
    pixels: torch.Tensor,
    labels: Any,
    eps: float,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Fast gradient sign method: one step of size ``eps`` up the loss gradient's sign, in ``[0, 1]``."""
    from captum.robust import FGSM

    x = check_pixels(pixels)
    y = check_labels(labels, len(x))
    eps = _check_eps(eps)
    with _Eval(model):
        net = PixelModel(model, mean, std)
        return FGSM(net, _loss, lower_bound=0.0, upper_bound=1.0).perturb(x, eps, y).detach()


def pgd(
    model: torch.nn.Module,
    pixels: torch.Tensor,
    labels: Any,
    eps: float,
    *,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Projected gradient descent (Madry et al.): ``steps`` sign steps, each projected back into the
    ``eps`` L-inf ball and ``[0, 1]``; ``step_size`` defaults to ``2.5 * eps / steps``; a random start
    in the ball (torch's global RNG: seed it for repeatable attacks)."""
    from captum.robust import PGD

    x = check_pixels(pixels)
    y = check_labels(labels, len(x))
    eps = _check_eps(eps)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be an int >= 1, got {steps!r}")
    step = 2.5 * eps / steps if step_size is None else float(step_size)
    if step <= 0 and eps > 0:
        raise ValueError(f"`step_size` must be > 0, got {step_size!r}")
    if eps == 0:
        return x.clone()
    with _Eval(model):
        net = PixelModel(model, mean, std)
        attack_ = PGD(net, _loss, lower_bound=0.0, upper_bound=1.0)
        return attack_.perturb(x, eps, step, steps, y, random_start=random_start, norm="Linf").detach()


def attack(
    name: str, model: torch.nn.Module, pixels: torch.Tensor, labels: Any, eps: float, **kwargs: Any
) -> torch.Tensor:
    """Run the attack ``name`` (``"fgsm"`` or ``"pgd"``); ``kwargs`` go to it."""
    if name == "fgsm":
        kwargs.pop("steps", None)
        return fgsm(model, pixels, labels, eps, **kwargs)
    if name == "pgd":
        return pgd(model, pixels, labels, eps, **kwargs)
    raise ValueError(f"unknown attack {name!r}; choose one of {ATTACKS}")


@dataclass
class AttackResult:
    """Accuracy of a model under one attack at one ``eps``."""

    attack: str
    eps: float
    accuracy: float
    """Top-1 accuracy on the attacked images (fraction)."""
    clean_accuracy: float
    """Top-1 accuracy on the same images unattacked."""
    n: int
    """Images attacked."""
    max_linf: float
    """The largest L-inf distance of an attacked image from its original (<= eps, in pixel units)."""
    steps: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def robust_accuracy(
    model: torch.nn.Module,
    pixels: torch.Tensor,
    labels: Any,
    eps: Sequence[float] = (1 / 255, 2 / 255, 4 / 255, 8 / 255),
    *,
    attacks: Sequence[str] = ATTACKS,
    pgd_steps: int = 10,
    batch_size: int = 128,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    seed: int = 0,
) -> list[AttackResult]:
    """Accuracy under each attack at each ``eps`` (one :class:`AttackResult` per pair), on ``pixels``."""
    x = check_pixels(pixels)
    y = check_labels(labels, len(x))
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown or not attacks:
        raise ValueError(f"`attacks` must name some of {ATTACKS}, got {list(attacks)}")
    eps_list = [_check_eps(e) for e in eps]
    if not eps_list:
        raise ValueError("`eps` must list at least one radius, e.g. (2/255, 8/255)")
    net = PixelModel(model, mean, std)
    with _Eval(model):
        clean = float((predict_logits(net, x, batch_size).argmax(1) == y).float().mean())
    out = []
    for name in attacks:
        for e in eps_list:
            torch.manual_seed(seed)
            correct, worst = 0, 0.0
            for i in range(0, len(x), batch_size):
                xb, yb = x[i : i + batch_size], y[i : i + batch_size]
                adv = attack(name, model, xb, yb, e, steps=pgd_steps, mean=mean, std=std)
                with _Eval(model):
                    correct += int((predict_logits(net, adv, batch_size).argmax(1) == yb).sum())
                worst = max(worst, float((adv - xb).abs().max()))
            steps = 1 if name == "fgsm" else pgd_steps
            out.append(AttackResult(name, e, correct / len(x), clean, len(x), worst, steps))
    return out


@dataclass
class PgdBatchTransform:
    """Adversarial training as a batch transform: ``transform(model, x, y) -> (x', y)``.

    ``x`` is a training batch as the model sees it (normalised with ``mean``/``std``); the first
    ``fraction`` of it is replaced by PGD examples against the model as it is now (attacked in eval
    mode, so BatchNorm statistics only see the batch the loop trains on). ``y`` is returned
    unchanged; class indices or MixUp/CutMix class probabilities both work.
    """

    eps: float = 4 / 255
    """L-inf radius on [0, 1] pixels."""
    steps: int = 3
    """PGD steps per batch (each costs a forward and a backward pass)."""
    step_size: float | None = None
    """Step size; default ``2.5 * eps / steps``."""
    fraction: float = 0.5
    """Share of each batch replaced by adversarial examples (1.0: all of it)."""
    random_start: bool = True
    """Start from a random point of the eps ball (PGD); False with one step of size eps is FGSM."""
    mean: tuple[float, float, float] = field(default=IMAGENET_MEAN)
    """The normalisation the loop applied to ``x``."""
    std: tuple[float, float, float] = field(default=IMAGENET_STD)

    def __post_init__(self):
        self.mean, self.std = tuple(float(v) for v in self.mean), tuple(float(v) for v in self.std)
        _check_eps(self.eps)
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"`steps` must be an int >= 1, got {self.steps!r}")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"`fraction` must be in (0, 1], got {self.fraction!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"`mean` and `std` need 3 values with std > 0, got {self.mean}, {self.std}")

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from captum.robust import PGD

        from raylens.models.registry import unwrap_model

        k = max(1, round(len(x) * self.fraction))
        inner = unwrap_model(model)  # attack the bare module: no DDP gradient sync for input gradients
        net = PixelModel(inner, self.mean, self.std).to(x.device)
        pixels = net.pixels(x[:k].detach().float()).clamp(0, 1)
        target = y[:k]
        if target.dtype.is_floating_point and target.ndim == 1:
            target = target.long()
        step = 2.5 * self.eps / self.steps if self.step_size is None else self.step_size
        with _Eval(inner):
            adv = PGD(net, _loss, lower_bound=0.0, upper_bound=1.0).perturb(
                pixels, self.eps, step, self.steps, target, random_start=self.random_start, norm="Linf"
            )
        x = x.clone()
        x[:k] = net.normalize(adv.detach()).to(x.dtype)
        return x, y


def pgd_batch_transform(eps: float = 4 / 255, **options: Any) -> PgdBatchTransform:
    """A :class:`PgdBatchTransform` for a training recipe's ``batch_transform`` hook (see its fields).

    Registered as the batch transform ``pgd`` of ``raylens train classify`` (``adversarial: pgd``,
    ``adversarial_args: {eps: 0.03, steps: 3}``).
    """
    return PgdBatchTransform(eps=eps, **options)


def fgsm_batch_transform(eps: float = 4 / 255, **options: Any) -> PgdBatchTransform:
    """FGSM adversarial training (one step of size ``eps``, no random start): the batch transform ``fgsm``."""
    options = {k: v for k, v in options.items() if k not in ("steps", "step_size", "random_start")}
    return PgdBatchTransform(eps=eps, steps=1, step_size=eps, random_start=False, **options)
