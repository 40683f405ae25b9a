"""The benchmark harness: each benchmark measures us and a baseline in the same run.

A benchmark is a function registered with :func:`register_benchmark`; it takes ``quick`` and a work
directory and returns a :class:`BenchResult`. ``raylens bench NAME --json OUT`` runs one and writes
the JSON format from DESIGN.md; ``raylens bench all`` runs all and writes a markdown table.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from raylens.registry import Registry

__all__ = ["BenchResult", "BENCHMARKS", "register_benchmark", "machine_info", "run_benchmark", "markdown_table"]

BENCHMARKS = Registry("benchmark")
register_benchmark = BENCHMARKS.register


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory and accelerator of this machine, for the benchmark JSON."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        if names:
            info["cpu"] = names[0]
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover
        info["gpu"] = None
    return info


@dataclass
class BenchResult:
    """One benchmark's figure and its same-run baseline (DESIGN.md's JSON format)."""

    name: str
    metric: str
    value: float
    baseline_name: str
    baseline_value: float
    higher_is_better: bool = True
    params: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    """Further figures (secondary metrics, physical limits, per-setting tables)."""
    machine: dict[str, Any] = field(default_factory=machine_info)

    @property
    def ratio(self) -> float:
        """How many times better than the baseline (> 1 is better, whichever way the metric points)."""
        if self.higher_is_better:
            return self.value / self.baseline_value if self.baseline_value else float("inf")
        return self.baseline_value / self.value if self.value else float("inf")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio"] = round(self.ratio, 4)
        return d

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        return path


def _load_benchmarks() -> None:
    """Import the plug-ins (``raylens.plugins``); the benchmarks package registers every benchmark."""
    from raylens.plugins import load_plugins

    load_plugins()


def run_benchmark(name: str, *, quick: bool = False, workdir: str | Path | None = None) -> BenchResult:
    """Run one registered benchmark and return its result."""
    import tempfile

    _load_benchmarks()
    fn: Callable[..., BenchResult] = BENCHMARKS.get(name)
    with tempfile.TemporaryDirectory(prefix=f"raylens-bench-{name}-") as tmp:
        return fn(quick=quick, workdir=Path(workdir) if workdir else Path(tmp))


def markdown_table(results: list[BenchResult]) -> str:
    rows = ["| benchmark | metric | value | baseline | baseline value | ratio |", "|---|---|---|---|---|---|"]
    for r in results:
        rows.append(
            f"| {r.name} | {r.metric} | {r.value:.4g} | {r.baseline_name} | {r.baseline_value:.4g} | {r.ratio:.2f} |"
        )
    return "\n".join(rows) + "\n"
