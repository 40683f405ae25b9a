"""Image classifiers (kind ``classifier``): every timm architecture as ``timm/<name>``.

``create_model("timm/resnet18", num_classes=10)`` builds a randomly initialised timm model (no
download: ``pretrained`` is a raylens checkpoint or weights file, loaded from disk; a head of another
size needs ``reset_head=True``). Our own classifiers register on import of this module: ``small_cnn``
(:mod:`~raylens.models.cnn`), ``small_resnet`` (:mod:`~raylens.models.resnet`), ``vit`` and
``vit_tiny`` (transformers, :mod:`~raylens.models.vit`); :mod:`~raylens.models.classifier_hub` resolves
any classifier source (name, timm name, transformers folder, raylens checkpoint). Registered
classifiers join with ``@register_model(name, kind="classifier")`` on a factory returning a
``torch.nn.Module`` whose ``forward`` maps ``(N, 3, S, S)`` images to ``(N, classes)`` logits.

>>> from raylens.models import create_model
>>> m = create_model("timm/test_resnet", num_classes=3)
>>> m(example_input(m)).shape
torch.Size([2, 3])
"""

from __future__ import annotations

from typing import Any

import torch

from raylens.models.registry import ModelFamily, register_family

__all__ = ["TIMM_FAMILY", "TIMM_PREFIX", "example_input", "timm_arch"]

TIMM_PREFIX = "timm/"


def timm_arch(name: str) -> str:
    """The timm architecture behind a ``timm/<name>`` model name (``timm/resnet18`` -> ``resnet18``)."""
    return name[len(TIMM_PREFIX) :] if name.startswith(TIMM_PREFIX) else name


def _names() -> list[str]:
    import timm

    return [TIMM_PREFIX + n for n in timm.list_models()]


def _create(name: str, pretrained: str | None = None, reset_head: bool = False, **overrides: Any) -> torch.nn.Module:
    import timm

    from raylens.models.classifier_hub import finish_classifier, load_pretrained

    model = timm.create_model(timm_arch(name), pretrained=False, **overrides)
    if pretrained is not None:
        # a head of another size is an error naming both sizes, unless reset_head
        load_pretrained(model, pretrained, reset_head=reset_head)
    return finish_classifier(model, name, overrides)


def example_input(model: torch.nn.Module, n: int = 2) -> torch.Tensor:
    """``(n, 3, S, S)`` random images: 32 px, or the model's own size when it needs a fixed one."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    shape = tuple(cfg["input_size"]) if cfg.get("fixed_input_size") and "input_size" in cfg else (3, 32, 32)
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(0))


TIMM_FAMILY = register_family(
    ModelFamily(
        name="timm",
        kind="classifier",
        names=_names,
        create=_create,
        doc="timm architecture, randomly initialised (num_classes=..., pretrained= a local checkpoint)",
        example_input=example_input,
    )
)

# our own classifiers register themselves on import (after the timm family: they use its helpers)
from raylens.models import cnn, resnet, vit  # noqa: E402, F401
