"""The ingest report: how many rows were read and which were skipped, with path and reason."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["IngestReport", "SkippedRow"]


@dataclass(frozen=True)
class SkippedRow:
    path: str
    reason: str


@dataclass
class IngestReport:
    """Rows read and rows skipped by one ingest. Skips never stop a job; they are listed here."""

    source: str
    n_ok: int = 0
    skipped: list[SkippedRow] = field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def reasons(self) -> dict[str, int]:
        """Skipped rows counted by the first words of their reason."""
        return dict(Counter(s.reason.split(" (")[0] for s in self.skipped))

    def summary(self) -> str:
        line = f"ingest of {self.source}: {self.n_ok} rows read, {self.n_skipped} skipped"
        if self.skipped:
            line += " (" + ", ".join(f"{n} {r}" for r, n in self.reasons().items()) + ")"
        return line

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "n_ok": self.n_ok,
            "n_skipped": self.n_skipped,
            "skipped": [asdict(s) for s in self.skipped],
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path
