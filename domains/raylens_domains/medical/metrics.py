"""Binary classification metrics (AUC, accuracy, F1) and ROC curves saved as PNG.

>>> m = binary_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
>>> round(m.auc, 2), m.accuracy, m.n
(0.75, 0.75, 4)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = ["BinaryMetrics", "binary_metrics", "save_roc_png", "metrics_table"]


@dataclass(frozen=True)
class BinaryMetrics:
    """Scores of one model on one labelled set."""

    auc: float
    """Area under the ROC curve (NaN when only one class is present)."""
    accuracy: float
    """At ``threshold``."""
    f1: float
    """At ``threshold``."""
    threshold: float
    n: int
    n_positive: int

    def to_dict(self) -> dict:
        return asdict(self)


def _check(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(int).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores need the same length, got {y.shape[0]} and {s.shape[0]}")
    if y.size == 0:
        raise ValueError("labels is empty")
    if not np.all(np.isin(y, (0, 1))):
        raise ValueError("labels must be 0 or 1 (drop unlabelled rows, label -1, first)")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or inf")
    return y, s


def binary_metrics(labels: Sequence[int], scores: Sequence[float], *, threshold: float = 0.5) -> BinaryMetrics:
    """AUC from the scores; accuracy and F1 with ``scores >= threshold`` as the prediction."""
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    y, s = _check(labels, scores)
    auc = float(roc_auc_score(y, s)) if len(np.unique(y)) == 2 else float("nan")
    pred = (s >= threshold).astype(int)
    return BinaryMetrics(
        auc=auc,
        accuracy=float(accuracy_score(y, pred)),
        f1=float(f1_score(y, pred, zero_division=0)),
        threshold=float(threshold),
        n=int(y.size),
        n_positive=int(y.sum()),
    )


def save_roc_png(
    curves: Mapping[str, tuple[Sequence[int], Sequence[float]]], path: str | Path, *, title: str = "ROC"
) -> Path:
    """Plot one ROC curve per entry ``name -> (labels, scores)`` into a PNG file."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    for name, (labels, scores) in curves.items():
        y, s = _check(labels, scores)
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, s):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def metrics_table(results: Mapping[str, BinaryMetrics]) -> str:
    """A markdown table: one row per model."""
    rows = ["| model | AUC | accuracy | F1 | n |", "|---|---|---|---|---|"]
    for name, m in results.items():
        rows.append(f"| {name} | {m.auc:.3f} | {m.accuracy:.3f} | {m.f1:.3f} | {m.n} |")
    return "\n".join(rows) + "\n"
