"""Pictures a person would rather look at than read: training curves and search-result grids."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_search_grid", "plot_confusion", "write_history_csv"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_history_csv(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for row in history for k in row))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
    return path


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], path: str | Path, *, title: str = "confusion") -> Path:
    """A confusion matrix (rows: true class, columns: predicted) with counts in the cells."""
    matrix = np.asarray(matrix)
    if matrix.shape != (len(classes), len(classes)):
        raise ValueError(
            f"a {len(classes)}-class confusion matrix must be {len(classes)}x{len(classes)}, got {matrix.shape}"
        )
    plt = _plt()
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * n, 0.8 + 0.45 * n), dpi=110)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=90 if max(map(len, classes)) > 3 else 0)
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = matrix.max() or 1
    for i in range(n):
        for j in range(n):
            if matrix[i, j]:
                ax.text(
                    j,
                    i,
                    str(matrix[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if matrix[i, j] > top / 2 else "black",
                )
    ax.set_title(title, fontsize=9)
    return _save(plt, fig, path)


def _load_thumb(path: str | None) -> np.ndarray | None:
    if not path:
        return None
    try:
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError:
        return None


def plot_search_grid(
    queries: Sequence[str],
    results: Sequence[Sequence[Any]],
    path: str | Path,
    *,
    relevant: Sequence[Sequence[bool]] | None = None,
) -> Path:
    """One row per query: the query text, then its hits' images with scores (green frame = relevant)."""
    if len(queries) != len(results) or not queries:
        raise ValueError(f"need one result list per query, got {len(queries)} queries and {len(results)} lists")
    plt = _plt()
    k = max(len(r) for r in results) or 1
    fig, axes = plt.subplots(
        len(queries), k + 1, figsize=(1.6 * (k + 1) + 1.2, 1.75 * len(queries)), dpi=110, squeeze=False
    )
    for i, (q, hits) in enumerate(zip(queries, results)):
        axes[i, 0].text(0.98, 0.5, f'"{q}"', ha="right", va="center", fontsize=9, wrap=True)
        axes[i, 0].axis("off")
        for j in range(k):
            ax = axes[i, j + 1]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(hits):
                ax.axis("off")
                continue
            hit = hits[j]
            img = _load_thumb(getattr(hit, "path", None))
            if img is not None:
                ax.imshow(img)
            ax.set_title(f"{hit.score:.3f}", fontsize=8)
            if relevant is not None:
                colour = "tab:green" if relevant[i][j] else "tab:red"
                for s in ax.spines.values():
                    s.set_edgecolor(colour)
                    s.set_linewidth(3)
    return _save(plt, fig, path)
