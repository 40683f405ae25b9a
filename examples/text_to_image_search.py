"""Train a small CLIP on your captioned images with Ray, index a held-out split, and search it.

    python examples/text_to_image_search.py CAPTIONS.csv --steps 700
    python examples/text_to_image_search.py --shapes      # generate the demo's shapes data first

CAPTIONS.csv has columns path,caption,split (split = train | heldout); paths are relative to it.
On a cluster: ray job submit --working-dir . -- python examples/text_to_image_search.py s3://...
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from raylens.data.ray_reader import read_captioned_images
from raylens.embed.ray_embed import embed_images
from raylens.index import VectorIndex
from raylens.models import create_model
from raylens.runtime import init_ray
from raylens.search import Searcher
from raylens.train import ClipTrainConfig
from raylens.train.ray_clip import RayTrainOptions, fit_clip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("captions", nargs="?", help="captions .csv/.jsonl with path, caption, split")
    ap.add_argument("--shapes", action="store_true", help="generate the shapes dataset and use it")
    ap.add_argument("--out", default="example-run", help="output directory")
    ap.add_argument("--model", default="clip-tiny")
    ap.add_argument("--steps", type=int, default=700)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--gpu", action="store_true", help="one GPU per training worker / embedding actor")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    if args.shapes:
        from raylens_domains.natural.shapes import generate_shapes

        args.captions = str(generate_shapes(out / "data").captions_path)
    if not args.captions:
        ap.error("give a captions file, or --shapes")

    init_ray()
    pre = create_model(args.model).preprocess
    train = read_captioned_images(args.captions, pre, split="train")
    result = fit_clip(
        train.dataset,
        ClipTrainConfig(model=args.model, max_steps=args.steps, warmup_steps=min(30, args.steps // 10), lr=2e-3),
        RayTrainOptions(num_workers=args.workers, use_gpu=args.gpu, storage_path=str(out / "runs")),
    )
    print(train.report().summary())

    held = read_captioned_images(args.captions, pre, split="heldout")
    rows = embed_images(
        held, args.model, str(result.checkpoint), num_actors=args.workers, num_gpus=1 if args.gpu else 0
    ).take_all()
    model = create_model(args.model, pretrained=str(result.checkpoint))
    index = VectorIndex.build(
        np.stack([r["embedding"] for r in rows]),
        [{k: str(v) for k, v in r.items() if k != "embedding"} for r in rows],
        model=args.model,
        checkpoint_hash=model.checkpoint_hash,
        checkpoint=str(result.checkpoint),
    )
    index.save(out / "index")
    searcher = Searcher(model, index)
    for query in ("a red circle", "a blue star"):
        print(f"\n{query!r}")
        for hit in searcher.text(query, k=5):
            print(f"  {hit.score:.3f}  {hit.caption}  {hit.path}")
    print(f"\nindex saved in {out / 'index'}; try: raylens search {out / 'index'} 'a green square'")


if __name__ == "__main__":
    main()
