"""One entry point for every training source: ``open_source("digits" | path, preprocess, split=...)``.

A source spec is the built-in ``digits`` (scikit-learn's handwritten digits), a captions file
(``.csv``, ``.jsonl``, ``.parquet``), an image folder with class subfolders, or WebDataset tar shards
(a ``.tar`` file, a glob, or a brace pattern such as ``shards/{00000..00009}.tar``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Source", "open_source", "describe_sources"]


@dataclass
class Source:
    """A lazy Ray dataset of ``image`` + ``caption`` rows, what it came from, and how to report on it."""

    dataset: Any
    name: str
    classes: list[str] | None = None
    """Class names, when rows carry an integer ``label`` (digits, class folders)."""
    report: Callable[[], Any] | None = None
    """Returns the ingest report (skipped rows with reasons) once the data has been read."""
    templates: list[str] | None = None
    """Zero-shot prompt templates that suit this data (digits: 'a photo of the digit {}')."""


def describe_sources() -> str:
    return (
        "'digits' (built in), a captions file (.csv/.jsonl/.parquet), a folder of class subfolders, "
        "or WebDataset shards (.tar, a glob, or {00000..00009}.tar)"
    )


def open_source(
    spec: str, preprocess: Callable[[np.ndarray], np.ndarray], *, split: str | None = None, seed: int = 0
) -> Source:
    """Open ``spec`` as a streaming Ray dataset preprocessed with ``preprocess``.

    ``split`` selects rows of a captions file's ``split`` column; for ``digits`` it is ``train``
    (default) or ``heldout``. Raises ``FileNotFoundError``/``ValueError`` naming the spec and the
    accepted kinds when it is none of them.
    """
    if spec == "digits":
        from raylens.data.digits import DIGIT_CLASSES, ZEROSHOT_TEMPLATE
        from raylens.data.ray_digits import read_digits

        return Source(
            read_digits(preprocess, split or "train", seed=seed),
            f"digits:{split or 'train'}",
            DIGIT_CLASSES,
            templates=[ZEROSHOT_TEMPLATE],
        )
    path = Path(spec).expanduser()
    if path.suffix.lower() in (".csv", ".jsonl", ".json", ".parquet"):
        from raylens.data.ray_reader import read_captioned_images

        ci = read_captioned_images(path, preprocess, split=split)
        return Source(ci.dataset, str(path), None, ci.report)
    if path.is_dir():
        from raylens.data.ray_folders import read_image_folder

        folder = read_image_folder(path, preprocess)
        return Source(folder.dataset, str(path), folder.classes, folder.report)
    if ".tar" in spec:
        from raylens.data.ray_webdataset import read_webdataset

        wds = read_webdataset(spec, preprocess)
        return Source(wds.dataset, spec, None, wds.report)
    raise FileNotFoundError(
        f"training data {spec!r} is not a file or folder raylens can read; give {describe_sources()}"
    )
