"""``raylens classify ...``: explain, attack and compress a trained classifier checkpoint.

    raylens classify explain CHECKPOINT DATA [--n 12] [--out gradcam.png] [--layer NAME]
    raylens classify attack CHECKPOINT DATA [--eps 1/255,4/255,8/255] [--attacks fgsm,pgd] [--json OUT]
    raylens classify compress CHECKPOINT DATA --eval EVAL --out DIR [--student small_cnn] [--steps onnx,int8,prune,distill]

``DATA`` is ``digits``, ``digits:heldout`` or a class folder ``root/<class>/<image>`` whose classes
are the checkpoint's; files that do not decode are skipped and counted. ``CHECKPOINT`` is a
``classifier`` checkpoint (``raylens train classify`` writes them). Run alone as
``python -m raylens.cli_classify_tools``.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["classify_app", "parse_eps", "main"]

classify_app = typer.Typer(
    help="Explain (Grad-CAM), attack (FGSM/PGD) and compress (ONNX, INT8, pruning, distillation) a classifier "
    "checkpoint. DATA is `digits`, `digits:heldout` or a class folder with the checkpoint's classes.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
console = Console()


def parse_eps(text: str) -> list[float]:
    """``"0,1/255,8/255,0.05"`` -> radii in [0, 1] pixel units.

    >>> [round(e, 4) for e in parse_eps("0, 4/255, 0.1")]
    [0.0, 0.0157, 0.1]
    """
    out = []
    for part in text.split(","):
        part = part.strip()
        try:
            value = float(Fraction(part))
        except (ValueError, ZeroDivisionError):
            raise typer.BadParameter(
                f"{part!r} is no number; write eps like 8/255 or 0.03", param_hint="--eps"
            ) from None
        if not 0 <= value <= 1:
            raise typer.BadParameter(
                f"{part} is outside [0, 1] (eps is in pixel units: 8/255 = 0.031)", param_hint="--eps"
            )
        out.append(value)
    if not out:
        raise typer.BadParameter("give at least one eps, e.g. 4/255,8/255", param_hint="--eps")
    return out


def _load_torch(checkpoint: Path) -> tuple[Any, dict[str, Any]]:
    """The torch model and the serving keys (classes, image_size, mean, std) of a classifier checkpoint."""
    from raylens.classify.common import IMAGENET_MEAN, IMAGENET_STD
    from raylens.classify.onnx_export import is_onnx_checkpoint
    from raylens.errors import CheckpointError
    from raylens.models import load_model, read_checkpoint

    try:
        ck = read_checkpoint(checkpoint)
    except CheckpointError as e:
        raise typer.BadParameter(str(e), param_hint="CHECKPOINT") from None
    if ck.kind != "classifier" or "classes" not in ck.config or "image_size" not in ck.config:
        raise typer.BadParameter(
            f"{str(checkpoint)!r} holds a {ck.kind} model without classes/image_size; give a classifier checkpoint",
            param_hint="CHECKPOINT",
        )
    if is_onnx_checkpoint(ck.config):
        raise typer.BadParameter(
            f"{str(checkpoint)!r} is an ONNX Runtime model; Grad-CAM, attacks and compression need gradients: "
            "give the PyTorch checkpoint it was exported from",
            param_hint="CHECKPOINT",
        )
    keys = {
        "classes": list(ck.config["classes"]),
        "image_size": int(ck.config["image_size"]),
        "mean": tuple(ck.config.get("mean", IMAGENET_MEAN)),
        "std": tuple(ck.config.get("std", IMAGENET_STD)),
    }
    return load_model(ck.directory), keys


def _data(spec: str, keys: dict[str, Any], limit: int | None, hint: str = "DATA", seed: int = 0):
    from raylens.classify.data import load_labelled

    try:
        data = load_labelled(spec, image_size=keys["image_size"], classes=keys["classes"], limit=limit, seed=seed)
    except (ValueError, FileNotFoundError) as e:
        raise typer.BadParameter(str(e), param_hint=hint) from None
    if data.skipped:
        console.print(
            f"[yellow]{len(data.skipped)} file(s) of {spec} skipped[/yellow], e.g. {data.skipped[0].path}: "
            f"{data.skipped[0].reason}"
        )
    return data


@classify_app.command()
def explain(
    checkpoint: Path = typer.Argument(..., help="A classifier checkpoint directory (PyTorch)."),
    data: str = typer.Argument(..., help="digits, digits:heldout or a class folder."),
    n: int = typer.Option(12, "--n", min=1, max=200, help="How many images to explain."),
    out: Path = typer.Option(Path("gradcam.png"), "--out", help="The PNG grid (image | overlay per image)."),
    layer: str | None = typer.Option(None, help="Module to explain (default: the last feature map / ViT block norm)."),
    target: str | None = typer.Option(None, help="Explain this class for every image (default: each prediction)."),
    cols: int = typer.Option(4, min=1, help="Images per row of the grid."),
    seed: int = typer.Option(0, help="Which images (a seeded choice)."),
):
    """Grad-CAM overlays of chosen images in a PNG grid (captum's LayerGradCam)."""
    from raylens.classify.gradcam import grad_cam, save_cam_grid

    model, keys = _load_torch(checkpoint)
    d = _data(data, keys, n, seed=seed)
    tgt = None
    if target is not None:
        if target not in keys["classes"]:
            raise typer.BadParameter(
                f"{target!r} is not a class of the model: {keys['classes'][:12]}", param_hint="--target"
            )
        tgt = [keys["classes"].index(target)] * len(d)
    try:
        cam = grad_cam(model, d.pixels, target=tgt, layer=layer, mean=keys["mean"], std=keys["std"])
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--layer") from None
    path = save_cam_grid(d.pixels, cam, out, classes=keys["classes"], labels=d.labels.numpy(), cols=cols)
    right = int((cam.predicted == d.labels.numpy()).sum())
    console.print(f"Grad-CAM at [bold]{cam.layer}[/bold] of {len(d)} images ({right} predicted right): {path}")


@classify_app.command()
def attack(
    checkpoint: Path = typer.Argument(..., help="A classifier checkpoint directory (PyTorch)."),
    data: str = typer.Argument(..., help="digits, digits:heldout or a class folder."),
    eps: str = typer.Option("1/255,2/255,4/255,8/255", help="L-inf radii in [0, 1] pixel units, comma-separated."),
    attacks: str = typer.Option("fgsm,pgd", help="fgsm, pgd or both."),
    steps: int = typer.Option(10, min=1, help="PGD steps."),
    limit: int | None = typer.Option(500, min=1, help="At most this many images (a seeded choice)."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the results as JSON."),
):
    """Accuracy under FGSM and PGD attack at each eps (captum.robust), next to the clean accuracy."""
    from raylens.classify.robust import ATTACKS, robust_accuracy

    names = [a.strip() for a in attacks.split(",") if a.strip()]
    bad = [a for a in names if a not in ATTACKS]
    if bad or not names:
        raise typer.BadParameter(f"attacks must be among {ATTACKS}, got {names}", param_hint="--attacks")
    radii = parse_eps(eps)
    model, keys = _load_torch(checkpoint)
    d = _data(data, keys, limit)
    results = robust_accuracy(
        model, d.pixels, d.labels, radii, attacks=names, pgd_steps=steps, mean=keys["mean"], std=keys["std"]
    )
    table = Table(title=f"{checkpoint.name}: accuracy under attack ({len(d)} images of {data})")
    for col in ("attack", "eps", "eps x255", "accuracy %", "clean %", "max L-inf"):
        table.add_column(col)
    for r in results:
        table.add_row(
            r.attack,
            f"{r.eps:.4f}",
            f"{255 * r.eps:.1f}",
            f"{100 * r.accuracy:.2f}",
            f"{100 * r.clean_accuracy:.2f}",
            f"{r.max_linf:.4f}",
        )
    console.print(table)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps([r.to_dict() for r in results], indent=2) + "\n")
        console.print(f"wrote {json_out}")


@classify_app.command()
def compress(
    checkpoint: Path = typer.Argument(..., help="A classifier checkpoint directory (PyTorch)."),
    data: str = typer.Argument(..., help="Training images (fine-tuning, distillation, INT8 calibration)."),
    eval_data: str = typer.Option(..., "--eval", help="Test images the table scores (e.g. digits:heldout)."),
    out: Path = typer.Option(..., "--out", help="Where the compressed checkpoints and report.{json,csv,md} go."),
    steps: str = typer.Option("onnx,int8,prune,distill", help="Any of onnx, int8, prune, distill."),
    student: str | None = typer.Option(None, help="Student architecture for distillation (a registry name)."),
    student_width: int | None = typer.Option(None, help="`width` argument of the student (raylens' own CNNs)."),
    prune_amount: float = typer.Option(0.5, min=0.0, max=0.95, help="Share of channels removed per prunable conv."),
    finetune_epochs: int = typer.Option(3, min=1, help="Fine-tuning epochs after pruning."),
    distill_epochs: int = typer.Option(10, min=1, help="Distillation epochs."),
    quantize: str = typer.Option("static", help="INT8 method: static (calibrated, CNNs) or dynamic (ViTs)."),
    threads: int = typer.Option(1, min=1, help="Threads for torch and ONNX Runtime while timing."),
):
    """ONNX export, INT8, pruning and distillation, measured against the original in one table."""
    from raylens.classify.compress import CompressConfig, compress_classifier
    from raylens.classify.distill import DistillConfig
    from raylens.classify.finetune import FineTuneConfig

    _, keys = _load_torch(checkpoint)
    try:
        cfg = CompressConfig(
            steps=tuple(s.strip() for s in steps.split(",") if s.strip()),
            prune_amount=prune_amount,
            finetune=FineTuneConfig(epochs=finetune_epochs, lr=1e-3),
            student=student,
            student_config={"width": student_width} if student_width else {},
            distill=DistillConfig(epochs=distill_epochs),
            quantize_method=quantize,
            threads=threads,
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    train = _data(data, keys, None)
    test = _data(eval_data, keys, None, hint="--eval")
    report = compress_classifier(checkpoint, train, test, out, cfg)
    console.print(report.markdown)
    console.print(f"checkpoints: {report.directories}\nreport: {out / 'report.md'}")


def main() -> None:
    classify_app()


if __name__ == "__main__":
    main()
