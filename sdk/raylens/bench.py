"""The benchmark harness: each benchmark measures us against the tools a user would pick instead.

A benchmark is a function registered with :func:`register_benchmark`; it takes ``quick`` and a work
directory and returns a :class:`BenchResult`: the headline figure against the strongest rival
(``baseline_*``), every rival measured in the same run (:class:`Rival`), end-to-end and steady-state
figures (:class:`Window`) and the machine's physical bound for the metric (:class:`Bound`). A figure
above its bound is an accounting error: :meth:`BenchResult.check` raises :class:`BoundExceeded`
instead of writing it. ``raylens bench NAME --json OUT`` runs one; ``raylens bench all --json OUT``
runs every speed benchmark and writes one markdown table and one PNG of the ratios
(:func:`markdown_table`, :func:`plot_ratios`); ``raylens bench report DIR`` rebuilds both from saved
JSON files.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from raylens.registry import Registry

__all__ = [
    "BenchResult",
    "Bound",
    "BoundExceeded",
    "Rival",
    "Window",
    "BENCHMARKS",
    "register_benchmark",
    "machine_info",
    "cpu_ticks",
    "steal_share",
    "run_benchmark",
    "machines",
    "markdown_table",
    "plot_ratios",
    "load_results",
]

BENCHMARKS = Registry("benchmark")


def register_benchmark(name: str | None = None, *, doc: str | None = None, suite: str = "speed", **meta: Any):
    """Register a benchmark; ``suite="speed"`` ones run in ``raylens bench all``, ``"reliability"`` ones
    (long fault-injection runs) only by name."""
    return BENCHMARKS.register(name, doc=doc, suite=suite, **meta)


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory, load and accelerator of this machine, for the benchmark JSON."""
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
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover
        info["gpu"] = None
    return info


def cpu_ticks() -> tuple[int, int]:
    """``(stolen, all)`` CPU ticks since boot, from ``/proc/stat``; ``(0, 0)`` where there is none.

    Stolen ticks are the ones a virtual machine's cores were ready to run but the hypervisor ran
    another guest: on a shared host they slow a benchmark that nothing in the machine explains.
    """
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user and nice]
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def steal_share(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """The share of CPU time stolen between two :func:`cpu_ticks` readings (None: nothing counted).

    >>> steal_share((10, 1000), (60, 2000))
    0.05
    >>> steal_share((0, 0), (0, 0)) is None
    True
    """
    ticks = after[1] - before[1]
    return round((after[0] - before[0]) / ticks, 4) if ticks > 0 else None


class BoundExceeded(RuntimeError):
    """A benchmark figure above the machine's physical bound: the benchmark measured the wrong window."""


@dataclass
class Rival:
    """A tool a user would pick instead, measured in the same run on the same data and model.

    ``value`` is in the benchmark's metric (None when the rival failed or could not finish: that is a
    result too, and ``note`` says why); ``end_to_end_s`` is its wall time for the whole job.
    """

    name: str
    value: float | None
    end_to_end_s: float | None = None
    note: str = ""


@dataclass
class Window:
    """A throughput figure and the window it was measured over.

    ``value`` in the metric's unit, ``seconds`` the window's length, ``share`` the fraction of all the
    work done inside it (end to end: 1.0).
    """

    value: float
    seconds: float
    share: float = 1.0
    note: str = ""


@dataclass
class Bound:
    """The physical bound of the metric on this machine (``basis``: how it was derived/measured)."""

    value: float
    basis: str


@dataclass
class BenchResult:
    """One benchmark's figures: ours, the strongest rival's (``baseline_*``), every rival, the windows
    and the bound. ``ratio`` is ours over the baseline (> 1: we win, whichever way the metric points)."""

    name: str
    metric: str
    value: float
    baseline_name: str
    baseline_value: float
    higher_is_better: bool = True
    params: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    """Further figures (secondary metrics, per-setting tables)."""
    rivals: list[Rival] = field(default_factory=list)
    end_to_end: Window | None = None
    steady_state: Window | None = None
    bound: Bound | None = None
    machine: dict[str, Any] = field(default_factory=machine_info)

    @property
    def ratio(self) -> float:
        """How many times better than the baseline (> 1 is better, whichever way the metric points)."""
        return self._better(self.value, self.baseline_value)

    def _better(self, ours: float, theirs: float | None) -> float:
        if theirs is None:
            return float("inf")
        if self.higher_is_better:
            return ours / theirs if theirs else float("inf")
        return theirs / ours if ours else float("inf")

    def rival_ratios(self) -> dict[str, float]:
        """Ours over each rival that finished (rival name -> ratio, > 1: we win)."""
        return {r.name: round(self._better(self.value, r.value), 4) for r in self.rivals if r.value is not None}

    def check(self) -> BenchResult:
        """Raise :class:`BoundExceeded` if any figure (ours, a window, the baseline, a rival) is above
        the bound (below it, for lower-is-better metrics such as latency). Returns self."""
        if self.bound is None:
            return self
        figures = [("raylens", self.value), (self.baseline_name, self.baseline_value)]
        figures += [
            (f"raylens {w}", getattr(self, w).value) for w in ("end_to_end", "steady_state") if getattr(self, w)
        ]
        figures += [(r.name, r.value) for r in self.rivals if r.value is not None]
        for who, v in figures:
            over = v > self.bound.value * 1.0001 if self.higher_is_better else v < self.bound.value * 0.9999
            if over:
                raise BoundExceeded(
                    f"bench {self.name}: {who} reports {v:.4g} {self.metric}, beyond the physical bound "
                    f"{self.bound.value:.4g} ({self.bound.basis}): the benchmark measured the wrong window"
                )
        return self

    @property
    def fraction_of_bound(self) -> float | None:
        """Ours as a fraction of the bound (1.0 = at the machine's limit)."""
        if self.bound is None or not self.bound.value or not self.value:
            return None
        return self.value / self.bound.value if self.higher_is_better else self.bound.value / self.value

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio"] = round(self.ratio, 4)
        d["rival_ratios"] = self.rival_ratios()
        f = self.fraction_of_bound
        d["fraction_of_bound"] = None if f is None else round(f, 4)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchResult:
        """Read back :meth:`to_dict` output (older JSON without rivals/windows/bound too)."""
        kw = {k: d[k] for k in ("name", "metric", "value", "baseline_name", "baseline_value") if k in d}
        for k in ("higher_is_better", "params", "extra", "machine"):
            if k in d:
                kw[k] = d[k]
        kw["rivals"] = [Rival(**r) for r in d.get("rivals") or []]
        for k, typ in (("end_to_end", Window), ("steady_state", Window), ("bound", Bound)):
            if d.get(k):
                kw[k] = typ(**d[k])
        return cls(**kw)

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
    """Run one registered benchmark and return its result, checked against its bound; its machine info
    gains ``cpu_steal_share``, the share of CPU time the host stole while it ran (:func:`cpu_ticks`)."""
    import tempfile

    _load_benchmarks()
    fn: Callable[..., BenchResult] = BENCHMARKS.get(name)
    ticks = cpu_ticks()
    with tempfile.TemporaryDirectory(prefix=f"raylens-bench-{name}-") as tmp:
        result = fn(quick=quick, workdir=Path(workdir) if workdir else Path(tmp)).check()
    result.machine["cpu_steal_share"] = steal_share(ticks, cpu_ticks())
    return result


def load_results(paths: Iterable[str | Path]) -> list[BenchResult]:
    """Benchmark results from JSON files (one result, or a list of them, per file)."""
    out: list[BenchResult] = []
    for p in paths:
        data = json.loads(Path(p).read_text())
        out += [BenchResult.from_dict(d) for d in (data if isinstance(data, list) else [data])]
    return out


def _fmt(v: float | None) -> str:
    return "failed" if v is None else f"{v:,.4g}"


def _label(r: BenchResult) -> str:
    """The benchmark's name, marked when it ran at ``--quick`` sizes (a full and a quick run of one
    benchmark can sit in the same table)."""
    return r.name + (" (--quick)" if r.params.get("quick") else "")


def machines(results: list[BenchResult]) -> str:
    """The machines the results came from, each with its benchmarks when there are several.

    >>> amd, xeon = {"cores": 2, "cpu": "AMD EPYC"}, {"cores": 2, "cpu": "Intel Xeon"}
    >>> r = lambda name, m: BenchResult(name=name, metric="x", value=1.0, baseline_name="b", baseline_value=1.0, machine=m)
    >>> machines([r("embed", amd), r("dicom", amd)])
    '2-core AMD EPYC'
    >>> machines([r("embed", amd), r("serve", xeon), r("dicom", amd)])
    '2-core AMD EPYC (embed, dicom); 2-core Intel Xeon (serve)'
    """
    by: dict[str, list[str]] = {}
    for r in results:
        by.setdefault(f"{r.machine.get('cores', '?')}-core {r.machine.get('cpu', '?')}", []).append(_label(r))
    if len(by) == 1:
        return next(iter(by))
    return "; ".join(f"{m} ({', '.join(names)})" for m, names in by.items())


def markdown_table(results: list[BenchResult]) -> str:
    """One row per benchmark and rival: figures, ratio (ours over theirs) and the fraction of the bound,
    then the machines the rows came from."""
    rows = [
        "| benchmark | metric | raylens | rival (same run) | rival value | ratio | bound | raylens / bound |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rivals = r.rivals or [Rival(r.baseline_name, r.baseline_value)]
        f = r.fraction_of_bound
        bound = "—" if r.bound is None else f"{r.bound.value:,.4g} ({r.bound.basis})"
        for i, rv in enumerate(rivals):
            ratio = "—" if rv.value is None else f"{r._better(r.value, rv.value):.2f}x"
            name = rv.name + (f" ({rv.note})" if rv.value is None and rv.note else "")
            first = i == 0
            rows.append(
                f"| {_label(r) if first else ''} | {r.metric if first else ''} | {_fmt(r.value) if first else ''} "
                f"| {name} | {_fmt(rv.value)} | {ratio} | {bound if first else ''} "
                f"| {(f'{f:.2f}' if f is not None else '—') if first else ''} |"
            )
    return "\n".join(rows) + f"\n\nMeasured on: {machines(results)}.\n"


def plot_ratios(results: list[BenchResult], path: str | Path) -> Path:
    """A bar chart of ours over each rival (log scale, 1x marked) and of ours over the bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, ratios, colours = [], [], []
    for r in results:
        for rv in r.rivals or [Rival(r.baseline_name, r.baseline_value)]:
            if rv.value is None:
                continue
            labels.append(_short(f"{_label(r)} vs {rv.name}"))
            ratios.append(r._better(r.value, rv.value))
            colours.append("tab:green" if ratios[-1] >= 1 else "tab:red")
        if r.fraction_of_bound is not None:
            labels.append(f"{_label(r)} / bound")
            ratios.append(r.fraction_of_bound)
            colours.append("tab:grey")
    fig, ax = plt.subplots(figsize=(11, 0.35 * len(labels) + 1.2))
    y = list(range(len(labels)))[::-1]
    ax.barh(y, ratios, color=colours)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", lw=1)
    for yi, v in zip(y, ratios, strict=True):
        ax.text(v, yi, f" {v:.2f}x", va="center", fontsize=7)
    ax.set_xlabel("ratio (raylens over rival: > 1 raylens wins; grey: raylens over the physical bound)")
    ax.set_title(f"raylens benchmarks on {machines(results)}", fontsize=9, wrap=True)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _short(label: str, width: int = 70) -> str:
    """A chart label cut to ``width`` characters (the table keeps the whole rival name)."""
    return label if len(label) <= width else label[: width - 3].rstrip() + "..."
