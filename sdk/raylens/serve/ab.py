"""A/B traffic splits between model versions behind one route: the arithmetic, without Ray.

>>> split = TrafficSplit({"v1": 0.8, "v2": 0.2})
>>> split.choose(0.5), split.choose(0.9)
('v1', 'v2')
>>> split.choose_for("user-42") == split.choose_for("user-42")   # sticky per key
True
"""

from __future__ import annotations

import bisect
import hashlib
import random
from dataclasses import dataclass, field

__all__ = ["TrafficSplit", "VERSION_HEADER", "AB_KEY_HEADER"]

VERSION_HEADER = "x-model-version"
"""A request header that pins one version (bypasses the split), e.g. for a canary check."""
AB_KEY_HEADER = "x-ab-key"
"""A request header whose value keeps a caller on one version (the same key, the same version)."""


@dataclass
class TrafficSplit:
    """Weights per version (any positive numbers; they are normalised)."""

    weights: dict[str, float]
    seed: int | None = None
    """Seed of the random draw (None: fresh entropy); tests pass one."""
    _cum: list[float] = field(init=False, repr=False)
    _names: list[str] = field(init=False, repr=False)
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self):
        if not isinstance(self.weights, dict) or not self.weights:
            raise ValueError("a traffic split needs at least one version, e.g. {'v1': 0.9, 'v2': 0.1}")
        for name, w in self.weights.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"version names must be non-empty strings, got {name!r}")
            if not isinstance(w, (int, float)) or isinstance(w, bool) or not w >= 0 or w == float("inf"):
                raise ValueError(f"weight of version {name!r} must be a finite number >= 0, got {w!r}")
        total = float(sum(self.weights.values()))
        if total <= 0:
            raise ValueError("at least one version needs a weight > 0")
        self._names = list(self.weights)
        acc, self._cum = 0.0, []
        for n in self._names:
            acc += self.weights[n] / total
            self._cum.append(acc)
        self._cum[-1] = 1.0
        self._rng = random.Random(self.seed)

    @property
    def versions(self) -> list[str]:
        return list(self._names)

    def fraction(self, version: str) -> float:
        """The share of traffic ``version`` gets."""
        return self.weights[version] / float(sum(self.weights.values()))

    def choose(self, u: float) -> str:
        """The version for a uniform draw ``u`` in [0, 1)."""
        if not 0.0 <= u < 1.0:
            raise ValueError(f"u must be in [0, 1), got {u}")
        return self._names[bisect.bisect_right(self._cum, u)]

    def pick(self) -> str:
        """A random version by weight."""
        return self.choose(self._rng.random())

    def choose_for(self, key: str) -> str:
        """A version decided by ``key`` alone (sticky: the same key always gets the same version)."""
        digest = hashlib.sha256(key.encode("utf-8")).digest()
        return self.choose(int.from_bytes(digest[:8], "big") / 2.0**64)

    def route(self, pinned: str | None = None, key: str | None = None) -> str:
        """The version for one request: ``pinned`` if it names a version, else by ``key``, else random.

        An unknown ``pinned`` version raises ``KeyError`` naming the known ones.
        """
        if pinned:
            if pinned not in self.weights:
                raise KeyError(f"unknown model version {pinned!r}; versions: {self._names}")
            return pinned
        return self.choose_for(key) if key else self.pick()
