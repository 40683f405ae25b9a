"""A streaming, shuffled Ray dataset of rays from a frames dataset (:mod:`.ray_reader`).

Each ``map_batches`` task turns a few frames into their rays (:func:`.rays.frames_to_rays`: unit
directions, rgb float32, ``pixel_id``, ``frame_id``), so rays are made where the frames are and the
driver never holds them. Shuffles:

* ``"block"`` (default, streaming): the frames are visited in a random order and each task shuffles
  the rays of its ``frames_per_task`` frames together. From a
  :class:`~.ray_reader.CaptureReadResult` the order is drawn on the frame *metadata* and the split
  chosen there, before any image is decoded, so memory stays at a few frames per task and captures
  larger than memory (or than the object store) train. (From a bare dataset the frame blocks are
  reordered with ``randomize_block_order``, which waits for every frame block first.) Add
  ``iter_batches(local_shuffle_buffer_size=...)`` in the consumer for more mixing.
* ``"global"``: Ray Data's ``random_shuffle`` of the rays (all-to-all; spills to disk when the rays do
  not fit in memory).
* ``None``: frame order, pixel order within a frame (evaluation).

Public API: :data:`SHUFFLES`, :func:`rays_dataset`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import ray

from raylens.data.result import ReadResult
from raylens_domains.multiview.frames import SPLITS
from raylens_domains.multiview.ray_reader import CaptureReadResult
from raylens_domains.multiview.rays import batch_frames_to_rays

__all__ = ["SHUFFLES", "rays_dataset"]

SHUFFLES = ("block", "global", None)


def _select_split(batch: dict[str, np.ndarray], *, split: str) -> Iterator[dict[str, np.ndarray]]:
    keep = np.asarray([str(s) == split for s in batch["split"]], dtype=bool)
    if keep.any():  # an empty tensor column does not convert to Arrow
        yield {k: np.asarray(v)[keep] for k, v in batch.items()}


def _to_rays(batch: dict[str, np.ndarray], *, shuffle: bool, seed: int | None) -> dict[str, np.ndarray]:
    rays = batch_frames_to_rays(batch)
    if shuffle:
        key = None if seed is None else [seed, *np.asarray(batch["frame_id"], dtype=np.int64).tolist()]
        order = np.random.default_rng(key).permutation(len(rays["rgb"]))
        rays = {k: v[order] for k, v in rays.items()}
    return rays


def rays_dataset(
    frames: ReadResult | ray.data.Dataset,
    *,
    split: str | None = "train",
    shuffle: str | None = "block",
    seed: int | None = None,
    frames_per_task: int = 4,
) -> ray.data.Dataset:
    """Rays of the frames of ``split`` as a lazy Ray dataset, one row per ray.

    Args:
        frames: a frames :class:`~raylens.data.result.ReadResult` (:func:`.ray_reader.read_capture`)
            or its dataset.
        split: keep the frames of this split (``None``: all frames).
        shuffle: ``"block"`` (streaming), ``"global"`` or ``None`` (see the module docstring).
        seed: makes the shuffles repeatable; ``None`` draws anew on each pass (a new order per epoch).
        frames_per_task: frames whose rays one task makes (and, with ``"block"``, mixes).

    Returns:
        Rows ``origins`` (3,) float32, ``directions`` (3,) float32 unit, ``rgb`` (3,) float32,
        ``pixel_id`` int32, ``frame_id`` int64 (see :mod:`.rays`).
    """
    if shuffle not in SHUFFLES:
        raise ValueError(f"shuffle must be one of {SHUFFLES}, got {shuffle!r}.")
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}.")
    if frames_per_task < 1:
        raise ValueError(f"frames_per_task must be >= 1, got {frames_per_task}.")
    if isinstance(frames, CaptureReadResult) and frames.plan is not None:
        ds = frames.frames(split=split, shuffle=shuffle == "block", seed=seed)
    else:
        ds = frames.dataset if isinstance(frames, ReadResult) else frames
        if split is not None:
            ds = ds.map_batches(_select_split, batch_format="numpy", fn_kwargs={"split": split})
        if shuffle == "block":
            ds = ds.randomize_block_order(seed=seed)
    ds = ds.map_batches(
        _to_rays,
        batch_size=frames_per_task,
        batch_format="numpy",
        fn_kwargs={"shuffle": shuffle == "block", "seed": seed},
    )
    if shuffle == "global":
        ds = ds.random_shuffle(seed=seed)
    return ds
