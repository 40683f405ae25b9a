"""Image classifiers the classification service serves, loaded from a checkpoint directory.

Two kinds, told apart by the directory's ``config.json``:

* a raylens CLIP checkpoint (``config.json`` has ``"model"``): a zero-shot classifier over class
  names and prompt templates given in the service config;
* a timm classifier (``config.json`` is ``{"arch": <timm name>, "classes": [...], "image_size": N}``
  beside ``model.safetensors``), as written by :func:`save_timm_classifier`.

>>> clf = load_classifier("ckpt/")                          # doctest: +SKIP
>>> clf.predict([image])[0]["label"]                        # doctest: +SKIP
'circle'
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from raylens.errors import CheckpointError

__all__ = [
    "ImageClassifier",
    "ZeroShotClassifier",
    "TimmClassifier",
    "load_classifier",
    "save_timm_classifier",
    "DEFAULT_TEMPLATES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

DEFAULT_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "{}")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_CLASSES = 10_000


class ImageClassifier(Protocol):
    kind: str
    classes: list[str]
    checkpoint_hash: str

    def predict(self, images: list[np.ndarray]) -> list[dict[str, Any]]: ...


def _results(probs: np.ndarray, classes: list[str], top: int = 5) -> list[dict[str, Any]]:
    out = []
    for row in probs:
        order = np.argsort(-row)[:top]
        out.append(
            {
                "label": classes[int(order[0])],
                "score": float(row[order[0]]),
                "top": [{"label": classes[int(i)], "score": float(row[i])} for i in order],
                "probabilities": {c: float(p) for c, p in zip(classes, row)} if len(classes) <= 100 else None,
            }
        )
    return out


def _check_classes(classes: Any) -> list[str]:
    if (
        not isinstance(classes, (list, tuple))
        or not classes
        or len(classes) > MAX_CLASSES
        or not all(isinstance(c, str) and c.strip() for c in classes)
        or len(set(classes)) != len(classes)
    ):
        raise ValueError(f"`classes` must be 1..{MAX_CLASSES} distinct non-empty strings, got {classes!r}")
    return list(classes)


@dataclass
class ZeroShotClassifier:
    """A CLIP model scoring images against ``template.format(class)`` prompts (averaged per class)."""

    model: Any
    """A :class:`raylens.models.ClipModel`."""
    classes: list[str]
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    kind: str = "clip-zero-shot"

    def __post_init__(self):
        self.classes = _check_classes(self.classes)
        if not self.templates or not all(isinstance(t, str) and "{}" in t for t in self.templates):
            raise ValueError(f"`templates` must be strings holding '{{}}' for the class name, got {self.templates!r}")
        per_class = []
        for c in self.classes:
            e = self.model.encode_texts([t.format(c) for t in self.templates]).mean(0)
            per_class.append(e / max(np.linalg.norm(e), 1e-12))
        self._text = np.stack(per_class).astype(np.float32)
        scale = getattr(self.model.model, "logit_scale", None)
        self._scale = float(min(100.0, np.exp(float(scale.detach())))) if scale is not None else 100.0
        self.checkpoint_hash = self.model.checkpoint_hash

    def predict(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        x = self.model.preprocess.batch(images)
        logits = self._scale * (self.model.encode_images(x) @ self._text.T)
        logits -= logits.max(1, keepdims=True)
        probs = np.exp(logits)
        return _results(probs / probs.sum(1, keepdims=True), self.classes)


class TimmClassifier:
    """A timm image classifier restored from ``model.safetensors`` + ``config.json`` (no downloads)."""

    kind = "timm"

    def __init__(self, directory: str | Path):
        import timm
        import torch
        from safetensors.torch import load_file

        from raylens.data.images import ClipPreprocess
        from raylens.models.clip import CONFIG_FILE, WEIGHTS_FILE, file_sha256

        d = Path(directory)
        cfg = json.loads((d / CONFIG_FILE).read_text())
        arch, size = cfg.get("arch"), cfg.get("image_size")
        if not isinstance(arch, str) or arch not in timm.list_models():
            raise CheckpointError(f"{str(d)!r}: config.json `arch` must name a timm model, got {arch!r}")
        if not isinstance(size, int) or not 8 <= size <= 1024:
            raise CheckpointError(f"{str(d)!r}: config.json `image_size` must be an int in [8, 1024], got {size!r}")
        self.classes = _check_classes(cfg.get("classes"))
        self.model = timm.create_model(arch, pretrained=False, num_classes=len(self.classes))
        try:
            self.model.load_state_dict(load_file(str(d / WEIGHTS_FILE)))
        except (RuntimeError, OSError) as e:
            raise CheckpointError(
                f"{str(d)!r}: weights do not fit {arch} with {len(self.classes)} classes ({e})"
            ) from e
        self.model.eval()
        self.preprocess = ClipPreprocess(
            size, tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
        )
        self.arch = arch
        self.checkpoint_hash = file_sha256(d / WEIGHTS_FILE)
        self._torch = torch

    def predict(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        torch = self._torch
        with torch.inference_mode():
            logits = self.model(torch.from_numpy(self.preprocess.batch(images)))
            probs = torch.softmax(logits.float(), dim=-1).numpy()
        return _results(probs, self.classes)


def save_timm_classifier(
    model: Any,
    directory: str | Path,
    *,
    arch: str,
    classes: list[str],
    image_size: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a timm model as a checkpoint :class:`TimmClassifier` (and the service) can load."""
    from safetensors.torch import save_file

    from raylens.models.clip import CONFIG_FILE, WEIGHTS_FILE

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(d / WEIGHTS_FILE))
    cfg = {"arch": arch, "classes": _check_classes(classes), "image_size": int(image_size), **(extra or {})}
    (d / CONFIG_FILE).write_text(json.dumps(cfg, indent=2))
    return d


def load_classifier(
    directory: str | Path, *, classes: list[str] | None = None, templates: list[str] | tuple[str, ...] | None = None
) -> ImageClassifier:
    """Open a classifier checkpoint directory; a CLIP checkpoint needs ``classes`` (and may take ``templates``)."""
    from raylens.models.clip import CONFIG_FILE

    d = Path(directory)
    if not (d / CONFIG_FILE).is_file():
        raise CheckpointError(f"{str(d)!r} has no {CONFIG_FILE}; point at a raylens CLIP or timm classifier checkpoint")
    cfg = json.loads((d / CONFIG_FILE).read_text())
    if "arch" in cfg:
        return TimmClassifier(d)
    if "model" not in cfg:
        raise CheckpointError(f"{str(d)!r}: config.json has neither `arch` (timm) nor `model` (raylens CLIP)")
    if not classes:
        raise ValueError(f"{str(d)!r} is a CLIP checkpoint: give `classes` (and optionally `templates`) for zero-shot")
    from raylens.models import create_model

    model = create_model(cfg["model"]["name"], pretrained=str(d))
    return ZeroShotClassifier(model, list(classes), tuple(templates or DEFAULT_TEMPLATES))
