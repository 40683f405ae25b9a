"""The one place a training loop writes and reads its checkpoints, history and curves, and resumes.

A training checkpoint is a directory (see ARCHITECTURE.md, "One checkpoint format"):

- ``model.safetensors`` + ``config.json``: the model in the ``raylens.checkpoint/1`` format, written by
  :func:`raylens.models.save_model` (so :func:`raylens.models.load_model` reads any training checkpoint);
  ``config.json`` also carries the loop's ``extra``: ``train`` config, ``run`` options, ``step``, ``epoch``;
- ``train_state.pt``: optimizer, scheduler, grad scaler, step, epoch (tensors and numbers only,
  read back with ``weights_only=True``);
- ``history.json``, ``history.csv``, ``curves.png``: the run so far.

Every loop follows the same contract:

1. ``resumed = resume(ctx, module, optimizer, scheduler=..., scaler=...)``: weights and state from
   ``ctx.latest_checkpoint()``; go on at ``resumed.step`` / ``resumed.next_epoch`` with ``resumed.history``;
2. ``checkpoint_due(count, cfg.checkpoint_every, last=...)``: the same cadence everywhere
   (``checkpoint_every`` counts the loop's unit: steps for step-based loops, epochs for epoch-based ones;
   0 means only at the end);
3. ``report(ctx, metrics, write=lambda d: write_checkpoint(d, model, ...))``: every rank reports,
   rank 0 writes the checkpoint into a temporary folder that the context persists.

>>> import tempfile, torch
>>> from raylens.train.context import LocalContext
>>> from raylens.models import create_model
>>> net = create_model("timm/test_resnet", num_classes=2)
>>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
>>> ctx = LocalContext(storage=tempfile.mkdtemp(), device="cpu")
>>> resume(ctx, net, opt) is None  # a fresh run
True
>>> history = [{"step": 1, "epoch": 0, "loss": 1.0, "lr": 0.1}]
>>> kept = report(ctx, history[-1], write=lambda d: write_checkpoint(
...     d, net, optimizer=opt, step=1, epoch=0, history=history, extra={"train": {"lr": 0.1}}))
>>> r = resume(ctx, net, opt)  # doctest: +ELLIPSIS
resumed from ... at step 1 (epoch 1 done)
>>> (r.step, r.next_epoch, len(r.history)), sorted(p.name for p in kept.iterdir())
((1, 1, 1), ['config.json', 'curves.png', 'history.csv', 'history.json', 'model.safetensors', 'train_state.pt'])
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raylens.errors import CheckpointError
from raylens.models.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from raylens.train.context import TrainContext

__all__ = [
    "TRAIN_STATE_FILE",
    "HISTORY_FILE",
    "HISTORY_CSV",
    "CURVES_PNG",
    "WEIGHTS_FILE",
    "CONFIG_FILE",
    "Resumed",
    "save_model_files",
    "write_train_state",
    "write_history",
    "read_history",
    "write_checkpoint",
    "load_training_state",
    "resume",
    "checkpoint_due",
    "report",
]

log = logging.getLogger("raylens.train")

TRAIN_STATE_FILE = "train_state.pt"
HISTORY_FILE = "history.json"
HISTORY_CSV = "history.csv"
CURVES_PNG = "curves.png"


@dataclass
class Resumed:
    """Where a resumed loop goes on from."""

    path: Path
    """The checkpoint it resumed from."""
    step: int
    """Optimizer steps done before the checkpoint."""
    epoch: int
    """The epoch the checkpoint was written in."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """The history up to the checkpoint; the loop appends to it."""

    @property
    def next_epoch(self) -> int:
        """The epoch to run next (an interrupted epoch is not replayed: its data order moves on)."""
        return self.epoch + 1


def save_model_files(model: Any, directory: str | Path, *, extra: dict[str, Any] | None = None) -> Path:
    """Write the model's ``model.safetensors`` and ``config.json`` (plus ``extra``) into ``directory``.

    The one function every loop's checkpoint goes through for its weights: it is
    :func:`raylens.models.save_model`, so a training checkpoint is a ``raylens.checkpoint/1``
    directory that :func:`raylens.models.load_model` reads, whatever the kind.
    """
    from raylens.models import save_model

    return save_model(model, directory, extra=extra)


def write_train_state(directory: str | Path, *, optimizer, step: int, epoch: int, scheduler=None, scaler=None) -> Path:
    """``train_state.pt``: optimizer, scheduler and grad-scaler state, step and epoch."""
    import torch

    path = Path(directory) / TRAIN_STATE_FILE
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "step": int(step),
            "epoch": int(epoch),
        },
        path,
    )
    return path


def write_history(directory: str | Path, history: list[dict[str, Any]], *, title: str = "training") -> None:
    """``history.json`` always; ``history.csv`` and ``curves.png`` once there is a row."""
    from raylens.train.curves import plot_curves
    from raylens.viz import write_history_csv

    directory = Path(directory)
    (directory / HISTORY_FILE).write_text(json.dumps(history))
    if history:
        write_history_csv(history, directory / HISTORY_CSV)
        plot_curves(history, directory / CURVES_PNG, title=title)


def read_history(directory: str | Path) -> list[dict[str, Any]]:
    """The history saved in a checkpoint (empty when it has none)."""
    path = Path(directory) / HISTORY_FILE
    return json.loads(path.read_text()) if path.is_file() else []


def write_checkpoint(
    directory: str | Path,
    model: Any,
    *,
    optimizer,
    step: int,
    epoch: int,
    history: list[dict[str, Any]],
    scheduler=None,
    scaler=None,
    extra: dict[str, Any] | None = None,
    title: str = "training",
) -> Path:
    """A whole training checkpoint in ``directory``: model files (``config.json`` gets ``extra`` plus
    ``step`` and ``epoch``), train state, history, CSV and curves."""
    directory = Path(directory)
    save_model_files(model, directory, extra={**(extra or {}), "step": int(step), "epoch": int(epoch)})
    write_train_state(directory, optimizer=optimizer, scheduler=scheduler, scaler=scaler, step=step, epoch=epoch)
    write_history(directory, history, title=title)
    return directory


def load_training_state(
    directory: str | Path, module, optimizer, *, scheduler=None, scaler=None, device="cpu"
) -> Resumed:
    """Load a checkpoint's weights into ``module`` and its state into the optimizer (scheduler, scaler)."""
    import torch
    from safetensors.torch import load_file

    from raylens.models import read_checkpoint

    directory = Path(directory)
    if not (directory / TRAIN_STATE_FILE).is_file():
        raise CheckpointError(
            f"cannot resume from {directory}: it has no {TRAIN_STATE_FILE}, so it is no training checkpoint "
            "(raylens.train.checkpointing writes them); start a new run (another name or storage) instead"
        )
    weights = read_checkpoint(directory).weights
    try:
        module.load_state_dict(load_file(str(weights), device=str(device)))
    except RuntimeError as e:
        raise CheckpointError(
            f"the checkpoint in {directory} does not fit this model (was the model config changed between "
            f"runs? keep it, or start a new run name): {str(e).splitlines()[0]}"
        ) from e
    state = torch.load(directory / TRAIN_STATE_FILE, map_location=device, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return Resumed(directory, int(state["step"]), int(state["epoch"]), read_history(directory))


def resume(ctx: TrainContext, module, optimizer, *, scheduler=None, scaler=None, device="cpu") -> Resumed | None:
    """Resume from ``ctx.latest_checkpoint()`` (every rank loads it); None for a fresh start."""
    latest = ctx.latest_checkpoint()
    if latest is None:
        return None
    resumed = load_training_state(latest, module, optimizer, scheduler=scheduler, scaler=scaler, device=device)
    if ctx.rank == 0:  # a user resubmitting a stopped job wants to see that it picked up where it stopped
        print(f"resumed from {latest} at step {resumed.step} (epoch {resumed.epoch + 1} done)", flush=True)
    return resumed


def checkpoint_due(count: int, every: int, *, last: bool) -> bool:
    """The one cadence: at the end, and every ``every`` steps (or epochs) when ``every`` > 0.

    >>> [n for n in range(1, 8) if checkpoint_due(n, 3, last=n == 7)]
    [3, 6, 7]
    >>> [n for n in range(1, 8) if checkpoint_due(n, 0, last=n == 7)]
    [7]
    """
    return bool(last or (every and count % every == 0))


def report(ctx: TrainContext, metrics: dict[str, Any], *, write: Callable[[Path], Any] | None = None) -> Path | None:
    """Report ``metrics`` from every rank; with ``write``, rank 0 also writes a checkpoint.

    ``write(directory)`` fills a fresh temporary folder, which the context persists and which is
    removed afterwards. Returns where the checkpoint is kept, when the context keeps it on local disk.
    """
    if write is None:
        return ctx.report(metrics)
    if ctx.rank != 0:  # a checkpoint step on every rank: the context may need every rank at a barrier
        return ctx.report(metrics, checkpoint_step=True)
    with tempfile.TemporaryDirectory(prefix="raylens-ckpt-") as tmp:
        write(Path(tmp))
        return ctx.report(metrics, checkpoint_dir=tmp)
