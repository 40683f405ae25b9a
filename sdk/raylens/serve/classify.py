"""Image classifiers the classification service serves, loaded from a checkpoint directory.

The checkpoint's ``kind`` (``raylens.checkpoint/1``, read by :func:`raylens.models.read_checkpoint`;
older layouts are converted) says what it holds; the model is loaded by :func:`raylens.models.load_model`:

* ``clip``: a zero-shot classifier over class names and prompt templates given in the service config;
* ``classifier``: a supervised classifier (a timm architecture, ``timm/<name>``, or any registered
  ``classifier`` model) whose ``config.json`` also holds ``classes``, ``image_size`` and optionally
  ``mean``/``std``, as written by :func:`save_classifier` / :func:`save_timm_classifier`. It runs on
  PyTorch, or on ONNX Runtime when ``config.json`` says ``"runtime": "onnxruntime"`` (an exported or
  INT8 model, see :mod:`raylens.classify.onnx_export`); both behind the same ``predict``.

Given a checkpoint directory (skipped as a doctest: it needs a trained checkpoint):

>>> clf = load_classifier("ckpt/")                          # doctest: +SKIP
>>> clf.predict([image])[0]["label"]                        # doctest: +SKIP
'circle'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from raylens.errors import CheckpointError

__all__ = [
    "ImageClassifier",
    "ZeroShotClassifier",
    "SupervisedClassifier",
    "load_classifier",
    "warm_up",
    "save_classifier",
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
    backend: str
    """``torch`` or ``onnxruntime``."""
    classes: list[str]
    checkpoint_hash: str
    image_size: int

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
    backend: str = "torch"

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
        self.image_size = int(self.model.preprocess.image_size)

    def predict(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        x = self.model.preprocess.batch(images)
        logits = self._scale * (self.model.encode_images(x) @ self._text.T)
        logits -= logits.max(1, keepdims=True)
        probs = np.exp(logits)
        return _results(probs / probs.sum(1, keepdims=True), self.classes)


class SupervisedClassifier:
    """A ``classifier``-kind model with its classes and preprocessing: images -> class probabilities.

    ``model`` maps ``(N, 3, S, S)`` float images to ``(N, len(classes))`` logits (a tensor, or an
    output with ``.logits`` as transformers models return): a torch module, or an
    :class:`~raylens.classify.onnx_export.OnnxModel`. ``kind`` and ``backend`` are what the service reports.
    """

    def __init__(
        self,
        model: Any,
        classes: list[str],
        image_size: int,
        *,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        checkpoint_hash: str = "untrained",
        kind: str = "classifier",
        backend: str = "torch",
    ):
        from raylens.data.images import ClipPreprocess

        if not isinstance(image_size, int) or not 8 <= image_size <= 1024:
            raise ValueError(f"`image_size` must be an int in [8, 1024], got {image_size!r}")
        self.model = model.eval()
        self.classes = _check_classes(classes)
        self.preprocess = ClipPreprocess(image_size, tuple(mean), tuple(std))
        self.checkpoint_hash = checkpoint_hash
        self.kind = kind
        self.backend = backend
        self.image_size = image_size

    @classmethod
    def from_checkpoint(cls, directory: str | Path, *, threads: int = 1) -> SupervisedClassifier:
        """Load a ``classifier`` checkpoint (its ``classes``, ``image_size``, ``mean``, ``std`` from config.json):
        a PyTorch one with :func:`raylens.models.load_model`, an ONNX one on ONNX Runtime with ``threads`` threads."""
        from raylens.classify.onnx_export import OnnxModel, is_onnx_checkpoint
        from raylens.models import load_model, read_checkpoint

        ck = read_checkpoint(directory)
        if ck.kind != "classifier":
            raise CheckpointError(f"{str(ck.directory)!r} holds a {ck.kind} model, not a classifier")
        cfg = ck.config
        try:
            classes = _check_classes(cfg.get("classes"))
        except ValueError as e:
            raise CheckpointError(f"{str(ck.directory)!r}: config.json {e}") from None
        size = cfg.get("image_size")
        if not isinstance(size, int) or not 8 <= size <= 1024:
            raise CheckpointError(
                f"{str(ck.directory)!r}: config.json `image_size` must be an int in [8, 1024], got {size!r}"
            )
        n = ck.model_config.get("num_classes")
        if n is not None and n != len(classes):
            raise CheckpointError(
                f"{str(ck.directory)!r}: the model has {n} outputs but config.json lists {len(classes)} classes"
            )
        onnx = is_onnx_checkpoint(cfg)
        model = OnnxModel(ck.weights, threads=threads) if onnx else load_model(ck.directory)
        return cls(
            model,
            classes,
            size,
            mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
            std=tuple(cfg.get("std", IMAGENET_STD)),
            checkpoint_hash=ck.checkpoint_hash,
            kind="timm" if ck.arch.startswith("timm/") else "classifier",
            backend="onnxruntime" if onnx else "torch",
        )

    def predict(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        import torch

        with torch.inference_mode():
            out = self.model(torch.from_numpy(self.preprocess.batch(images)))
            logits = getattr(out, "logits", out)
            probs = torch.softmax(logits.float(), dim=-1).numpy()
        return _results(probs, self.classes)


def save_classifier(
    model: Any,
    directory: str | Path,
    *,
    classes: list[str],
    image_size: int,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save a ``classifier`` model (from ``create_model``) with what serving it needs: classes, size, mean/std."""
    from raylens.models import model_record, save_model

    kind = model_record(model).kind
    if kind != "classifier":
        raise ValueError(
            f"save_classifier takes a classifier-kind model, got a {kind} model; use raylens.models.save_model"
        )
    if not isinstance(image_size, int) or not 8 <= image_size <= 1024:
        raise ValueError(f"`image_size` must be an int in [8, 1024], got {image_size!r}")
    cfg: dict[str, Any] = {"classes": _check_classes(classes), "image_size": int(image_size)}
    if mean is not None:
        cfg["mean"] = list(mean)
    if std is not None:
        cfg["std"] = list(std)
    return save_model(model, directory, extra={**cfg, **(extra or {})})


def save_timm_classifier(
    model: Any,
    directory: str | Path,
    *,
    arch: str,
    classes: list[str],
    image_size: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save a timm model (built by ``timm.create_model`` or ``create_model("timm/...")``) as a classifier checkpoint."""
    import timm

    from raylens.models import ModelRecord, attach_record
    from raylens.models.classifiers import TIMM_PREFIX, timm_arch

    if not isinstance(arch, str) or timm_arch(arch) not in timm.list_models():
        raise ValueError(f"`arch` must name a timm model (see timm.list_models()), got {arch!r}")
    classes = _check_classes(classes)
    if getattr(model, "raylens_record", None) is None:
        attach_record(model, ModelRecord("classifier", TIMM_PREFIX + timm_arch(arch), {"num_classes": len(classes)}))
    return save_classifier(model, directory, classes=classes, image_size=image_size, extra=extra)


def load_classifier(
    directory: str | Path,
    *,
    classes: list[str] | None = None,
    templates: list[str] | tuple[str, ...] | None = None,
    threads: int = 1,
) -> ImageClassifier:
    """Open a ``clip`` or ``classifier`` checkpoint; a CLIP one needs ``classes`` (and may take ``templates``).

    A ``classifier`` checkpoint runs on PyTorch, or on ONNX Runtime (``threads`` intra-op threads)
    when its ``config.json`` says ``"runtime": "onnxruntime"``.

    Raises:
        CheckpointError: no checkpoint there, or one of another kind.
        ValueError: a CLIP checkpoint without ``classes``.
    """
    from raylens.models import load_model, read_checkpoint

    ck = read_checkpoint(directory)
    if ck.kind == "classifier":
        return SupervisedClassifier.from_checkpoint(ck.directory, threads=threads)
    if ck.kind != "clip":
        raise CheckpointError(
            f"{str(ck.directory)!r} holds a {ck.kind} model; the classifier serves clip (zero-shot) and classifier checkpoints"
        )
    if not classes:
        raise ValueError(
            f"{str(ck.directory)!r} is a CLIP checkpoint: give `classes` (and optionally `templates`) for zero-shot"
        )
    return ZeroShotClassifier(load_model(ck.directory), list(classes), tuple(templates or DEFAULT_TEMPLATES))


def warm_up(clf: ImageClassifier, batch_sizes: tuple[int, ...] = (1, 8)) -> float:
    """Run ``clf`` on grey dummy images once per batch size (lazy initialisation, first-call kernels and
    allocations happen here, not on a client's request); returns the seconds it took.

    >>> import time
    >>> class Echo:
    ...     image_size = 8
    ...     def predict(self, images): return [{} for _ in images]
    >>> warm_up(Echo()) >= 0
    True
    """
    import time

    size = int(getattr(clf, "image_size", 224))
    t = time.perf_counter()
    for n in batch_sizes:
        out = clf.predict([np.full((size, size, 3), 128, np.uint8)] * int(n))
        if len(out) != n:
            raise RuntimeError(f"warm-up: the classifier returned {len(out)} predictions for {n} images")
    return time.perf_counter() - t
