"""Make a trained classifier small and fast, and measure each step against the original in one table.

From one ``classifier`` checkpoint, :func:`compress_classifier` writes, under ``out/``:

* ``onnx/``: the model exported with torch's dynamo exporter, served by ONNX Runtime;
* ``int8/``: that ONNX model with INT8 weights and activations (ONNX Runtime static quantization,
  calibrated on training images);
* ``pruned/``: structured L1 channel pruning (channels really removed), then fine-tuned;
* ``student/``: a smaller architecture trained by knowledge distillation from the original;
* ``report.json``/``.csv``/``.md``: the table (:mod:`raylens.classify.report`).

Every directory is a checkpoint :func:`raylens.serve.classify.load_classifier` serves (PyTorch
or ONNX Runtime), with the original's classes and preprocessing.

Given a trained checkpoint (skipped as a doctest: it trains and exports models):

>>> from raylens.classify.data import load_labelled
>>> train = load_labelled("digits", image_size=32); test = load_labelled("digits:heldout", image_size=32)  # doctest: +SKIP
>>> report = compress_classifier("runs/resnet", train, test, "runs/small", CompressConfig(student="small-cnn"))  # doctest: +SKIP
>>> print(report.markdown)  # doctest: +SKIP
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from raylens.classify.data import Labelled
from raylens.classify.distill import DistillConfig
from raylens.classify.finetune import FineTuneConfig
from raylens.classify.report import CompressionRow, Variant, compare, markdown_table, torch_forward, write_report

__all__ = ["STEPS", "CompressConfig", "CompressionReport", "compress_classifier", "load_variant"]

STEPS = ("onnx", "int8", "prune", "distill")


@dataclass
class CompressConfig:
    """What :func:`compress_classifier` does."""

    steps: tuple[str, ...] = STEPS
    """Which of ``onnx``, ``int8``, ``prune``, ``distill`` to run (``int8`` also exports ONNX)."""
    prune_amount: float = 0.5
    """Share of the channels removed from each prunable convolution."""
    prune_round_to: int = 8
    """Keep a multiple of this many channels."""
    finetune: FineTuneConfig = field(default_factory=lambda: FineTuneConfig(epochs=3, lr=1e-3))
    """Fine-tuning after pruning (mean/std are set from the checkpoint)."""
    student: str | None = None
    """Registry name of the student architecture (``num_classes`` is set); required by ``distill``."""
    student_config: dict[str, Any] = field(default_factory=dict)
    """More ``create_model`` arguments for the student."""
    distill: DistillConfig = field(default_factory=lambda: DistillConfig(epochs=10))
    """Distillation training (mean/std are set from the checkpoint)."""
    quantize_method: str = "static"
    """``static`` (calibrated, for CNNs) or ``dynamic`` (weights only, for ViTs)."""
    calibration_images: int = 256
    """Training images used to calibrate the INT8 activation ranges."""
    threads: int = 1
    """Threads for torch and ONNX Runtime while timing (1: a serving replica's core)."""
    latency_repeats: int = 30
    """Timed runs per variant at batch 1 (a third as many at batch 32)."""

    def __post_init__(self):
        self.steps = tuple(self.steps)
        unknown = [s for s in self.steps if s not in STEPS]
        if unknown or not self.steps:
            raise ValueError(f"`steps` must name some of {STEPS}, got {list(self.steps)}")
        if "distill" in self.steps and not self.student:
            raise ValueError(
                "`student` must name the student architecture when `steps` has 'distill' (e.g. 'small-cnn')"
            )
        if not 0 <= self.prune_amount < 1:
            raise ValueError(f"`prune_amount` must be in [0, 1), got {self.prune_amount!r}")
        from raylens.classify.quantize import QUANT_METHODS

        if self.quantize_method not in QUANT_METHODS:
            raise ValueError(f"`quantize_method` must be one of {QUANT_METHODS}, got {self.quantize_method!r}")
        for name in ("calibration_images", "threads", "latency_repeats", "prune_round_to"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"`{name}` must be an int >= 1, got {v!r}")


@dataclass
class CompressionReport:
    """The table and where everything went."""

    rows: list[CompressionRow]
    directories: dict[str, str]
    """``{variant: checkpoint directory}``."""
    meta: dict[str, Any]
    """Machine, threads, test set size, the training histories and timings of each step."""

    @property
    def markdown(self) -> str:
        return markdown_table(self.rows)

    def row(self, variant: str) -> CompressionRow:
        for r in self.rows:
            if r.variant == variant:
                return r
        raise KeyError(f"no variant {variant!r}; variants: {[r.variant for r in self.rows]}")


def load_variant(directory: str | Path, name: str | None = None, *, threads: int = 1) -> Variant:
    """A checkpoint directory (PyTorch or ONNX) as a :class:`~raylens.classify.report.Variant`."""
    from raylens.classify.common import count_parameters
    from raylens.classify.onnx_export import OnnxModel, is_onnx_checkpoint
    from raylens.models import load_model, read_checkpoint

    ck = read_checkpoint(directory)
    if ck.kind != "classifier":
        raise ValueError(f"{str(ck.directory)!r} holds a {ck.kind} model, not a classifier")
    size = ck.weights.stat().st_size
    if is_onnx_checkpoint(ck.config):
        m = OnnxModel(ck.weights, threads=threads)
        return Variant(
            name or ck.directory.name, "onnxruntime", m.run, int(ck.config.get("params", 0)), size, str(ck.directory)
        )
    model = load_model(ck.directory)
    return Variant(
        name or ck.directory.name, "torch", torch_forward(model), count_parameters(model), size, str(ck.directory)
    )


def _serving_keys(config: dict[str, Any]) -> dict[str, Any]:
    from raylens.classify.common import IMAGENET_MEAN, IMAGENET_STD

    return {
        "classes": list(config["classes"]),
        "image_size": int(config["image_size"]),
        "mean": tuple(config.get("mean", IMAGENET_MEAN)),
        "std": tuple(config.get("std", IMAGENET_STD)),
    }


def compress_classifier(
    checkpoint: str | Path,
    train: Labelled,
    test: Labelled,
    out: str | Path,
    config: CompressConfig | None = None,
) -> CompressionReport:
    """Run the steps of ``config`` on the classifier at ``checkpoint`` and write the table under ``out``.

    ``train`` feeds fine-tuning, distillation and INT8 calibration; ``test`` is what the table scores.
    Both must use the checkpoint's classes (load them with ``classes=`` the checkpoint's).

    Raises:
        ValueError: a checkpoint that is no classifier, or data with other classes.
    """
    import dataclasses

    import torch

    from raylens.classify.common import count_parameters
    from raylens.classify.distill import distill
    from raylens.classify.finetune import fine_tune
    from raylens.classify.onnx_export import export_onnx, save_onnx_classifier
    from raylens.classify.prune import prune_channels
    from raylens.classify.quantize import quantize_onnx_int8
    from raylens.models import create_model, load_model, read_checkpoint
    from raylens.serve.classify import save_classifier

    cfg = config or CompressConfig()
    ck = read_checkpoint(checkpoint)
    if ck.kind != "classifier" or "classes" not in ck.config or "image_size" not in ck.config:
        raise ValueError(
            f"{str(ck.directory)!r} must be a classifier checkpoint with `classes` and `image_size` in config.json "
            f"(it holds a {ck.kind} model); save one with raylens.serve.classify.save_classifier"
        )
    keys = _serving_keys(ck.config)
    for part, data in (("train", train), ("test", test)):
        if list(data.classes) != keys["classes"]:
            raise ValueError(
                f"the {part} data's classes {data.classes[:12]} are not the checkpoint's {keys['classes'][:12]}"
            )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mean, std, size = keys["mean"], keys["std"], keys["image_size"]
    original = load_model(ck.directory)
    params = count_parameters(original)
    dirs: dict[str, str] = {"original": str(ck.directory)}
    meta: dict[str, Any] = {"checkpoint": str(ck.directory), "arch": ck.arch, "steps": list(cfg.steps), "seconds": {}}
    provenance = {"source_checkpoint_hash": ck.checkpoint_hash, "params": params}

    if "onnx" in cfg.steps or "int8" in cfg.steps:
        t = time.perf_counter()
        onnx_file = export_onnx(original, out / "onnx" / "model.onnx", image_size=size)
        dirs["onnx"] = str(
            save_onnx_classifier(
                onnx_file, out / "onnx", arch=ck.arch, model_config=ck.model_config, **keys, extra=provenance
            )
        )
        meta["seconds"]["onnx"] = time.perf_counter() - t
    if "int8" in cfg.steps:
        t = time.perf_counter()
        calib = train.normalized(mean, std)[: cfg.calibration_images]
        q = quantize_onnx_int8(
            out / "onnx" / "model.onnx", out / "int8" / "model.onnx", calib, method=cfg.quantize_method
        )
        quant = {"method": cfg.quantize_method, "format": "QDQ", "weights": "int8 per-channel", "activations": "uint8"}
        if cfg.quantize_method == "dynamic":
            quant = {"method": "dynamic", "weights": "int8 per-channel", "activations": "dynamic uint8"}
        quant["calibration_images"] = len(calib) if cfg.quantize_method == "static" else 0
        dirs["int8"] = str(
            save_onnx_classifier(
                q,
                out / "int8",
                arch=ck.arch,
                model_config=ck.model_config,
                **keys,
                extra={**provenance, "quantization": quant},
            )
        )
        meta["seconds"]["int8"] = time.perf_counter() - t
    if "prune" in cfg.steps:
        t = time.perf_counter()
        result = prune_channels(
            original, cfg.prune_amount, example_input=torch.rand(1, 3, size, size), round_to=cfg.prune_round_to
        )
        ft = fine_tune(result.model, train.pixels, train.labels, dataclasses.replace(cfg.finetune, mean=mean, std=std))
        dirs["pruned"] = str(
            save_classifier(
                result.model,
                out / "pruned",
                **keys,
                extra={"source_checkpoint_hash": ck.checkpoint_hash, "pruning": {"amount": cfg.prune_amount}},
            )
        )
        meta["prune"] = {"channels": result.channels, "finetune_history": ft.history}
        meta["seconds"]["prune"] = time.perf_counter() - t
    if "distill" in cfg.steps:
        t = time.perf_counter()
        torch.manual_seed(cfg.distill.seed)
        student = create_model(cfg.student, **{**cfg.student_config, "num_classes": len(keys["classes"])})
        dres = distill(
            original, student, train.pixels, train.labels, dataclasses.replace(cfg.distill, mean=mean, std=std)
        )
        dirs["student"] = str(
            save_classifier(
                student,
                out / "student",
                **keys,
                extra={"teacher_checkpoint_hash": ck.checkpoint_hash, "distillation": asdict(cfg.distill)},
            )
        )
        meta["distill"] = {"student": cfg.student, "history": dres.history}
        meta["seconds"]["distill"] = time.perf_counter() - t

    variants = [
        Variant("original", "torch", torch_forward(original), params, ck.weights.stat().st_size, str(ck.directory))
    ]
    for name in ("onnx", "int8", "pruned", "student"):
        if name in dirs:
            variants.append(load_variant(dirs[name], name, threads=cfg.threads))
    x = test.normalized(mean, std)
    rows = compare(variants, x, test.labels.numpy(), threads=cfg.threads, repeats=cfg.latency_repeats)
    meta.update(
        {
            "test_images": len(test),
            "train_images": len(train),
            "threads": cfg.threads,
            "cpu": platform.processor() or platform.machine(),
            "load_average": _load_average(),
        }
    )
    write_report(rows, out, {"directories": dirs, **meta})
    return CompressionReport(rows, dirs, meta)


def _load_average() -> list[float] | None:
    try:
        import os

        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None
