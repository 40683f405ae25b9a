"""`raylens train`: a data spec in, a trained CLIP checkpoint, curves and a summary out.

Opens the training (and optional eval) source with Ray Data, trains with Ray Train (:func:`fit_clip`,
the CLIP loop in the one wrapper :func:`raylens.train.ray_fit.fit`),
prints the final metrics and the ingest report, and draws the curves and, for labelled eval data,
a zero-shot confusion matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from raylens.data.sources import open_source
from raylens.train.config import ClipTrainConfig
from raylens.train.options import RayTrainOptions
from raylens.train.ray_clip import fit_clip
from raylens.train.result import TrainResult

__all__ = ["TrainJob", "run_train_job", "final_table", "write_run_outputs"]


@dataclass
class TrainJob:
    train: str
    """Training data spec (see :func:`raylens.data.sources.open_source`)."""
    eval: str | None = None
    """Eval data spec; ``digits`` evaluates on the held-out digits. None: no evaluation."""
    train_split: str | None = None
    eval_split: str | None = None
    workdir: Path | None = None
    """Where the outputs go; None: ``STORAGE/NAME/outputs`` (:class:`raylens.train.outputs.RunOutputs`)."""
    templates: list[str] | None = None
    """Zero-shot prompt templates; None: the eval source's own, else the config's."""
    augment: bool = False
    """Train-time augmentation (open_clip's RandomResizedCrop) on the training images."""
    hflip: bool = False
    randaugment: bool = False


def final_table(result: TrainResult) -> Table:
    """The last reported metrics as a table (every training kind prints one at the end)."""
    last = result.history[-1]
    table = Table(title="final metrics", title_justify="left", show_edge=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in last.items():
        if k not in ("epoch",):
            table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    return table


def write_run_outputs(result: TrainResult, workdir: str | Path, *, title: str) -> list[Path]:
    """``curves.png`` and ``history.csv`` of the whole run in ``workdir``; returns the files written."""
    from raylens.train.curves import plot_curves
    from raylens.viz import write_history_csv

    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    return [
        plot_curves(result.history, work / "curves.png", title=title),
        write_history_csv(result.history, work / "history.csv"),
    ]


def _confusion_png(checkpoint: Path, cfg: ClipTrainConfig, eval_ds: Any, classes: list[str], out: Path) -> Path:
    """The final model's zero-shot confusion matrix on the eval data, as a PNG."""
    import numpy as np

    from raylens.models import create_model
    from raylens.train.evaluate import EvalData, encode_all_images, zero_shot_confusion, zero_shot_weights
    from raylens.viz import plot_confusion

    model = create_model(cfg.model, pretrained=str(checkpoint))
    data = EvalData.from_batches(eval_ds.iter_batches(batch_size=512, batch_format="numpy"))
    matrix = zero_shot_confusion(
        encode_all_images(model, data.images), data.labels, zero_shot_weights(model, classes, cfg.zeroshot_templates)
    )
    return plot_confusion(
        matrix, classes, out, title=f"zero-shot on held-out data: {np.trace(matrix) / matrix.sum():.1%}"
    )


def run_train_job(
    job: TrainJob, cfg: ClipTrainConfig, opts: RayTrainOptions, console: Console | None = None
) -> TrainResult:
    """Train as ``job`` says; returns the result and leaves curves (+ confusion matrix) under the run's outputs."""
    from raylens.models import create_model
    from raylens.runtime import init_ray
    from raylens.train.outputs import RunOutputs, named_run, print_outputs

    console = console or Console()
    opts = named_run(opts, "clip")
    outputs = RunOutputs.for_run(opts, job.workdir)
    init_ray()
    preprocess = create_model(cfg.model).preprocess
    train_pre = preprocess
    if job.augment or job.hflip or job.randaugment:
        from raylens.data.augment import TrainAugment

        if job.train == "digits":
            raise ValueError("augmentation is for image files (captions, folders, shards); digits train without it")
        train_pre = TrainAugment(
            preprocess.image_size,
            hflip=job.hflip,
            randaugment=job.randaugment,
            seed=cfg.seed,
            mean=preprocess.mean,
            std=preprocess.std,
        )
    train = open_source(job.train, train_pre, split=job.train_split, seed=cfg.seed)
    evals = None
    if job.eval:
        default_split = "heldout" if job.eval == "digits" else None
        evals = open_source(job.eval, preprocess, split=job.eval_split or default_split, seed=cfg.seed)
        if cfg.zeroshot_classes is None and evals.classes:
            cfg.zeroshot_classes = list(evals.classes)
    if job.templates or (evals is not None and evals.templates):
        cfg.zeroshot_templates = list(job.templates or evals.templates)
    console.print(
        f"[green]train[/green] {cfg.model} ({cfg.loss} loss) on {train.name} for {cfg.max_steps} steps, "
        f"{opts.num_workers} worker(s) x batch {cfg.batch_size} x accum {cfg.accum_steps}"
        + (f"; eval on {evals.name}" if evals else "")
    )
    result = fit_clip(train.dataset, cfg, opts, eval_ds=evals.dataset if evals else None)
    console.print(f"[green]ingest[/green] {train.report().summary()}")
    if not result.history:
        raise RuntimeError("training reported nothing: see the worker errors above")
    work = outputs.local
    console.print(final_table(result))
    curves, history = write_run_outputs(result, work, title=f"{cfg.model} on {train.name}")
    files = {"curves": curves, "history": history}
    if evals is not None and cfg.zeroshot_classes:
        files["confusion"] = _confusion_png(
            result.checkpoint, cfg, evals.dataset, cfg.zeroshot_classes, work / "confusion.png"
        )
    console.print(f"[green]trained[/green] {result.steps} steps in {result.seconds:.0f} s")
    print_outputs(console, opts, result.location, outputs.publish(files))
    return result
