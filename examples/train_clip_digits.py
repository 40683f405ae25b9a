"""Train a small CLIP on scikit-learn's handwritten digits with Ray Train, and read its zero-shot accuracy.

    python examples/train_clip_digits.py [--steps 600] [--workers 2] [--name run1]

Copy this for your own data: swap ``read_digits`` for ``read_captioned_images`` (CSV/JSONL/parquet),
``read_image_folder`` or ``read_webdataset``, and the class names / prompt for yours.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from raylens.data.digits import DIGIT_CLASSES, ZEROSHOT_TEMPLATE
from raylens.data.ray_digits import read_digits
from raylens.models import create_model
from raylens.runtime import init_ray
from raylens.train import ClipTrainConfig, RayTrainOptions
from raylens.train.ray_clip import fit_clip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs"))
    ap.add_argument("--name", default=None, help="run name: the same --name and --out resume a stopped run")
    args = ap.parse_args()

    init_ray()
    preprocess = create_model("clip-tiny").preprocess  # open_clip's eval transform, at 32 px
    train = read_digits(preprocess, "train").dataset  # captions like "a handwritten seven"
    heldout = read_digits(preprocess, "heldout").dataset  # never seen in training
    cfg = ClipTrainConfig(
        model="clip-tiny",
        max_steps=args.steps,
        batch_size=64,
        lr=3e-3,
        warmup_steps=30,
        log_every=25,
        eval_every=args.steps // 4,
        zeroshot_classes=DIGIT_CLASSES,  # "0" ... "9"
        zeroshot_templates=[ZEROSHOT_TEMPLATE],  # "a photo of the digit {}"
    )
    result = fit_clip(
        train,
        cfg,
        RayTrainOptions(num_workers=args.workers, storage_path=str(args.out.resolve()), name=args.name),
        eval_ds=heldout,
    )
    last = result.history[-1]
    print(
        f"zero-shot accuracy on held-out digits: {last['zeroshot_top1']:.3f} "
        f"(image->text R@1 {last['i2t_R@1']:.3f}) in {result.seconds:.0f} s"
    )
    print(f"checkpoint: {result.checkpoint}  (curves.png, history.csv and train_state.pt inside)")


if __name__ == "__main__":
    main()
