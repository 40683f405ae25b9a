"""Write a tiny dataset in every natural-image format, read each back through Ray Data, print reports.

    python examples/read_formats.py [--out /tmp/raylens-formats] [--n 12]

Formats: captions CSV and JSONL (image paths), an img2dataset-style list (``url``/``TEXT`` columns,
found without renaming), parquet with embedded image bytes, a class-folder tree (ImageNet style) and
WebDataset tar shards (img2dataset layout). Every reader returns the same ``ReadResult``. Each one gets a couple of bad
rows on purpose (a corrupt image, a missing caption, ...) so the ingest reports have something to
say. The folder is read with train-time augmentation (``TrainAugment``), the others with the eval
preprocessing; batches then go through CutMix/MixUp as a classifier's training step would.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from raylens.data.augment import TrainAugment
from raylens.data.images import ClipPreprocess
from raylens.data.mix import MixUpCutMix
from raylens.data.webdataset import write_tar, write_webdataset_shards

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220)}


def _picture(colour: str, i: int) -> np.ndarray:
    img = np.full((48, 64, 3), 245, np.uint8)
    img[8 + i % 10 : 32 + i % 10, 10 + 2 * i % 30 : 34 + 2 * i % 30] = COLOURS[colour]
    return img


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def write_all(out: Path, n: int) -> dict[str, Path | str]:
    """One tiny dataset per format under ``out``, each with a few bad rows."""
    names = list(COLOURS)
    samples = [(names[i % 3], _picture(names[i % 3], i)) for i in range(n)]
    images = out / "images"
    images.mkdir(parents=True)
    rows = []
    for i, (colour, img) in enumerate(samples):
        Image.fromarray(img).save(images / f"{i:04d}.png")
        rows.append({"path": f"images/{i:04d}.png", "caption": f"a {colour} square", "label": i % 3})
    (images / "0001.png").write_bytes(b"not a png")  # bad: corrupt image
    rows.append({"path": "images/missing.png", "caption": "a lost square", "label": 0})  # bad: no file
    rows[2]["caption"] = ""  # bad: missing caption

    (out / "captions.csv").write_text(
        "path,caption,label\n" + "".join(f"{r['path']},{r['caption']},{r['label']}\n" for r in rows)
    )
    (out / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "img2dataset.tsv").write_text(
        "url\tTEXT\n" + "".join(f"{(out / r['path']).resolve().as_uri()}\t{r['caption']}\n" for r in rows)
    )
    pq.write_table(
        pa.table(
            {
                "path": [f"sample-{i}" for i in range(n)] + ["sample-bad"],
                "caption": [f"a {c} square" for c, _ in samples] + ["corrupt bytes"],
                "image_bytes": [_png(img) for _, img in samples] + [b"\x89PNG truncated"],
            }
        ),
        out / "embedded.parquet",
    )

    for i, (colour, img) in enumerate(samples):
        folder = out / "folders" / f"{colour}_square"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:04d}.png")
    (out / "folders" / "red_square" / "notes.txt").write_text("not an image")

    write_webdataset_shards(((img, f"a {c} square") for c, img in samples), out / "wds", shard_size=max(1, n // 2))
    write_tar(out / "wds" / "99999.tar", [("orphan.jpg", _png(samples[0][1])), ("lonely.txt", b"no image")])
    return {
        "csv": out / "captions.csv",
        "jsonl": out / "captions.jsonl",
        "img2dataset": out / "img2dataset.tsv",
        "parquet": out / "embedded.parquet",
        "folders": out / "folders",
        "wds": str(out / "wds" / "*.tar"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "raylens-formats")
    ap.add_argument("--n", type=int, default=12, help="images per dataset")
    args = ap.parse_args()

    from raylens.data.ray_folders import read_image_folder
    from raylens.data.ray_reader import read_captioned_images
    from raylens.data.ray_webdataset import read_webdataset
    from raylens.runtime import init_ray

    shutil.rmtree(args.out, ignore_errors=True)
    src = write_all(args.out, args.n)
    init_ray()
    pre = ClipPreprocess(32)
    readers = {
        "csv": read_captioned_images(src["csv"], pre, batch_size=4),
        "jsonl": read_captioned_images(src["jsonl"], pre, batch_size=4),
        "img2dataset list (url, TEXT)": read_captioned_images(src["img2dataset"], pre, batch_size=4),
        "parquet (embedded bytes)": read_captioned_images(src["parquet"], pre, batch_size=4),
        "class folders (TrainAugment)": read_image_folder(
            src["folders"], TrainAugment(32, hflip=True, seed=0), shuffle_seed=0, batch_size=4
        ),
        "webdataset": read_webdataset(src["wds"], pre, batch_size=4),
    }
    for name, data in readers.items():
        n_rows = sum(len(b["path"]) for b in data.dataset.iter_batches(batch_size=4, batch_format="numpy"))
        report = data.report()  # every reader returns a ReadResult: the dataset plus its report
        print(f"{name:>30}: {n_rows} rows | {report.summary()}")
        for skip in report.skipped:
            print(f"{'':>32}skipped {skip.path}: {skip.reason}")

    folders = readers["class folders (TrainAugment)"]
    batch = next(iter(folders.dataset.iter_batches(batch_size=4, batch_format="numpy")))
    mixed = MixUpCutMix(num_classes=len(folders.classes))(batch["image"], batch["label"], np.random.default_rng(0))
    print(
        f"classes {folders.classes}; a {mixed.kind} batch: images {mixed.images.shape}, "
        f"lam {mixed.lam:.2f}, soft targets of row 0 {[round(float(t), 2) for t in mixed.targets[0]]}"
    )


if __name__ == "__main__":
    main()
