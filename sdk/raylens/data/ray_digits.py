"""scikit-learn's digits as a Ray dataset of preprocessed, captioned images (see :mod:`raylens.data.digits`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import ray

from raylens.data.digits import DIGIT_CLASSES, ZEROSHOT_TEMPLATE, load_digits_split
from raylens.data.report import IngestReport
from raylens.data.result import FixedReport, ReadResult

__all__ = ["read_digits"]


def _preprocess_udf(
    batch: dict[str, np.ndarray], *, preprocess: Callable[[np.ndarray], np.ndarray]
) -> dict[str, np.ndarray]:
    batch["image"] = np.stack([preprocess(np.asarray(im, np.uint8)) for im in batch["image"]])
    return batch


def read_digits(
    preprocess: Callable[[np.ndarray], np.ndarray],
    split: str = "train",
    *,
    seed: int = 0,
    heldout_fraction: float = 0.25,
    varied_captions: bool | None = None,
    batch_size: int = 128,
) -> ReadResult:
    """The digits ``split`` as a Ray dataset. Decoding is free (the set is 115 kB), preprocessing
    runs in tasks.

    Returns:
        A :class:`~raylens.data.result.ReadResult` named ``digits:<split>`` with ``classes`` ``"0"``
        to ``"9"`` and the zero-shot template; its report is complete at once (nothing is ever
        skipped). Rows: ``image`` (3, S, S) float32 after ``preprocess`` (a ``ClipPreprocess`` or a
        train-time augmentation), ``caption``, ``label``, ``class_name``, ``path``
        (``sklearn-digits:<row>``).
    """
    d = load_digits_split(split, heldout_fraction=heldout_fraction, seed=seed, varied_captions=varied_captions)
    table = {
        "image": d.images,
        "caption": d.captions,
        "label": d.labels,
        "class_name": np.asarray([str(x) for x in d.labels]),
        "path": np.asarray([f"sklearn-digits:{i}" for i in d.ids]),
    }
    blocks = max(1, len(d) // batch_size)
    ds = ray.data.from_items([{k: v[i] for k, v in table.items()} for i in range(len(d))], override_num_blocks=blocks)
    ds = ds.map_batches(
        _preprocess_udf, batch_size=batch_size, batch_format="numpy", fn_kwargs={"preprocess": preprocess}
    )
    name = f"digits:{split}"
    return ReadResult(
        ds,
        name,
        FixedReport(IngestReport(name, n_ok=len(d))),
        classes=list(DIGIT_CLASSES),
        templates=[ZEROSHOT_TEMPLATE],
    )
