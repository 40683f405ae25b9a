"""Build options for :meth:`VectorIndex.build`: one validated dataclass, saved in the manifest."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["BuildOptions", "parse_bytes"]

_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_bytes(value: int | float | str | None, *, name: str = "memory_budget") -> int | None:
    """``4G``, ``512M``, ``1.5G`` or a byte count → bytes; None stays None."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"`{name}` must be bytes (int) or a size string like '4G', got {value!r}")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError(f"`{name}` must be > 0 bytes, got {value}")
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)i?B?\s*", str(value), flags=re.I)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"`{name}` must be a size like '4G', '512M' or a byte count, got {value!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


@dataclass
class BuildOptions:
    """How to build an index; every field has a working default."""

    metric: str = "ip"
    """``ip`` (inner product, cosine with ``normalize``) or ``l2``."""
    normalize: bool = True
    """L2-normalise vectors and queries (CLIP embeddings are compared by cosine)."""
    index_factory: str | None = None
    """A FAISS factory string (``"IVF1024,Flat"``, ``"OPQ64_256,IVF4096,PQ64"``...); None chooses automatically."""
    memory_budget: int | str | None = None
    """Most bytes the index may take (``"4G"``); None: half of this machine's available memory."""
    latency_target_ms: float = 10.0
    """Per-query latency the automatic choice aims for (autofaiss's default is 10 ms)."""
    build_time_target_s: float = 300.0
    """Build time the automatic choice aims for on this machine's cores (HNSW size, IVF nlist)."""
    recall_target: float = 0.95
    """Recall@10 against exact search that autotuning must reach on held-out queries."""
    tune: bool = True
    """Autotune ``nprobe``/``efSearch`` after building (approximate indices only)."""
    tune_queries: int = 1000
    """Held-out queries sampled from the data for autotuning (their own id is left out of recall)."""
    train_size: int | None = None
    """Vectors sampled to train IVF/PQ; None: about 64 per IVF list, at most 200,000."""
    dedup_threshold: float | None = None
    """Drop near-duplicates at build time: similarity >= threshold (ip) or distance <= threshold (l2)."""
    device: str = "auto"
    """``auto`` (GPU when faiss-gpu sees one), ``cpu`` or ``cuda``."""
    seed: int = 0
    """Seeds the training sample and the tuning queries."""
    threads: int | None = None
    """FAISS OpenMP threads while building (None: FAISS's default, every core). On a busy machine,
    1 can train PQ many times faster: its many tiny parallel steps stall on descheduled threads."""

    def __post_init__(self):
        if self.metric not in ("ip", "l2"):
            raise ValueError(
                f"`metric` must be 'ip' or 'l2', got {self.metric!r} (for cosine use metric='ip', normalize=True)"
            )
        if not isinstance(self.normalize, bool):
            raise TypeError(f"`normalize` must be True or False, got {self.normalize!r}")
        if self.index_factory is not None and (
            not isinstance(self.index_factory, str) or not self.index_factory.strip()
        ):
            raise ValueError(
                f"`index_factory` must be a FAISS factory string such as 'IVF1024,Flat' or None, got {self.index_factory!r}"
            )
        self.memory_budget = parse_bytes(self.memory_budget)
        if not (self.latency_target_ms > 0):
            raise ValueError(f"`latency_target_ms` must be > 0, got {self.latency_target_ms}")
        if not (self.build_time_target_s > 0):
            raise ValueError(f"`build_time_target_s` must be > 0 seconds, got {self.build_time_target_s}")
        if not (0 < self.recall_target <= 1):
            raise ValueError(f"`recall_target` must be in (0, 1], got {self.recall_target}; 0.95 is the usual target")
        if not isinstance(self.tune_queries, int) or self.tune_queries < 10:
            raise ValueError(f"`tune_queries` must be an int >= 10, got {self.tune_queries!r}")
        if self.train_size is not None and (not isinstance(self.train_size, int) or self.train_size < 1):
            raise ValueError(f"`train_size` must be a positive int or None (automatic), got {self.train_size!r}")
        if self.dedup_threshold is not None and not isinstance(self.dedup_threshold, (int, float)):
            raise TypeError(f"`dedup_threshold` must be a number or None, got {self.dedup_threshold!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"`threads` must be a positive int or None (FAISS default), got {self.threads!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"`device` must be 'auto', 'cpu' or 'cuda', got {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BuildOptions:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
