"""A timm-style registry: small factory functions registered by name.

>>> from raylens.registry import Registry
>>> shapes = Registry("shape")
>>> @shapes.register("square")
... def _square(side=1):
...     return side * side
>>> shapes.create("square", side=3)
9
>>> shapes.names()
['square']
"""

from __future__ import annotations

import difflib
import fnmatch
import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["Registry"]


class Registry:
    """Maps names to factories. ``create`` on an unknown name lists the close matches."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}
        self._docs: dict[str, str] = {}

    def register(self, name: str | None = None, *, doc: str | None = None):
        """Decorator that registers ``fn`` under ``name`` (default: the function's name)."""

        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            key = name or fn.__name__
            if key in self._entries and self._entries[key] is not fn:
                warnings.warn(f"{self.kind} {key!r} was registered twice; the later one wins", stacklevel=2)
            self._entries[key] = fn
            self._docs[key] = doc or ((fn.__doc__ or "").strip().splitlines() or [""])[0]
            return fn

        return deco

    def get(self, name: str) -> Callable[..., Any]:
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.kind} name must be a non-empty string, got {name!r}")
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._entries), n=5, cutoff=0.4)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise KeyError(
                f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(sorted(self._entries)) or '(none)'}"
            ) from None

    def create(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**{k: v for k, v in kwargs.items() if v is not None})

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def describe(self, name: str) -> str:
        self.get(name)
        return self._docs.get(name, "")

    def __contains__(self, name: object) -> bool:
        return name in self._entries
