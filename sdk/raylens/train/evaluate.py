"""Evaluation of a CLIP model: zero-shot classification and cross-modal retrieval recall.

Zero-shot follows open_clip's ``zero_shot_classifier``: each class's prompt embeddings (one per
template) are averaged and renormalised, and an image is given the class of its nearest prompt
embedding. Retrieval recall@K is computed in both directions over an eval set of (image, caption)
pairs. Captions repeat in many datasets (every "a photo of the digit 7"), so a retrieved item counts
as a hit when its caption is the query's caption: with unique captions this is the usual paired recall.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "EvalData",
    "encode_all_images",
    "zero_shot_weights",
    "zero_shot_accuracy",
    "zero_shot_confusion",
    "retrieval_recall",
    "evaluate_clip",
    "RECALL_KS",
]

RECALL_KS = (1, 5, 10)


@dataclass
class EvalData:
    """A held-out set held in memory: preprocessed images, their captions and (optionally) labels."""

    images: np.ndarray
    """(N, 3, S, S) float32, preprocessed."""
    captions: np.ndarray
    """(N,) str."""
    labels: np.ndarray | None = None
    """(N,) int class index into ``ClipTrainConfig.zeroshot_classes``; None: no zero-shot metric."""

    def __post_init__(self):
        self.images = np.asarray(self.images, dtype=np.float32)
        self.captions = np.asarray([str(c) for c in self.captions])
        if len(self.images) != len(self.captions) or len(self.images) == 0:
            raise ValueError(
                f"eval data needs as many captions as images (>0), got {len(self.images)} and {len(self.captions)}"
            )
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.int64)
            if len(self.labels) != len(self.images):
                raise ValueError(f"eval labels: {len(self.labels)} for {len(self.images)} images")

    def __len__(self) -> int:
        return len(self.images)

    @classmethod
    def from_batches(cls, batches: Iterable[dict[str, np.ndarray]], max_rows: int = 10_000) -> EvalData:
        """Collect up to ``max_rows`` rows of ``image``/``caption`` (and ``label`` when present)."""
        imgs, caps, labels, n = [], [], [], 0
        for b in batches:
            take = min(len(b["image"]), max_rows - n)
            imgs.append(np.asarray(b["image"][:take]))
            caps.append(np.asarray(b["caption"][:take]))
            if "label" in b:
                labels.append(np.asarray(b["label"][:take]))
            n += take
            if n >= max_rows:
                break
        if n == 0:
            raise ValueError("the eval dataset is empty: give it at least one (image, caption) row")
        lab = np.concatenate(labels) if labels and sum(map(len, labels)) == n else None
        return cls(np.concatenate(imgs), np.concatenate(caps), lab)


def encode_all_images(model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    return np.concatenate([model.encode_images(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def zero_shot_weights(model, classes: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """(C, D) unit vectors: the mean prompt embedding of each class."""
    w = np.stack([model.encode_texts([t.format(c) for t in templates]).mean(0) for c in classes])
    return w / np.linalg.norm(w, axis=1, keepdims=True)


def zero_shot_accuracy(image_features: np.ndarray, labels: np.ndarray, class_weights: np.ndarray) -> dict[str, float]:
    """Top-1 (and top-5 when there are more than 5 classes) accuracy of nearest-prompt classification."""
    scores = image_features @ class_weights.T
    out = {"zeroshot_top1": float(np.mean(scores.argmax(1) == labels))}
    if class_weights.shape[0] > 5:
        top5 = np.argsort(-scores, axis=1)[:, :5]
        out["zeroshot_top5"] = float(np.mean((top5 == labels[:, None]).any(1)))
    return out


def zero_shot_confusion(image_features: np.ndarray, labels: np.ndarray, class_weights: np.ndarray) -> np.ndarray:
    """(C, C) counts of nearest-prompt predictions: rows the true class, columns the predicted one."""
    n = class_weights.shape[0]
    matrix = np.zeros((n, n), np.int64)
    np.add.at(matrix, (labels, (image_features @ class_weights.T).argmax(1)), 1)
    return matrix


def retrieval_recall(
    image_features: np.ndarray, text_features: np.ndarray, captions: Sequence[str], ks: Sequence[int] = RECALL_KS
) -> dict[str, float]:
    """Recall@K image->text (over the distinct captions) and text->image (one query per distinct caption)."""
    captions = np.asarray([str(c) for c in captions])
    uniq, inverse = np.unique(captions, return_inverse=True)
    first = np.array([np.flatnonzero(inverse == u)[0] for u in range(len(uniq))])
    txt = text_features[first]  # one embedding per distinct caption
    out: dict[str, float] = {}
    i2t = np.argsort(-(image_features @ txt.T), axis=1, kind="stable")  # (N, U) caption ranks per image
    t2i = np.argsort(-(txt @ image_features.T), axis=1, kind="stable")  # (U, N) image ranks per caption
    for k in ks:
        out[f"i2t_R@{k}"] = float(np.mean((i2t[:, :k] == inverse[:, None]).any(1)))
        out[f"t2i_R@{k}"] = float(np.mean((inverse[t2i[:, :k]] == np.arange(len(uniq))[:, None]).any(1)))
    return out


def evaluate_clip(
    model, data: EvalData, classes: Sequence[str] | None = None, templates: Sequence[str] = ("a photo of a {}.",)
) -> dict[str, Any]:
    """Every metric the data allows: retrieval recall always, zero-shot accuracy with classes + labels."""
    img = encode_all_images(model, data.images)
    uniq, inverse = np.unique(data.captions, return_inverse=True)
    full_txt = model.encode_texts(list(uniq))[inverse]  # each distinct caption encoded once
    metrics: dict[str, Any] = retrieval_recall(img, full_txt, data.captions)
    if classes is not None and data.labels is not None:
        metrics.update(zero_shot_accuracy(img, data.labels, zero_shot_weights(model, classes, templates)))
    return metrics
