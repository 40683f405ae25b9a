"""What every reader returns: :class:`ReadResult`, the lazy dataset plus its ingest report.

Ray-free on purpose, so plain code (sources, packs, tests) can name the type without importing ray.
Captions, class folders, WebDataset, digits, DICOM and multi-view readers all return it.

>>> from raylens.data.report import IngestReport
>>> result = ReadResult([1, 2], "toy", FixedReport(IngestReport("toy", n_ok=2)), classes=["a", "b"])
>>> result.report().summary(), result.classes
('ingest of toy: 2 rows read, 0 skipped', ['a', 'b'])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from raylens.data.report import IngestReport

__all__ = ["ReadResult", "FixedReport"]


class FixedReport:
    """A report source for readers whose report is complete when they return (digits, DICOM)."""

    def __init__(self, report: IngestReport):
        if not isinstance(report, IngestReport):
            raise TypeError(f"FixedReport needs an IngestReport, got {type(report).__name__}")
        self._report = report

    def __call__(self) -> IngestReport:
        return self._report


@dataclass
class ReadResult:
    """One reader's result: the lazy dataset, where it came from and how the ingest went."""

    dataset: Any
    """The lazy ``ray.data.Dataset`` of rows; each reader documents its row schema."""
    name: str
    """What was read (a path, ``digits:train``, a shard pattern): shown in logs and reports."""
    reporter: Callable[[], IngestReport] = field(repr=False)
    """Returns the ingest report so far; call :meth:`report` instead."""
    classes: list[str] | None = None
    """Class names when rows carry an integer ``label`` (``classes[label]``); None otherwise."""
    templates: list[str] | None = None
    """Zero-shot prompt templates that suit this data (digits: ``"a photo of the digit {}"``), or None."""
    stats: dict[str, int] = field(default_factory=dict)
    """Reader-specific counts (DICOM: ``files``, ``slices``); empty when a reader has none."""
    rows: Any = None
    """The rows before decoding (``dataset`` is ``rows`` mapped through :attr:`decode`), for consumers
    that decode inside their own workers (``embed_images`` on CPU); None when a reader has no
    separate decode step."""
    rows_in: Callable[[int], Any] | None = field(default=None, repr=False)
    """``rows_in(n)``: :attr:`rows` read again in ``n`` blocks, for a consumer that plans its own tasks
    (``embed_images`` on CPU reads one block per task); None when a reader cannot re-plan."""
    decode: Callable[..., Any] | None = field(default=None, repr=False)
    """``decode(batch)`` yields decoded batches (skips reported): the step from ``rows`` to ``dataset``."""
    rows_estimate: int | None = None
    """About how many rows :attr:`rows` holds, known before any task runs (the file list's length, a
    captions file's size over its line length); None when a reader cannot tell. ``embed_images`` sizes
    its tasks by it."""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string naming what was read, got {self.name!r}")
        if not callable(self.reporter):
            raise TypeError(
                f"reporter must be a callable returning the IngestReport, got {type(self.reporter).__name__}; "
                "wrap a finished report in FixedReport(report)"
            )
        for what in ("classes", "templates"):
            value = getattr(self, what)
            if value is not None and (isinstance(value, str) or not all(isinstance(v, str) for v in value)):
                raise TypeError(f"{what} must be a list of strings or None, got {value!r}")
            if value is not None:
                setattr(self, what, list(value))

    def report(self) -> IngestReport:
        """The ingest report: rows read and rows skipped (path and reason); complete once
        :attr:`dataset` has been consumed (readers that materialise return it complete)."""
        return self.reporter()
