"""The index manifest: what built the index, how to search it, and checksums of its files."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

__all__ = ["IndexManifest", "MANIFEST_NAME", "FORMAT_VERSION", "normalize_data_roots"]

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


def normalize_data_roots(roots: Iterable[str | os.PathLike] | str | os.PathLike | None) -> list[str]:
    """Data roots as absolute, normalised directory paths (without duplicates, in order).

    >>> normalize_data_roots(["/data/shapes/", "/data/shapes", "/data/../data/more"])
    ['/data/shapes', '/data/more']
    """
    if roots is None:
        return []
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    out: list[str] = []
    for root in roots:
        if not isinstance(root, (str, os.PathLike)) or not os.fspath(root):
            raise ValueError(f"`data_roots` must be directory paths, got {root!r}")
        path = os.path.normpath(os.path.abspath(os.path.expanduser(os.fspath(root))))
        if path == os.path.sep:
            raise ValueError(
                "`data_roots` names '/', which would let the search service serve any file on the machine; "
                "name the dataset's own directory"
            )
        if path not in out:
            out.append(path)
    return out


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class IndexManifest:
    """Everything needed to trust and query an index directory; saved as ``manifest.json``."""

    model: str
    """Name of the model that produced the vectors (queries must use the same one)."""
    checkpoint_hash: str
    """Hash of the model checkpoint (a fine-tuned model makes different vectors)."""
    dim: int
    """Vector dimension."""
    metric: str = "ip"
    """``ip`` (inner product; cosine when normalised) or ``l2`` (squared distance, lower is closer)."""
    normalize: bool = True
    """Whether vectors and queries are L2-normalised before use."""
    count: int = 0
    """Live vectors (after deletions)."""
    checkpoint: str | None = None
    """Path of the model checkpoint, for tools that must encode queries (``raylens search``)."""
    index_factory: str = "Flat"
    """The FAISS factory string of the index."""
    choice_reason: str = ""
    """Why this index type was chosen (automatic choice) or ``explicit``."""
    search_params: dict[str, Any] = field(default_factory=dict)
    """Search knobs used by default (``nprobe``, ``efSearch``, ``k_factor``), tuned or default."""
    tuning: dict[str, Any] = field(default_factory=dict)
    """How ``search_params`` were tuned: target, measured recall@10 and latency, the table tried."""
    next_id: int = 0
    """The id the next added vector gets (ids are never reused)."""
    tombstones: int = 0
    """Deleted vectors still physically in an index type that cannot remove (HNSW, Refine)."""
    created_at: str = field(default_factory=utc_now)
    """ISO time of the first build."""
    updated_at: str = field(default_factory=utc_now)
    """ISO time of the last save."""
    data_roots: list[str] = field(default_factory=list)
    """Directories the files the metadata's ``path`` column names live under (absolute). The search
    service serves an indexed item's file (``GET /images/...``) only from inside these."""
    checksums: dict[str, str] = field(default_factory=dict)
    """sha256 of every file of the directory but the manifest, verified on load."""
    build: dict[str, Any] = field(default_factory=dict)
    """The resolved build options and build figures (seconds, memory), for reproducibility."""
    faiss_version: str = ""
    """FAISS version that wrote the index."""
    format_version: int = FORMAT_VERSION
    """Layout version of the directory."""

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"`model` must be a non-empty model name, got {self.model!r}")
        if not isinstance(self.checkpoint_hash, str):
            raise ValueError(f"`checkpoint_hash` must be a string (use '' if unknown), got {self.checkpoint_hash!r}")
        if not isinstance(self.dim, int) or self.dim < 1:
            raise ValueError(f"`dim` must be a positive int, got {self.dim!r}")
        if self.metric not in ("ip", "l2"):
            raise ValueError(f"`metric` must be 'ip' or 'l2', got {self.metric!r}")
        if self.count < 0 or self.next_id < 0:
            raise ValueError(f"`count` and `next_id` must be >= 0, got {self.count}, {self.next_id}")
        self.data_roots = normalize_data_roots(self.data_roots)
        if self.format_version > FORMAT_VERSION:
            raise ValueError(
                f"`format_version` {self.format_version} is newer than this raylens reads ({FORMAT_VERSION}); upgrade raylens"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IndexManifest:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_json(cls, text: str) -> IndexManifest:
        return cls.from_dict(json.loads(text))
