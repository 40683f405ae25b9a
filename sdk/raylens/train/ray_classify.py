"""Image classification on Ray Train: the plain loop (:func:`~raylens.train.classify_loop.train_classifier`)
in the one Ray Train wrapper (:func:`raylens.train.ray_fit.fit`), and the whole job behind
``raylens train classify``: data in; checkpoint, curves, test metrics, per-class CSV and confusion
matrix out.

Each worker reads its shard of the training dataset (``image``, ``label``); the model is wrapped in
DDP (gloo on CPU, NCCL on GPU); rank 0 scores the validation set after every ``eval_every`` epochs.
Data without per-image augmentation that fits in memory is materialised once, so epochs after the
first do not decode again; with augmentation every epoch decodes and draws anew. Re-running with
the same ``opts.name`` and ``opts.storage_path`` resumes from the latest checkpoint.

On Ray (skipped as a doctest: it starts Ray Train workers):

>>> job = ClassifyJob("digits", workdir=Path("runs/digits"))                                  # doctest: +SKIP
>>> out = run_classify_job(job, ClassifyTrainConfig(model="small_resnet", epochs=15))         # doctest: +SKIP
>>> out.test_metrics.top1, out.files["confusion"]                                             # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ray

from raylens.data.images import ClipPreprocess
from raylens.data.labelled import write_digits_folders
from raylens.data.ray_labelled import LabelledRead, read_labelled_images
from raylens.train.classify_config import ClassifyTrainConfig
from raylens.train.classify_eval import ClassifyMetrics, evaluate_classifier
from raylens.train.classify_loop import build_classifier, load_teacher, resolve_batch_transform, train_classifier
from raylens.train.options import RayTrainOptions
from raylens.train.ray_fit import RayContext, fit, worker_cache_bytes
from raylens.train.result import TrainResult

__all__ = [
    "CLASSIFY_SHUFFLE_BUFFER",
    "MATERIALIZE_MAX_BYTES",
    "ClassifyJob",
    "ClassifyJobResult",
    "classify_worker_loop",
    "fit_classifier",
    "print_epoch",
    "run_classify_job",
]

CLASSIFY_SHUFFLE_BUFFER = 2048
"""Rows in each worker's local shuffle buffer unless ``RayTrainOptions.shuffle_buffer`` says otherwise."""
MATERIALIZE_MAX_BYTES = 2 << 30
"""Training data without per-image augmentation is kept in Ray's object store when its decoded images
take less than this (2 GiB), so only the first epoch decodes."""


def print_epoch(cfg: ClassifyTrainConfig):
    """A progress line per epoch: ``epoch  3/30  loss 0.512  lr 9.6e-04  412 img/s  val_top1 0.981``."""

    def show(m: dict[str, Any]) -> None:
        vals = "  ".join(f"{k} {m[k]:.4f}" for k in ("train_top1", "val_top1", "val_loss") if k in m)
        stop = "  (early stop)" if m.get("stopped_early") else ""
        print(
            f"epoch {m['epoch'] + 1:>3}/{cfg.epochs}  loss {m['loss']:.4f}  lr {m['lr']:.2e}  "
            f"{m['images_per_s']:.0f} img/s  {m['seconds']:.1f} s  {vals}{stop}".rstrip(),
            flush=True,
        )

    return show


def classify_worker_loop(config: dict[str, Any], ctx: RayContext) -> None:
    """The per-worker loop :func:`fit_classifier` gives the wrapper: shard -> batches -> train_classifier."""
    cfg = ClassifyTrainConfig.from_dict(config["train"])
    batches = ctx.epoch_batches(
        "train",
        batch_size=cfg.batch_size,
        seed=cfg.seed * 1000,
        shuffle_buffer=CLASSIFY_SHUFFLE_BUFFER,
        cache_max_bytes=config.get("cache_bytes", 0),
    )
    val = ctx.read_all("val", columns=("image", "label")) if config["has_val"] and ctx.rank == 0 else None
    train_classifier(
        cfg,
        batches,
        ctx,
        classes=config["classes"],
        val=val,
        steps_per_epoch=config["steps_per_epoch"],
        class_counts=config["class_counts"],
        on_epoch=print_epoch(cfg) if config["progress"] else None,
        extra=config["extra"],
    )


def fit_classifier(
    train_ds: ray.data.Dataset,
    cfg: ClassifyTrainConfig,
    opts: RayTrainOptions | None = None,
    *,
    classes: list[str],
    train_rows: int,
    val_ds: ray.data.Dataset | None = None,
    class_counts: list[int] | None = None,
    extra: dict[str, Any] | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train ``cfg.model`` with Ray Train on ``train_ds`` (rows ``image`` (3, S, S) float32, ``label``).

    Args:
        train_ds: split across the workers (materialised first when it has no random augmentation
            and fits in :data:`MATERIALIZE_MAX_BYTES`).
        cfg: the recipe.
        opts: workers, GPUs, storage and run name (same name + storage resumes).
        classes: class names, ``classes[label]``; saved in every checkpoint.
        train_rows: rows in ``train_ds`` (for the schedule's steps per epoch).
        val_ds: scored on rank 0 (up to ``opts.eval_max_rows`` rows, held in memory).
        class_counts: rows per class, for ``imbalance: sampling``.
        extra: more ``config.json`` keys for every checkpoint.
        progress: print one line per epoch (from rank 0).

    Returns:
        The final checkpoint (:func:`raylens.models.classifier_hub.load_classifier` reads it) and the history.
    """
    if not isinstance(cfg, ClassifyTrainConfig):
        raise TypeError(f"cfg must be a ClassifyTrainConfig, got {type(cfg).__name__}")
    opts = opts or RayTrainOptions()
    if train_rows < opts.num_workers:
        raise ValueError(
            f"{train_rows} training rows cannot feed {opts.num_workers} workers; give more data or fewer workers"
        )
    decoded_bytes = train_rows * 3 * cfg.image_size**2 * 4
    same_every_epoch = not cfg.row_augment and decoded_bytes <= MATERIALIZE_MAX_BYTES
    if same_every_epoch:
        train_ds = train_ds.materialize()
    datasets = {"train": train_ds}
    if val_ds is not None:
        datasets["val"] = val_ds
    steps = math.ceil((train_rows // opts.num_workers) / cfg.batch_size)
    loop_config = {
        "train": cfg.to_dict(),
        "classes": list(classes),
        "has_val": val_ds is not None,
        "steps_per_epoch": max(1, steps),
        # rows without per-epoch augmentation stay in each worker's memory after the first epoch
        "cache_bytes": worker_cache_bytes(train_ds, opts.num_workers),
        "class_counts": class_counts,
        "extra": dict(extra or {}),
        "progress": progress,
    }
    return fit(classify_worker_loop, loop_config, datasets, opts)


@dataclass
class ClassifyJob:
    """What to train on and evaluate on, and where the pictures go."""

    data: str
    """Training data: ``digits`` (scikit-learn's, upsampled to ``image_size``), a folder of class
    subfolders, or a label table (.csv/.tsv/.jsonl/.parquet with a label column)."""
    val: str | None = None
    """Validation data (same kinds); default: ``val_fraction`` of the training data, split by a hash of the path."""
    test: str | None = None
    """Test data scored once at the end (``digits``: the held-out quarter, by default)."""
    val_fraction: float = 0.1
    """With no ``val``: the share of training rows kept for validation (0: no validation)."""
    classes: list[str] | None = None
    """The class list (default: the folder names or the table's labels, sorted); rows of other classes are skipped."""
    label_column: str = "label"
    """A label table's label column."""
    path_column: str | None = None
    """A label table's image column (default: found by name)."""
    workdir: Path | None = None
    """Where curves.png, history.csv, metrics.json, per_class.csv, confusion.png, model/ and ingest reports
    go; None: ``STORAGE/NAME/outputs`` (:class:`raylens.train.outputs.RunOutputs`)."""

    def __post_init__(self):
        self.workdir = Path(self.workdir) if self.workdir is not None else None
        if not isinstance(self.data, str) or not self.data:
            raise ValueError(f"`data` must be 'digits', a class-folder root or a label table, got {self.data!r}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"`val_fraction` must be in [0, 1) (0 = no validation split), got {self.val_fraction}")


@dataclass
class ClassifyJobResult:
    """What :func:`run_classify_job` produced."""

    train: TrainResult
    """The Ray Train run: final checkpoint and history."""
    classes: list[str]
    test_metrics: ClassifyMetrics | None = None
    """The final model on the test data (or on the validation data when there is no test data)."""
    evaluated_on: str | None = None
    """What ``test_metrics`` were computed on."""
    files: dict[str, str] = field(default_factory=dict)
    """Where each output is (a local path, or a URI under the run's storage): ``curves``, ``history``,
    ``metrics``, ``per_class``, ``confusion``, ``model``, ``ingest``."""
    ingest: dict[str, Any] = field(default_factory=dict)
    """Each source's ingest report (rows read, rows skipped with reasons)."""
    opts: RayTrainOptions | None = None
    """The run's options, with its name (given or made up): the same name and storage resume it."""


def _read(spec: str, preprocess, job: ClassifyJob, cfg: ClassifyTrainConfig, **kw: Any) -> LabelledRead:
    return read_labelled_images(
        spec,
        preprocess,
        label_column=job.label_column,
        path_column=job.path_column,
        seed=cfg.seed,
        **kw,
    )


def _train_preprocess(cfg: ClassifyTrainConfig):
    if not cfg.row_augment:
        return ClipPreprocess(cfg.image_size, tuple(cfg.mean), tuple(cfg.std))
    from raylens.data.augment import TrainAugment

    return TrainAugment(
        cfg.image_size,
        scale=(cfg.crop_scale, 1.0),
        hflip=cfg.hflip,
        randaugment=cfg.randaugment,
        num_ops=cfg.randaugment_ops,
        magnitude=cfg.randaugment_magnitude,
        seed=cfg.seed,
        mean=tuple(cfg.mean),
        std=tuple(cfg.std),
    )


def run_classify_job(
    job: ClassifyJob, cfg: ClassifyTrainConfig, opts: RayTrainOptions | None = None, *, progress: bool = True
) -> ClassifyJobResult:
    """Read the data, train with Ray Train, score the final model, write the pictures and tables.

    Everything that can be checked before training is checked first, on the driver: the data's
    layout and class list, the model name, its head and its kind (a CLIP checkpoint given as the
    model is an error here, not in a worker).
    """
    from raylens.models import save_model
    from raylens.models.classifier_hub import load_classifier
    from raylens.runtime import init_ray
    from raylens.train.outputs import RunOutputs, named_run
    from raylens.train.ray_recipe import write_run_outputs

    opts = named_run(opts or RayTrainOptions(), "classify")
    outputs = RunOutputs.for_run(opts, job.workdir)
    init_ray()
    work = outputs.local
    work.mkdir(parents=True, exist_ok=True)
    data, test = job.data, job.test
    if data == "digits":
        data_dir, test_dir = write_digits_folders(
            outputs.scratch / f"digits-{cfg.image_size}", image_size=cfg.image_size, seed=cfg.seed
        )
        data, test = str(data_dir), test or str(test_dir)
    eval_pre = ClipPreprocess(cfg.image_size, tuple(cfg.mean), tuple(cfg.std))
    split = job.val is None and job.val_fraction > 0
    train = _read(
        data,
        _train_preprocess(cfg),
        job,
        cfg,
        classes=job.classes,
        part="train" if split else "all",
        val_fraction=job.val_fraction,
    )
    classes = list(train.classes or [])
    val = None
    if job.val is not None:
        val = _read(job.val, eval_pre, job, cfg, classes=classes)
    elif split:
        val = _read(data, eval_pre, job, cfg, classes=classes, part="val", val_fraction=job.val_fraction)
    test_read = _read(test, eval_pre, job, cfg, classes=classes) if test else None
    # name, head, kind and adversarial transform checked here, before any worker starts
    build_classifier(cfg, len(classes))
    if cfg.teacher:  # its kind and class list, checked before any worker starts
        load_teacher(cfg, classes)
    resolve_batch_transform(cfg.adversarial, cfg.adversarial_args, mean=cfg.mean, std=cfg.std)
    extra = {
        "data": {"train": train.name, "val": val.name if val else None, "test": test_read.name if test_read else None}
    }
    result = fit_classifier(
        train.dataset,
        cfg,
        opts,
        classes=classes,
        train_rows=train.rows,
        val_ds=val.dataset if val is not None else None,
        class_counts=train.class_counts,
        extra=extra,
        progress=progress,
    )
    if not result.history or result.checkpoint is None:
        raise RuntimeError("training reported no checkpoint: see the worker errors above")
    files: dict[str, Path] = {}
    title = f"{cfg.model} on {Path(data).name}"
    files["curves"], files["history"] = write_run_outputs(result, work, title=title)
    model = load_classifier(result.checkpoint, ema=cfg.ema_decay is not None)
    scored = test_read or val
    metrics = None
    if scored is not None:
        metrics = evaluate_classifier(model, scored.dataset.iter_batches(batch_size=256, batch_format="numpy"), classes)
        files["per_class"] = metrics.write_per_class_csv(work / "per_class.csv")
        files["confusion"] = metrics.write_confusion_png(
            work / "confusion.png",
            title=f"{cfg.model}: top-1 {metrics.top1:.1%} on {metrics.n} {'test' if test_read else 'val'} images",
        )
    serve_keys = {"classes": classes, "image_size": cfg.image_size, "mean": cfg.mean, "std": cfg.std}
    files["model"] = save_model(model, work / "model", extra={**serve_keys, "train": cfg.to_dict()})
    ingest = {r.name: r.report().to_dict() for r in (train, val, test_read) if r is not None}
    files["ingest"] = work / "ingest_report.json"
    files["ingest"].write_text(json.dumps(ingest, indent=2))
    summary = {
        "checkpoint": result.location,
        "seconds": result.seconds,
        "steps": result.steps,
        "epochs_run": len(result.history),
        "classes": classes,
        "train": asdict(cfg),
        "final": result.history[-1],
        "evaluated_on": scored.name if scored is not None else None,
        "test": metrics.to_dict() if metrics is not None else None,
    }
    files["metrics"] = work / "metrics.json"
    files["metrics"].write_text(json.dumps(summary, indent=2, default=str))
    where = outputs.publish(files)
    return ClassifyJobResult(
        result, classes, metrics, scored.name if scored is not None else None, where, ingest, opts=opts
    )
