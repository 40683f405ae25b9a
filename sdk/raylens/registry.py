"""A timm-style registry: small factory functions registered by name, with metadata.

>>> from raylens.registry import Registry
>>> shapes = Registry("shape")
>>> @shapes.register("square", sides=4)
... def _square(side=1):
...     return side * side
>>> shapes.create("square", side=3)
9
>>> shapes.names(), shapes.names(sides=3)
(['square'], [])
>>> shapes.meta("square")
{'sides': 4}
"""

from __future__ import annotations

import difflib
import fnmatch
import warnings
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["Registry", "unknown_name_error"]


def unknown_name_error(what: str, name: str, known: Iterable[str], hint: str = "") -> KeyError:
    """The one "unknown name" error: the close matches first, then ``hint`` (or every known name)."""
    known = list(known)
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.4)
    msg = f"unknown {what} {name!r}."
    if close:
        msg += f" Did you mean: {', '.join(close)}?"
    msg += f" {hint}" if hint else f" Known: {', '.join(sorted(known)) or '(none)'}"
    return KeyError(msg)


class Registry:
    """Maps names to factories and their metadata. ``get`` on an unknown name lists the close matches."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}
        self._docs: dict[str, str] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str | None = None, *, doc: str | None = None, **meta: Any):
        """Decorator that registers ``fn`` under ``name`` (default: the function's name).

        Args:
            name: the registry name; defaults to ``fn.__name__``.
            doc: a one-line description; defaults to the first line of ``fn``'s docstring.
            **meta: anything else to keep with the entry (read back with :meth:`meta`, filter
                with :meth:`names`).
        """

        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            key = name or fn.__name__
            if key in self._entries and self._entries[key] is not fn:
                warnings.warn(f"{self.kind} {key!r} was registered twice; the later one wins", stacklevel=2)
            self._entries[key] = fn
            self._docs[key] = doc or ((fn.__doc__ or "").strip().splitlines() or [""])[0]
            self._meta[key] = dict(meta)
            return fn

        return deco

    def unregister(self, name: str) -> Callable[..., Any]:
        """Remove ``name`` (a test's temporary entry, say); returns its factory."""
        fn = self.get(name)
        del self._entries[name], self._docs[name], self._meta[name]
        return fn

    def get(self, name: str) -> Callable[..., Any]:
        """The factory registered as ``name``; ``KeyError`` with the close matches if there is none."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.kind} name must be a non-empty string, got {name!r}")
        try:
            return self._entries[name]
        except KeyError:
            raise unknown_name_error(self.kind, name, self._entries) from None

    def create(self, name: str, **kwargs: Any) -> Any:
        """Call the factory ``name`` with ``kwargs``; ``None`` values are dropped (the defaults apply)."""
        return self.get(name)(**{k: v for k, v in kwargs.items() if v is not None})

    def names(self, pattern: str = "*", **meta_filters: Any) -> list[str]:
        """Sorted names matching the glob ``pattern`` whose metadata equals every ``meta_filters`` item."""
        return sorted(
            n
            for n in self._entries
            if fnmatch.fnmatch(n, pattern)
            and all(k in self._meta[n] and self._meta[n][k] == v for k, v in meta_filters.items())
        )

    def meta(self, name: str) -> dict[str, Any]:
        """A copy of the metadata ``name`` was registered with."""
        self.get(name)
        return dict(self._meta[name])

    def describe(self, name: str) -> str:
        """The one-line description of ``name``."""
        self.get(name)
        return self._docs.get(name, "")

    def __contains__(self, name: object) -> bool:
        return name in self._entries
