"""Ray Data reader for multi-view captures: one row per frame, frames decoded in Ray tasks.

The capture is planned on the driver (metadata only: poses, cameras, splits; see
:mod:`.capture`), then each frame's image is loaded in a ``map_batches`` task (decode, composite,
undistort, downscale). Frames skipped while planning or loading go to an
:class:`~raylens.data.ray_reader.IngestReporter` actor, so the job goes on and ``report()`` lists
each with its reason. Rows follow :mod:`.frames` (``image`` uint8, ``c2w``, ``fx fy cx cy``,
``width``, ``height``, ``split``, ``path``, ``frame_id``).

Public API: :class:`CaptureReadResult`, :func:`read_capture`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray

from raylens.data.ray_reader import ActorReport, IngestReporter
from raylens.data.result import ReadResult
from raylens_domains.multiview.capture import CaptureInfo, CapturePlan, FrameSkip, FrameSpec, ReadOptions, load_frame
from raylens_domains.multiview.frames import FRAME_COLUMNS
from raylens_domains.multiview.readers import plan_capture

__all__ = ["CaptureReadResult", "read_capture"]


def _load_frames(batch: dict[str, np.ndarray], *, options: ReadOptions, reporter) -> Iterator[dict[str, np.ndarray]]:
    """Load the batch's frames; yields one one-row batch per loaded frame (frames may differ in size)."""
    ok, skipped = [], []
    for i in range(len(batch["path"])):
        spec = FrameSpec.from_row({k: v[i] for k, v in batch.items()})
        try:
            frame = load_frame(spec, options)
        except FrameSkip as e:
            skipped.append((spec.path, str(e)))
            continue
        ok.append(spec.path)
        row = frame.to_row()
        yield {k: np.asarray([row[k]]) for k in FRAME_COLUMNS}
    ray.get(reporter.record.remote(ok, skipped))


def _frames_dataset(
    plan: CapturePlan, reporter, *, split: str | None, shuffle: bool, seed: int | None, frames_per_task: int
) -> ray.data.Dataset:
    items = [s.to_row() for s in plan.specs if split is None or s.split == split]
    if not items:
        raise ValueError(f"{plan.info.source}: no {split} frames to read; choose another split.")
    blocks = max(1, -(-len(items) // frames_per_task))
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    if shuffle:  # the frame list is metadata only: shuffling it is cheap, and the images still stream
        ds = ds.random_shuffle(seed=seed)
    return ds.map_batches(
        _load_frames,
        batch_size=frames_per_task,
        batch_format="numpy",
        fn_kwargs={"options": plan.options, "reporter": reporter},
    )


@dataclass
class CaptureReadResult(ReadResult):
    """A :class:`~raylens.data.result.ReadResult` that also carries the capture's info and plan."""

    capture: CaptureInfo | None = None
    """Format, scene transform (original world -> the rows' world), scene box, background."""
    plan: CapturePlan | None = field(default=None, repr=False)
    """The parsed capture (frame metadata), for :meth:`frames`."""
    frames_per_task: int = 4
    """Frames each load task handles."""

    def frames(self, *, split: str | None = None, shuffle: bool = False, seed: int | None = None) -> ray.data.Dataset:
        """A new lazy frames dataset of one split, optionally in a random frame order.

        The split is chosen and the order drawn from the frame metadata, before any image is loaded,
        so images still stream (:func:`.ray_rays.rays_dataset` uses this). ``seed=None`` draws a new
        order on every pass. Skips are reported to the same report.
        """
        if self.plan is None or not isinstance(self.reporter, ActorReport):
            raise ValueError("this result has no capture plan; read it with read_capture().")
        return _frames_dataset(
            self.plan,
            self.reporter.reporter,
            split=split,
            shuffle=shuffle,
            seed=seed,
            frames_per_task=self.frames_per_task,
        )


def read_capture(
    path: str | Path,
    options: ReadOptions | None = None,
    *,
    format: str | None = None,
    frames_per_task: int = 4,
    **overrides,
) -> CaptureReadResult:
    """Read a nerfstudio, Blender or COLMAP capture as a lazy Ray dataset of frames.

    Args:
        path: the capture folder (or its ``transforms.json``).
        options: :class:`~raylens_domains.multiview.capture.ReadOptions`; or give its fields as
            keywords (``downscale=2, normalize="auto", split="train"``).
        format: ``nerfstudio``, ``blender`` or ``colmap`` (detected when None).
        frames_per_task: frames each load task handles.

    Returns:
        A :class:`CaptureReadResult`: ``dataset`` (rows as in :mod:`.frames`), ``report()``,
        ``name`` (the capture), ``capture`` (:class:`~.capture.CaptureInfo`) and ``stats``
        (planned frames per split).

    Raises:
        FileNotFoundError, ValueError: on the driver, before any task runs: no capture, unreadable
            metadata, unsupported camera model, no usable frame, or an empty requested split.
    """
    if frames_per_task < 1:
        raise ValueError(f"frames_per_task must be >= 1, got {frames_per_task}.")
    plan = plan_capture(path, options, format=format, **overrides)
    reporter = IngestReporter(plan.info.source)
    ray.get(reporter.record.remote([], [(s.path, s.reason) for s in plan.skipped]))
    ds = _frames_dataset(plan, reporter, split=None, shuffle=False, seed=None, frames_per_task=frames_per_task)
    return CaptureReadResult(
        ds,
        plan.info.source,
        ActorReport(reporter),
        stats={f"planned_{k}": v for k, v in plan.info.counts.items()},
        capture=plan.info,
        plan=plan,
        frames_per_task=frames_per_task,
    )
