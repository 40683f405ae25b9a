"""Search results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["SearchHit"]


@dataclass
class SearchHit:
    """One search result, best first within its list."""

    id: int
    """Stable id of the vector (as returned by ``add``)."""
    score: float
    """Inner product (cosine when normalised; higher is closer) or squared L2 distance (lower is closer)."""
    path: str | None = None
    """The ``path`` metadata column, when there is one."""
    caption: str | None = None
    """The ``caption`` metadata column, when there is one."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """The other metadata columns of this row."""
    duplicates: list[int] = field(default_factory=list)
    """Ids of near-duplicates folded into this hit (search with ``dedup=``)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (a search service returns thousands a second: no deep copy)."""
        return {
            "id": self.id,
            "score": self.score,
            "path": self.path,
            "caption": self.caption,
            "metadata": dict(self.metadata),
            "duplicates": list(self.duplicates),
        }
