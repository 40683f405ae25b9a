"""Make a digits classifier small and fast, explain it and attack it; measure everything against the original.

    python examples/classify_compress.py                               # trains a small ResNet teacher here first
    python examples/classify_compress.py --checkpoint runs/classify-digits/small_resnet/model
    python examples/classify_compress.py --teacher-epochs 4 --distill-epochs 6 --out runs/quick

Writes under ``--out``: the compressed checkpoints (``small/onnx``, ``small/int8``, ``small/pruned``,
``small/student``; each one servable by the /classify endpoint), ``small/report.{md,csv,json}`` (the
table: accuracy delta, parameter and file size ratio, CPU latency ratio at batch 1 and 32),
``gradcam.png`` and ``attack.json``, and ``targets.json``: the issue's targets, measured:

* the distilled student keeps >= 98% of the teacher's accuracy at <= 1/4 of its parameters;
* INT8 stays within 1 point of FP32 and is >= 2x faster on CPU at batch 1.

Copy this for your own data: give ``--checkpoint`` a classifier checkpoint of yours and ``--data``/``--eval``
class folders with its classes.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from raylens.classify import (
    CompressConfig,
    DistillConfig,
    FineTuneConfig,
    compress_classifier,
    fine_tune,
    grad_cam,
    load_labelled,
    robust_accuracy,
    save_cam_grid,
)
from raylens.classify.common import IMAGENET_MEAN, IMAGENET_STD, count_parameters
from raylens.models import create_model, load_model, read_checkpoint
from raylens.serve.classify import save_classifier


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=None, help="a classifier checkpoint (default: train one here)")
    ap.add_argument("--data", default="digits", help="training images: digits or a class folder")
    ap.add_argument("--eval", default="digits:heldout", help="test images: digits:heldout or a class folder")
    ap.add_argument("--teacher-epochs", type=int, default=8)
    ap.add_argument("--student", default="small_cnn")
    ap.add_argument("--student-width", type=int, default=12)
    ap.add_argument("--distill-epochs", type=int, default=15)
    ap.add_argument("--out", type=Path, default=Path("runs/classify-compress"))
    args = ap.parse_args()
    torch.set_num_threads(1)  # the measurements run on one core, as a serving replica does

    ckpt = args.checkpoint
    if ckpt is None:
        train = load_labelled(args.data, image_size=32)
        torch.manual_seed(0)
        teacher = create_model("small_resnet", num_classes=len(train.classes))
        fine_tune(teacher, train.pixels, train.labels, FineTuneConfig(epochs=args.teacher_epochs, lr=3e-3))
        ckpt = save_classifier(
            teacher, args.out / "teacher", classes=train.classes, image_size=32, mean=IMAGENET_MEAN, std=IMAGENET_STD
        )
    cfg = read_checkpoint(ckpt).config
    size, classes = int(cfg["image_size"]), list(cfg["classes"])
    mean, std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
    train = load_labelled(args.data, image_size=size, classes=classes)
    test = load_labelled(args.eval, image_size=size, classes=classes)

    report = compress_classifier(
        ckpt,
        train,
        test,
        args.out / "small",
        CompressConfig(
            student=args.student,
            student_config={"width": args.student_width},
            distill=DistillConfig(epochs=args.distill_epochs, lr=3e-3),
            latency_repeats=60,
        ),
    )
    print(report.markdown)

    model = load_model(ckpt)
    cam = grad_cam(model, test.pixels[:12], mean=mean, std=std)
    save_cam_grid(test.pixels[:12], cam, args.out / "gradcam.png", classes=classes, labels=test.labels[:12].numpy())
    attacks = robust_accuracy(model, test.pixels, test.labels, (2 / 255, 8 / 255), pgd_steps=10, mean=mean, std=std)
    (args.out / "attack.json").write_text(json.dumps([a.to_dict() for a in attacks], indent=2))
    for a in attacks:
        print(
            f"{a.attack} eps={255 * a.eps:.0f}/255: top-1 {100 * a.accuracy:.2f}% (clean {100 * a.clean_accuracy:.2f}%)"
        )

    original, student, int8, onnx = (report.row(n) for n in ("original", "student", "int8", "onnx"))
    teacher_params = count_parameters(model)
    targets = {
        "student_keeps_fraction_of_teacher_accuracy": round(student.accuracy / original.accuracy, 4),
        "student_param_fraction": round(student.params / teacher_params, 4),
        "distillation_target_met": student.accuracy >= 0.98 * original.accuracy
        and student.params <= teacher_params / 4,
        "int8_accuracy_delta_points": round(int8.accuracy_delta_points, 2),
        "int8_speedup_b1_vs_fp32_torch": round(int8.speedup_b1, 2),
        "int8_speedup_b1_vs_fp32_onnxruntime": round(onnx.latency_b1_ms / int8.latency_b1_ms, 2),
        "int8_target_met": abs(int8.accuracy_delta_points) <= 1.0 and int8.speedup_b1 >= 2.0,
        "machine": f"{os.cpu_count()} cores, load average {os.getloadavg()}",
    }
    (args.out / "targets.json").write_text(json.dumps(targets, indent=2))
    print(json.dumps(targets, indent=2))


if __name__ == "__main__":
    main()
