"""Metadata filters → the ids they allow → a FAISS id selector used inside the search.

A filter is a dict of column → condition, all of which must hold (AND)::

    {"label": 3}                          # equality
    {"split": ["train", "val"]}           # in (a list, tuple or set)
    {"modality": {"in": ["CT", "MR"]}}    # the same, spelled out; also "eq", "ne", "not_in"
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["normalize_filters", "check_filter_types", "matching_ids", "FilterCache", "OPS"]

OPS = ("eq", "ne", "in", "not_in")


def normalize_filters(filters: dict[str, Any] | None, columns: list[str]) -> tuple[tuple[str, str, Any], ...]:
    """``filters`` as a hashable tuple of (column, op, value) triples; unknown columns/ops raise."""
    if filters is None:
        return ()
    if not isinstance(filters, dict):
        raise TypeError(f"`filters` must be a dict of column -> value, got {type(filters).__name__}")
    out = []
    for col, cond in filters.items():
        if col not in columns:
            known = ", ".join(c for c in columns) or "(none)"
            raise ValueError(f"`filters` names unknown metadata column {col!r}; the index's columns are: {known}")
        if isinstance(cond, dict):
            if len(cond) != 1 or next(iter(cond)) not in OPS:
                raise ValueError(f"`filters[{col!r}]` must be one of {{op: value}} with op in {OPS}, got {cond!r}")
            op, val = next(iter(cond.items()))
        elif isinstance(cond, (list, tuple, set, frozenset, np.ndarray)):
            op, val = "in", cond
        else:
            op, val = "eq", cond
        if op in ("in", "not_in"):
            if not isinstance(val, (list, tuple, set, frozenset, np.ndarray)):
                raise ValueError(f"`filters[{col!r}]` with {op!r} needs a list of values, got {val!r}")
            val = tuple(sorted(set(np.asarray(list(val)).tolist()), key=repr))
        elif isinstance(val, np.generic):
            val = val.item()
        out.append((col, op, val))
    return tuple(sorted(out, key=repr))


def _value_fits(arrow_type: pa.DataType, value: Any) -> bool:
    """Whether a filter value has the type of its column (None fits any); other types: pyarrow decides."""
    if value is None:
        return True
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return isinstance(value, str)
    if pa.types.is_boolean(arrow_type):
        return isinstance(value, (bool, np.bool_))
    if pa.types.is_integer(arrow_type):
        if isinstance(value, (bool, np.bool_)):
            return False
        return isinstance(value, (int, np.integer)) or (
            isinstance(value, (float, np.floating)) and float(value).is_integer()
        )
    if pa.types.is_floating(arrow_type):
        return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    return True


def check_filter_types(filters: dict[str, Any] | None, schema: pa.Schema) -> None:
    """ValueError unless every value of ``filters`` has its column's type: text for text columns,
    true/false for boolean ones, whole numbers for integer ones, numbers for float ones (null fits all).
    No value is coerced (``True`` is not ``1``, ``"3"`` is not ``3``)."""
    for col, cond in (filters or {}).items():
        if col not in schema.names:
            continue  # normalize_filters names unknown columns
        if isinstance(cond, dict) and len(cond) == 1:
            cond = next(iter(cond.values()))
        values = list(cond) if isinstance(cond, (list, tuple, set, frozenset, np.ndarray)) else [cond]
        arrow_type = schema.field(col).type
        for v in values:
            if not _value_fits(arrow_type, v):
                raise ValueError(
                    f"`filters[{col!r}]` value {v!r} does not compare with column type {arrow_type}; "
                    "pass a value of that type"
                )


def _mask(column: pa.ChunkedArray, op: str, val: Any) -> pa.ChunkedArray:
    if op in ("eq", "ne") and val is None:
        m = pc.is_null(column)
        return pc.invert(m) if op == "ne" else m
    if op == "eq":
        return pc.fill_null(pc.equal(column, pa.scalar(val)), False)
    if op == "ne":
        return pc.fill_null(pc.not_equal(column, pa.scalar(val)), True)
    values = pa.array(list(val)) if val else pa.array([], column.type)
    if len(values) and values.type != column.type:
        values = values.cast(column.type)
    m = pc.is_in(column, value_set=values)
    return pc.invert(m) if op == "not_in" else m


def matching_ids(table: pa.Table, spec: tuple[tuple[str, str, Any], ...]) -> np.ndarray:
    """Ids (sorted int64) of the rows of ``table`` that satisfy every condition in ``spec``."""
    mask = None
    for col, op, val in spec:
        try:
            m = _mask(table.column(col), op, val)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
            raise ValueError(
                f"`filters[{col!r}]` value {val!r} does not compare with column type {table.schema.field(col).type}; "
                f"pass a value of that type ({e})"
            ) from e
        mask = m if mask is None else pc.and_(mask, m)
    ids = table.column("id") if mask is None else table.column("id").filter(mask)
    return ids.to_numpy().astype(np.int64, copy=False)


class FilterCache:
    """The ids recent filters allow, least recently used first out, bounded by bytes (not entries).

    One filter over a large index allows up to one int64 id per vector, so a cache bounded by entry
    count could hold gigabytes; this one never holds more than ``max_bytes`` of id arrays. An array
    larger than the whole budget is not cached. Thread-safe.

    >>> cache = FilterCache(max_bytes=16)
    >>> cache.put(("a",), np.arange(2)); cache.put(("b",), np.arange(2))   # 16 bytes each: "a" is evicted
    >>> cache.get(("a",)) is None, cache.get(("b",)).tolist(), cache.nbytes
    (True, [0, 1], 16)
    """

    def __init__(self, max_bytes: int):
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 0:
            raise ValueError(f"`filter_cache_bytes` must be an int >= 0 (0 turns the cache off), got {max_bytes!r}")
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._items: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: tuple) -> np.ndarray | None:
        """The cached ids of ``key`` (now the most recently used), or None."""
        with self._lock:
            ids = self._items.get(key)
            if ids is not None:
                self._items.move_to_end(key)
            return ids

    def put(self, key: tuple, ids: np.ndarray) -> None:
        """Cache ``ids`` under ``key``, evicting the least recently used entries past the budget."""
        size = int(ids.nbytes)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.nbytes -= int(old.nbytes)
            if size > self.max_bytes:
                return
            while self._items and self.nbytes + size > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self.nbytes -= int(evicted.nbytes)
            self._items[key] = ids
            self.nbytes += size

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.nbytes = 0
