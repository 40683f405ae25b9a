"""Metadata filters → the ids they allow → a FAISS id selector used inside the search.

A filter is a dict of column → condition, all of which must hold (AND)::

    {"label": 3}                          # equality
    {"split": ["train", "val"]}           # in (a list, tuple or set)
    {"modality": {"in": ["CT", "MR"]}}    # the same, spelled out; also "eq", "ne", "not_in"
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["normalize_filters", "matching_ids", "OPS"]

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
