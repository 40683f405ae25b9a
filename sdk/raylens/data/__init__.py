"""Readers and their one result type: every reader returns a :class:`ReadResult` (the lazy dataset
plus ``report()``), and :func:`open_source` opens any registered kind of data by its spec.

The readers themselves live in ``raylens.data.ray_*`` modules (they import ray); this package does not.
"""

from raylens.data.report import IngestReport, SkippedRow
from raylens.data.result import FixedReport, ReadResult
from raylens.data.sources import SOURCES, DataSource, describe_sources, open_source, register_source

__all__ = [
    "IngestReport",
    "SkippedRow",
    "ReadResult",
    "FixedReport",
    "SOURCES",
    "DataSource",
    "describe_sources",
    "open_source",
    "register_source",
]
