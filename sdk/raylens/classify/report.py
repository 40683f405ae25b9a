"""Measure classifiers against the original in one table: accuracy delta, size ratios, CPU latency ratios.

A :class:`Variant` is anything that maps a normalised ``(N, 3, S, S)`` float32 batch to logits (a
torch model or an :class:`~raylens.classify.onnx_export.OnnxModel`) with its parameter count and
file. :func:`compare` scores every variant on the same test images and times them at batch 1 and
32, interleaved round by round (on a shared machine a load spike then hits every variant alike),
with the same number of threads for torch and ONNX Runtime; the figure is the median.

>>> row = CompressionRow("int8", "onnxruntime", 0.97, -0.5, 10, 0.5, 1.0, 0.25, 1.0, 2.5, 8.0, 2.0)
>>> markdown_table([row]).splitlines()[2].startswith("| int8 | onnxruntime | 97.00 | -0.50 |")
True
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["Variant", "CompressionRow", "torch_forward", "compare", "measure_latency", "markdown_table", "write_report"]


@dataclass
class Variant:
    """One model to measure."""

    name: str
    backend: str
    """``torch`` or ``onnxruntime``."""
    forward: Callable[[np.ndarray], np.ndarray]
    """Normalised float32 batch -> logits (numpy)."""
    params: int
    """Parameter elements (an INT8 model counts its weights, now one byte each)."""
    file_bytes: int
    """Size of the weights file a deployment ships."""
    directory: str | None = None
    """The checkpoint directory it was loaded from."""


def torch_forward(model: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """A torch classifier as a numpy forward function (inference mode, logits)."""
    from raylens.classify.common import logits_of

    model.eval()

    def forward(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return logits_of(model(torch.from_numpy(x))).float().numpy()

    return forward


@dataclass
class CompressionRow:
    """One line of the table; ratios are against the first (original) variant."""

    variant: str
    backend: str
    accuracy: float
    """Top-1 on the test images (fraction)."""
    accuracy_delta_points: float
    """(accuracy - original accuracy) in percentage points."""
    params: int
    param_ratio: float
    file_mb: float
    file_ratio: float
    latency_b1_ms: float
    speedup_b1: float
    """Original latency / this latency at batch 1 (> 1: faster)."""
    latency_b32_ms: float
    speedup_b32: float


def measure_latency(
    forwards: dict[str, Callable[[np.ndarray], Any]],
    batch: np.ndarray,
    *,
    repeats: int = 30,
    warmup: int = 3,
) -> dict[str, float]:
    """Median milliseconds of each forward on ``batch``, measured interleaved round by round."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"`repeats` must be >= 1 and `warmup` >= 0, got {repeats} and {warmup}")
    for f in forwards.values():
        for _ in range(warmup):
            f(batch)
    times: dict[str, list[float]] = {k: [] for k in forwards}
    for _ in range(repeats):
        for k, f in forwards.items():
            t = time.perf_counter()
            f(batch)
            times[k].append((time.perf_counter() - t) * 1000)
    return {k: float(np.median(v)) for k, v in times.items()}


def _accuracy(forward: Callable[[np.ndarray], np.ndarray], x: np.ndarray, y: np.ndarray, batch: int = 256) -> float:
    pred = np.concatenate([forward(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])
    return float((pred == y).mean())


def compare(
    variants: list[Variant],
    x: np.ndarray,
    y: np.ndarray,
    *,
    threads: int = 1,
    repeats: int = 30,
    batch_sizes: tuple[int, int] = (1, 32),
) -> list[CompressionRow]:
    """Accuracy, size and latency of each variant; the first is the original the ratios refer to.

    ``x`` are normalised test images, ``y`` their labels; torch runs with ``threads`` threads (ONNX
    Runtime sessions should be made with the same).
    """
    if not variants:
        raise ValueError("`variants` must hold the original model first, then the ones to compare")
    y = np.asarray(y)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        acc = {v.name: _accuracy(v.forward, x, y) for v in variants}
        lat = {}
        for b in batch_sizes:
            reps = repeats if b == 1 else max(5, repeats // 3)
            sample = np.ascontiguousarray(np.resize(x, (b, *x.shape[1:])))
            lat[b] = measure_latency({v.name: v.forward for v in variants}, sample, repeats=reps)
    finally:
        torch.set_num_threads(old)
    base = variants[0]
    b1, b32 = batch_sizes
    rows = []
    for v in variants:
        rows.append(
            CompressionRow(
                variant=v.name,
                backend=v.backend,
                accuracy=acc[v.name],
                accuracy_delta_points=100 * (acc[v.name] - acc[base.name]),
                params=v.params,
                param_ratio=v.params / base.params,
                file_mb=v.file_bytes / 1e6,
                file_ratio=v.file_bytes / base.file_bytes,
                latency_b1_ms=lat[b1][v.name],
                speedup_b1=lat[b1][base.name] / lat[b1][v.name],
                latency_b32_ms=lat[b32][v.name],
                speedup_b32=lat[b32][base.name] / lat[b32][v.name],
            )
        )
    return rows


def markdown_table(rows: list[CompressionRow]) -> str:
    """The table as markdown (accuracy in %, delta in points, sizes in MB, latencies in ms)."""
    head = (
        "| variant | backend | top-1 % | delta (pts) | params | param ratio | file MB | file ratio "
        "| b1 ms | b1 speedup | b32 ms | b32 speedup |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r.variant} | {r.backend} | {100 * r.accuracy:.2f} | {r.accuracy_delta_points:+.2f} | {r.params:,} "
            f"| {r.param_ratio:.3f} | {r.file_mb:.2f} | {r.file_ratio:.3f} | {r.latency_b1_ms:.2f} | {r.speedup_b1:.2f}x "
            f"| {r.latency_b32_ms:.2f} | {r.speedup_b32:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def write_report(rows: list[CompressionRow], directory: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write ``report.json`` (rows + ``meta``), ``report.csv`` and ``report.md``; returns the JSON path."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    data = [asdict(r) for r in rows]
    (d / "report.json").write_text(json.dumps({"rows": data, **(meta or {})}, indent=2, default=str) + "\n")
    with (d / "report.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(data[0]))
        w.writeheader()
        w.writerows(data)
    (d / "report.md").write_text(markdown_table(rows))
    return d / "report.json"
