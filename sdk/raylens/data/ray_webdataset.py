"""Ray Data reader for WebDataset tar shards in img2dataset's layout (``KEY.jpg`` + ``KEY.txt``/``.json``).

One read task per shard: the task streams its tar member by member (:mod:`raylens.data.webdataset`)
and yields decoded batches of ``batch_size`` rows, so neither a shard nor the dataset is ever held
whole. Samples without image or caption, corrupt images and truncated tars are skipped and reported
as ``SHARD.tar:KEY``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import ray

from raylens.data.decode import ImageTransform
from raylens.data.ray_reader import ActorReport, IngestReporter, decode_and_report
from raylens.data.result import ReadResult
from raylens.data.webdataset import expand_shards, shard_batches

__all__ = ["read_webdataset"]


def _read_shards(
    batch: dict[str, np.ndarray], *, preprocess: ImageTransform, reporter, batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
    for shard in batch["shard"]:
        for rows, skipped in shard_batches(str(shard), batch_size):
            if skipped:
                ray.get(reporter.record.remote([], [(s.path, s.reason) for s in skipped]))
            if len(rows["path"]):
                yield from decode_and_report(rows, preprocess=preprocess, reporter=reporter)


def read_webdataset(
    shards: str | Path | Iterable[str | Path],
    preprocess: ImageTransform,
    *,
    batch_size: int = 128,
) -> ReadResult:
    """Read WebDataset shards as a streaming Ray dataset of captioned images.

    Args:
        shards: a brace pattern (``data/{00000..00009}.tar``), a glob, a path, or a list of them.
        preprocess: ``ClipPreprocess`` (eval) or ``TrainAugment`` (train).
        batch_size: rows per decoded batch.

    Returns:
        A :class:`~raylens.data.result.ReadResult`; rows: ``image`` (3, S, S) float32, ``path``
        (``SHARD.tar:KEY``), ``key``, ``caption``.

    Raises:
        FileNotFoundError, ValueError: a named shard is missing or nothing matched; before any task.
    """
    paths = expand_shards(shards)
    source = str(shards) if isinstance(shards, (str, Path)) else f"{len(paths)} shards"
    reporter = IngestReporter(source)
    ds = ray.data.from_items([{"shard": p} for p in paths], override_num_blocks=len(paths))
    ds = ds.map_batches(
        _read_shards,
        batch_size=1,
        batch_format="numpy",
        fn_kwargs={"preprocess": preprocess, "reporter": reporter, "batch_size": batch_size},
    )
    return ReadResult(ds, source, ActorReport(reporter))
