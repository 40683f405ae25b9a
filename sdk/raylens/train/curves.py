"""Training curves of any loop: loss and learning rate against step, held-out metrics beside them.

Every loop's history rows carry ``step``, ``epoch``, ``loss`` and ``lr``; held-out metrics are the
keys that start with one of :data:`EVAL_PREFIXES` (CLIP's zero-shot and retrieval recall, a
classifier's or the fusion nets' ``val_*``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_curves", "eval_keys", "EVAL_PREFIXES"]

EVAL_PREFIXES = ("zeroshot_", "i2t_R@", "t2i_R@", "val_")
"""History keys drawn in the held-out panel."""


def eval_keys(history: Sequence[dict[str, Any]]) -> list[str]:
    """The held-out metric names in ``history``, in first-seen order.

    >>> eval_keys([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0, "val_auc": 0.7, "zeroshot_top1": 0.5}])
    ['val_auc', 'zeroshot_top1']
    """
    return [k for k in dict.fromkeys(k for h in history for k in h) if k.startswith(EVAL_PREFIXES)]


def plot_curves(history: Sequence[dict[str, Any]], path: str | Path, *, title: str = "training") -> Path:
    """Loss (and learning rate) against step as a PNG; held-out metrics, when any, in a second panel."""
    if not history:
        raise ValueError("history is empty: nothing to plot; report at least one step before drawing curves")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_key = "step" if all("step" in h for h in history) else "epoch"
    xs = [h[x_key] for h in history]
    evals = eval_keys(history)
    fig, axes = plt.subplots(1, 2 if evals else 1, figsize=(12 if evals else 7, 4), dpi=110, squeeze=False)
    ax = axes[0][0]
    ax.plot(xs, [h["loss"] for h in history], color="tab:blue", lw=2, label="loss")
    ax.set_xlabel(x_key)
    ax.set_ylabel("training loss", color="tab:blue")
    ax.grid(alpha=0.3)
    if all("lr" in h for h in history):
        ax2 = ax.twinx()
        ax2.plot(xs, [h["lr"] for h in history], color="tab:orange", lw=1, ls="--", label="learning rate")
        ax2.set_ylabel("learning rate", color="tab:orange")
    ax.set_title(title)
    if evals:
        ax = axes[0][1]
        bounded = True
        for k in evals:
            pts = [(h[x_key], h[k]) for h in history if isinstance(h.get(k), int | float)]
            if not pts:
                continue
            bounded = bounded and all(0.0 <= v <= 1.0 for _, v in pts)
            ax.plot(*zip(*pts), marker="o", ms=3, lw=2 if k in ("zeroshot_top1", "val_auc") else 1, label=k)
        ax.set_xlabel(x_key)
        ax.set_ylabel("held-out metric")
        if bounded:
            ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2, loc="lower right")
        ax.set_title("evaluation")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
