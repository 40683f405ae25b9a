"""MONAI's own DICOM loop: ``LoadImage(reader=PydicomReader())`` per series folder, then the same
normalisation recipe as raylens (RAS, target spacing, CT window / MR z-score, crop/pad), one process.

Run by ``raylens bench dicom`` with the python of the ``monai`` bench env::

    python monai_dicom.py --out R.json --series series.json --warmup warm.json --volumes V.npz

``series.json`` lists ``{"folder", "modality"}`` (one folder per series, as the files are laid out);
the recipe comes from ``--spacing``, ``--size`` and ``--ct-window``. The loop is timed after a warm-up
over ``warm.json`` (imports, first-call caches); the normalised volumes are kept and written to
``--volumes`` after the clock stops, so the caller can compare them with its own.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from importlib.metadata import version

import numpy as np


def pipelines(spacing, size, ct_window):
    import torch
    from monai.transforms import (
        Compose,
        EnsureChannelFirst,
        LoadImage,
        NormalizeIntensity,
        Orientation,
        ResizeWithPadOrCrop,
        ScaleIntensityRange,
        Spacing,
    )

    load = Compose([LoadImage(reader="PydicomReader", image_only=True), EnsureChannelFirst()])
    orient = Orientation(axcodes="RAS")
    resample = Spacing(pixdim=spacing, mode="bilinear", padding_mode="border", dtype=torch.float32)
    resize = ResizeWithPadOrCrop(spatial_size=size)
    ct = ScaleIntensityRange(a_min=ct_window[0], a_max=ct_window[1], b_min=0.0, b_max=1.0, clip=True)
    return load, {
        "CT": Compose([orient, resample, ct, resize]),
        "MR": Compose([orient, resample, NormalizeIntensity(nonzero=True), resize]),
    }


def run(series, load, norm, keep: dict | None = None) -> tuple[int, int]:
    """Load and normalise every series; ``(series done, raw voxels loaded)``."""
    voxels = 0
    for s in series:
        img = load(s["folder"])
        voxels += int(img.numel())
        out = norm["CT" if s["modality"] == "CT" else "MR"](img.float())
        if keep is not None:
            keep[s["folder"]] = np.asarray(out.as_tensor()[0].numpy(), dtype=np.float32)
    return len(series), voxels


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--series", required=True)
    ap.add_argument("--warmup", required=True)
    ap.add_argument("--volumes", default="")
    ap.add_argument("--spacing", type=float, nargs=3, default=(3.0, 3.0, 3.0))
    ap.add_argument("--size", type=int, nargs=3, default=(32, 32, 32))
    ap.add_argument("--ct-window", type=float, nargs=2, default=(-150.0, 350.0))
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)  # one core, as the pydicom loop it is compared with
    warnings.filterwarnings("ignore")
    with open(args.series) as f:
        series = json.load(f)
    with open(args.warmup) as f:
        warm = json.load(f)
    load, norm = pipelines(args.spacing, args.size, args.ct_window)
    run(warm, load, norm)
    keep: dict | None = {} if args.volumes else None  # the outputs, kept (not copied) for the caller
    t0 = time.perf_counter()
    n_series, voxels = run(series, load, norm, keep)
    seconds = time.perf_counter() - t0
    if keep is not None:  # written after the clock stops
        np.savez(args.volumes, **{str(i): keep[s["folder"]] for i, s in enumerate(series)})
    with open(args.out, "w") as f:
        json.dump(
            {
                "versions": {p: version(p) for p in ("monai", "torch", "pydicom", "numpy")},
                "series": n_series,
                "voxels_loaded": voxels,
                "seconds": round(seconds, 4),
                "pid": os.getpid(),
            },
            f,
            indent=2,
        )


if __name__ == "__main__":
    main()
