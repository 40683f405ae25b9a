"""``raylens train classify DATA``: labelled images in; a trained classifier, curves and test metrics out.

Registered into :data:`raylens.plugins.TRAIN_COMMANDS` on import, so ``raylens train`` lists it once
this module is imported by the CLI. The training options are :class:`~raylens.train.classify_config.ClassifyTrainConfig`'s
fields and the Ray options :class:`~raylens.train.options.RayTrainOptions`' (``--workers``, ``--gpu``,
``--storage``, ``--name``: the same name and storage resume a stopped run).

    raylens train classify digits --model small_resnet --epochs 15
    raylens train classify digits --model vit_tiny --model-arg patch_size=8 --epochs 20
    raylens train classify data/pets --val data/pets-val --image-size 224 --model timm/convnext_atto --randaugment
    raylens train classify labels.csv --label-column species --imbalance focal
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from raylens.cli_options import OptionGroup, config_options, ray_train_options
from raylens.plugins import TRAIN_COMMANDS

__all__ = ["train_classify", "classify_train_options", "parse_model_args", "metrics_table"]


def classify_train_options() -> OptionGroup:
    """:class:`ClassifyTrainConfig` on the command line (dict and normalisation fields only in ``--config``)."""
    from raylens.train.classify_config import IMBALANCE, PRECISIONS, ClassifyTrainConfig

    return OptionGroup(
        ClassifyTrainConfig,
        param="cfg",
        section="train",
        hidden=("model_kwargs", "adversarial_args", "mean", "std"),
        choices={"precision": PRECISIONS, "imbalance": IMBALANCE},
        panel="Training (ClassifyTrainConfig)",
    )


def parse_model_args(items: list[str] | None) -> dict[str, Any]:
    """``["patch_size=8", "depths=[1,1,1]"]`` -> ``{"patch_size": 8, "depths": [1, 1, 1]}`` (values read as YAML).

    >>> parse_model_args(["patch_size=8", "dropout=0.1", "name=x"])
    {'patch_size': 8, 'dropout': 0.1, 'name': 'x'}
    """
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise typer.BadParameter(
                f"expected KEY=VALUE (e.g. patch_size=8), got {item!r}", param_hint="'--model-arg'"
            )
        out[key.strip()] = yaml.safe_load(value)
    return out


def metrics_table(metrics, *, title: str) -> Table:
    """Top-1/top-5 and macro/micro precision, recall and F1 as a rich table."""
    table = Table(title=title, title_justify="left", show_edge=False)
    table.add_column("metric")
    table.add_column("macro", justify="right")
    table.add_column("micro", justify="right")
    table.add_row("top-1", f"{metrics.top1:.4f}", "")
    table.add_row("top-5", f"{metrics.top5:.4f}", "")
    for name in ("precision", "recall", "f1"):
        table.add_row(name, f"{getattr(metrics, name + '_macro'):.4f}", f"{getattr(metrics, name + '_micro'):.4f}")
    if metrics.loss is not None:
        table.add_row("cross-entropy", f"{metrics.loss:.4f}", "")
    return table


@config_options(classify_train_options(), ray_train_options())
def train_classify(
    data: str = typer.Argument(
        ...,
        help="Training data: 'digits' (scikit-learn's, upsampled), a folder of class subfolders, or a label table "
        "(.csv/.tsv/.jsonl/.parquet with an image column and a label column).",
    ),
    val: str | None = typer.Option(
        None, "--val", help="Validation data (same kinds). Default: --val-fraction of the training data."
    ),
    test: str | None = typer.Option(
        None, "--test", help="Test data, scored once at the end (digits: the held-out quarter by default)."
    ),
    val_fraction: float = typer.Option(
        0.1, "--val-fraction", help="With no --val: share of training rows kept for validation (0: none)."
    ),
    classes: list[str] | None = typer.Option(
        None, "--classes", help="The class list, repeatable or comma-separated (default: the data's own, sorted)."
    ),
    label_column: str = typer.Option("label", "--label-column", help="A label table's label column."),
    path_column: str | None = typer.Option(
        None, "--path-column", help="A label table's image column (default: found by name)."
    ),
    model_arg: list[str] | None = typer.Option(
        None, "--model-arg", metavar="KEY=VALUE", help="A model factory argument, e.g. patch_size=8; repeatable."
    ),
    workdir: Path | None = typer.Option(
        None,
        help="Where curves.png, history.csv, metrics.json, per_class.csv, confusion.png and model/ go "
        "(default: STORAGE/NAME/outputs, beside the checkpoints).",
    ),
    *,
    cfg,
    opts,
):
    """Train an image classifier (ViT, CNN, timm models) with Ray Train on CPU workers or GPUs.

    Prints one line per epoch, then the test metrics (top-1/top-5, precision/recall/F1 macro and micro)
    and where the curves, per-class CSV, confusion matrix and the servable model/ are.

    Examples:

      raylens train classify digits --model small_resnet --epochs 15

      raylens train classify digits --model vit_tiny --model-arg patch_size=8 --epochs 20

      raylens train classify data/pets --val data/pets-val --image-size 224 --model timm/convnext_atto --randaugment --gpu
    """
    from raylens.train.outputs import print_outputs
    from raylens.train.ray_classify import ClassifyJob, run_classify_job

    console = Console()
    extra = parse_model_args(model_arg)
    if extra:
        cfg = dataclasses.replace(cfg, model_kwargs={**cfg.model_kwargs, **extra})
    names = [p.strip() for c in classes or [] for p in c.split(",") if p.strip()] or None
    try:
        job = ClassifyJob(
            data=data,
            val=val,
            test=test,
            val_fraction=val_fraction,
            classes=names,
            label_column=label_column,
            path_column=path_column,
            workdir=workdir,
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    console.print(
        f"[green]train[/green] {cfg.model} on {data} for {cfg.epochs} epochs, "
        f"{opts.num_workers} worker(s) x batch {cfg.batch_size}, images {cfg.image_size}px"
    )
    out = run_classify_job(job, cfg, opts)
    for name, report in out.ingest.items():
        skipped = report["n_skipped"]
        console.print(f"[green]ingest[/green] {name}: {report['n_ok']} rows read, {skipped} skipped", soft_wrap=True)
        for row in report["skipped"][:5]:
            console.print(f"    skipped {row['path']}: {row['reason']}")
        if skipped > 5:
            console.print(f"    ... and {skipped - 5} more (see {out.files['ingest']})")
    last = out.train.history[-1]
    console.print(
        f"[green]trained[/green] {len(out.train.history)} epochs, {out.train.steps} steps in {out.train.seconds:.0f} s"
        + (" (stopped early)" if last.get("stopped_early") else "")
    )
    if out.test_metrics is not None:
        console.print(f"[green]scored[/green] on {out.evaluated_on}", soft_wrap=True)
        console.print(metrics_table(out.test_metrics, title="final metrics"))
    print_outputs(console, out.opts, out.train.location, out.files)


TRAIN_COMMANDS.register("classify", doc="Image classifiers (ViT, CNNs, timm) on labelled images.")(train_classify)
