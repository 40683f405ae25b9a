"""Classifier evaluation the way papers report it: top-1/top-5, precision/recall/F1 (macro and micro),
a per-class CSV and a confusion-matrix PNG.

:func:`evaluate_classifier` runs a model over labelled images (arrays, or an iterable of batches such
as a Ray dataset's ``iter_batches``) and returns :class:`ClassifyMetrics`; :func:`classification_metrics`
computes the same from logits (or scores) and labels, with no model.

>>> import numpy as np
>>> m = classification_metrics(np.array([[2.0, 0.1, 0.0], [0.0, 1.0, 3.0], [0.0, 2.0, 1.0]]), [0, 1, 1])
>>> round(m.top1, 3), round(m.f1_macro, 3), m.confusion.tolist()
(0.667, 0.556, [[1, 0, 0], [0, 1, 1], [0, 0, 0]])
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "ClassifyMetrics",
    "classification_metrics",
    "evaluate_classifier",
    "predict_logits",
    "write_per_class_csv",
    "write_confusion_png",
]


@dataclass
class ClassifyMetrics:
    """A classifier's scores on one labelled set."""

    n: int
    """Images scored."""
    top1: float
    """Share whose highest-scoring class is the label (= micro precision, recall and F1)."""
    top5: float
    """Share whose label is among the ``min(5, classes)`` highest-scoring classes."""
    precision_macro: float
    """Precision averaged over classes (a class never predicted counts 0, as scikit-learn's ``zero_division=0``)."""
    recall_macro: float
    """Recall averaged over the classes."""
    f1_macro: float
    """F1 averaged over the classes."""
    precision_micro: float
    recall_micro: float
    f1_micro: float
    confusion: np.ndarray
    """``(C, C)`` counts, rows the true class, columns the predicted one."""
    classes: list[str]
    """Class names (``classes[label]``)."""
    loss: float | None = None
    """Mean cross-entropy of the logits (None when scores, not logits, were given)."""
    per_class: list[dict[str, Any]] = field(default_factory=list)
    """One row per class: ``class``, ``precision``, ``recall``, ``f1``, ``support``."""

    def to_dict(self, prefix: str = "") -> dict[str, float]:
        """The scalar metrics as ``{prefix + name: value}`` (for a history row or JSON)."""
        keys = (
            "top1",
            "top5",
            "precision_macro",
            "recall_macro",
            "f1_macro",
            "precision_micro",
            "recall_micro",
            "f1_micro",
        )
        out = {f"{prefix}{k}": float(getattr(self, k)) for k in keys}
        if self.loss is not None:
            out[f"{prefix}loss"] = float(self.loss)
        return out

    def write_per_class_csv(self, path: str | Path) -> Path:
        """One row per class: class, precision, recall, f1, support."""
        return write_per_class_csv(self, path)

    def write_confusion_png(self, path: str | Path, *, title: str | None = None) -> Path:
        """The confusion matrix as a PNG (rows true, columns predicted, counts in the cells)."""
        return write_confusion_png(self, path, title=title)


def _labels_array(labels: Any, num_classes: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or (y.size and not np.issubdtype(y.dtype, np.integer)):
        raise ValueError(f"labels must be a 1-D array of class indices, got shape {y.shape} dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}) for {num_classes} classes, got min {y.min()} max {y.max()}; "
            "is the class list the one the model was trained with?"
        )
    return y.astype(np.int64)


def classification_metrics(
    logits: Any, labels: Any, classes: Sequence[str] | None = None, *, from_logits: bool = True
) -> ClassifyMetrics:
    """Top-1/top-5, macro and micro precision/recall/F1, confusion matrix and per-class rows.

    Args:
        logits: ``(N, C)`` scores (logits, or probabilities with ``from_logits=False``).
        labels: ``(N,)`` true class indices.
        classes: the ``C`` class names (default ``"0"`` ... ``"C-1"``).
        from_logits: also report the mean cross-entropy of ``logits``.

    Raises:
        ValueError: shapes that do not agree, labels outside ``[0, C)``, or no rows.
    """
    scores = torch.as_tensor(np.asarray(logits, dtype=np.float32))
    if scores.ndim != 2:
        raise ValueError(f"logits must be (N, classes), got shape {tuple(scores.shape)}")
    n, c = scores.shape
    if n == 0:
        raise ValueError("no rows to evaluate: give at least one labelled image")
    names = [str(i) for i in range(c)] if classes is None else [str(x) for x in classes]
    if len(names) != c:
        raise ValueError(f"{len(names)} class names for {c} model outputs; give the classes the model was trained on")
    y = _labels_array(labels, c)
    if len(y) != n:
        raise ValueError(f"{n} rows of logits but {len(y)} labels")
    k = min(5, c)
    topk = scores.topk(k, dim=1).indices.numpy()
    pred = topk[:, 0]
    confusion = np.zeros((c, c), np.int64)
    np.add.at(confusion, (y, pred), 1)
    tp = np.diag(confusion).astype(np.float64)
    predicted, support = confusion.sum(0).astype(np.float64), confusion.sum(1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros(c), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(c), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(c), where=(precision + recall) > 0)
    present = support > 0  # scikit-learn averages over the labels present in y_true or y_pred
    averaged = present | (predicted > 0)
    top1 = float(tp.sum() / n)
    loss = float(torch.nn.functional.cross_entropy(scores, torch.as_tensor(y))) if from_logits else None
    per_class = [
        {
            "class": names[i],
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i in range(c)
    ]
    return ClassifyMetrics(
        n=n,
        top1=top1,
        top5=float((topk == y[:, None]).any(1).mean()),
        precision_macro=float(precision[averaged].mean()),
        recall_macro=float(recall[averaged].mean()),
        f1_macro=float(f1[averaged].mean()),
        precision_micro=top1,
        recall_micro=top1,
        f1_micro=top1,
        confusion=confusion,
        classes=names,
        loss=loss,
        per_class=per_class,
    )


def _batches(data: Mapping[str, Any] | Iterable[Mapping[str, Any]], batch_size: int):
    if isinstance(data, Mapping):
        if "image" not in data or "label" not in data:
            raise ValueError(f"evaluation data needs `image` and `label` columns, got {sorted(data)}")
        n = len(data["label"])
        for i in range(0, n, batch_size):
            yield data["image"][i : i + batch_size], data["label"][i : i + batch_size]
        return
    for batch in data:
        if "image" not in batch or "label" not in batch:
            raise ValueError(f"evaluation batches need `image` and `label` columns, got {sorted(batch)}")
        yield batch["image"], batch["label"]


@torch.inference_mode()
def predict_logits(
    model: torch.nn.Module, images: Any, *, batch_size: int = 256, device: str | None = None
) -> np.ndarray:
    """``(N, C)`` float32 logits of ``model`` (in eval mode) on ``(N, 3, S, S)`` images, in batches."""
    device = device or str(next(model.parameters()).device)
    was_training = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(images), batch_size):
            # a copy: Ray hands out read-only arrays, which torch will not wrap
            x = torch.from_numpy(np.array(images[i : i + batch_size], dtype=np.float32)).to(device)
            out.append(model(x).float().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def evaluate_classifier(
    model: torch.nn.Module,
    data: Mapping[str, Any] | Iterable[Mapping[str, Any]],
    classes: Sequence[str] | None = None,
    *,
    batch_size: int = 256,
    device: str | None = None,
) -> ClassifyMetrics:
    """Score ``model`` on labelled images.

    Args:
        model: any classifier (``forward(x) -> logits``); it is put in eval mode and back.
        data: ``{"image": (N, 3, S, S) float32, "label": (N,) int}``, or an iterable of such batches
            (``dataset.iter_batches(batch_format="numpy")``).
        classes: class names, ``classes[label]`` (default: the indices).
        batch_size: images per forward pass.
        device: where to run (default: the model's device).
    """
    logits, labels = [], []
    for images, y in _batches(data, batch_size):
        logits.append(predict_logits(model, images, batch_size=batch_size, device=device))
        labels.append(np.asarray(y))
    if not logits:
        raise ValueError("no rows to evaluate: the evaluation data is empty")
    return classification_metrics(np.concatenate(logits), np.concatenate(labels).astype(np.int64), classes)


def write_per_class_csv(metrics: ClassifyMetrics, path: str | Path) -> Path:
    """``class,precision,recall,f1,support``: one row per class."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["class", "precision", "recall", "f1", "support"])
        w.writeheader()
        w.writerows(metrics.per_class)
    return path


def write_confusion_png(metrics: ClassifyMetrics, path: str | Path, *, title: str | None = None) -> Path:
    """The confusion matrix as a PNG (:func:`raylens.viz.plot_confusion`)."""
    from raylens.viz import plot_confusion

    title = title or f"top-1 {metrics.top1:.1%} on {metrics.n} images"
    return plot_confusion(metrics.confusion, metrics.classes, path, title=title)
