"""Ray Data reader for class-folder image trees (``root/<class>/<image>``, ImageNet style).

The tree is listed up front (cheap, see :mod:`raylens.data.folders`), so a wrong root fails before
any task runs; images are decoded and preprocessed in streaming ``map_batches`` tasks, and files
that are not images or do not decode are skipped and reported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import ray

from raylens.data.decode import ImageTransform
from raylens.data.folders import DEFAULT_TEMPLATE, IMAGE_EXTENSIONS, list_image_folder
from raylens.data.ray_reader import ActorReport, IngestReporter, decode_and_report, decoded
from raylens.data.result import ReadResult

__all__ = ["read_image_folder"]


def read_image_folder(
    root: str | Path,
    preprocess: ImageTransform,
    *,
    caption_template: str = DEFAULT_TEMPLATE,
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
    allow_empty: bool = False,
    shuffle_seed: int | None = None,
    batch_size: int = 128,
) -> ReadResult:
    """Read ``root/<class>/**/<image>`` as a streaming Ray dataset of labelled, captioned images.

    Args:
        root: one subfolder per class; labels follow the sorted class names (as torchvision's
            ``ImageFolder``).
        preprocess: ``ClipPreprocess`` (eval) or ``TrainAugment`` (train).
        caption_template: each row's caption, ``{class_name}`` filled in with ``_`` read as a space.
        extensions: file endings read as images; other files are skipped and reported.
        allow_empty: allow class folders without images.
        shuffle_seed: shuffle the file list with this seed (else rows come class by class).
        batch_size: rows per decode task batch.

    Returns:
        A :class:`~raylens.data.result.ReadResult` with ``classes`` (``classes[label]`` is the class
        name); rows: ``image`` (3, S, S) float32, ``path``, ``label``, ``class_name``, ``caption``.

    Raises:
        FileNotFoundError, ValueError: no such folder, no class folders, no images; before any task.
    """
    listing = list_image_folder(root, caption_template=caption_template, extensions=extensions, allow_empty=allow_empty)
    n = len(listing)
    order = np.random.default_rng(shuffle_seed).permutation(n) if shuffle_seed is not None else range(n)
    items = [{k: col[i] for k, col in listing.rows.items()} for i in order]
    reporter = IngestReporter(listing.root)
    ray.get(reporter.record.remote([], [(s.path, s.reason) for s in listing.skipped]))
    parts = decoded(
        lambda blocks: ray.data.from_items(items, override_num_blocks=blocks),
        decode_and_report,
        batch_size=batch_size,
        rows_estimate=n,
        preprocess=preprocess,
        reporter=reporter,
    )
    return ReadResult(name=listing.root, reporter=ActorReport(reporter), classes=listing.classes, **parts)
