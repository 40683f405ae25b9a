"""Per-vector metadata in an Arrow table keyed by a sorted ``id`` column, stored as parquet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["MetadataStore", "to_table"]

ID = "id"


def to_table(metadata: Any, n: int) -> pa.Table:
    """``metadata`` (Arrow table, pandas frame, dict of columns, list of row dicts, or None) as a table of n rows."""
    if metadata is None:
        return pa.table({})
    if isinstance(metadata, pa.RecordBatch):
        metadata = pa.Table.from_batches([metadata])
    if hasattr(metadata, "to_arrow") and not isinstance(metadata, pa.Table):  # polars and friends
        metadata = metadata.to_arrow()
    if type(metadata).__name__ == "DataFrame" and hasattr(metadata, "columns"):  # pandas
        metadata = pa.Table.from_pandas(metadata, preserve_index=False)
    if isinstance(metadata, dict):
        cols = {}
        for k, v in metadata.items():
            if isinstance(v, np.ndarray) and v.ndim > 1:
                v = list(v)
            cols[str(k)] = v
        try:
            metadata = pa.table(cols)
        except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as e:
            raise ValueError(
                f"`metadata` columns could not become an Arrow table: {e}; give every column {n} values"
            ) from e
    elif isinstance(metadata, list):
        if not all(isinstance(r, dict) for r in metadata):
            raise TypeError("`metadata` as a list must hold one dict per vector")
        metadata = pa.Table.from_pylist(metadata) if metadata else pa.table({})
    if not isinstance(metadata, pa.Table):
        raise TypeError(
            f"`metadata` must be a pyarrow.Table, a dict of columns or a list of dicts, got {type(metadata).__name__}"
        )
    if metadata.num_columns and metadata.num_rows != n:
        raise ValueError(f"`metadata` has {metadata.num_rows} rows but there are {n} vectors; give one row per vector")
    if ID in metadata.column_names:
        raise ValueError(
            "`metadata` has an 'id' column, but 'id' is the index's own stable id; "
            "rename the column (e.g. 'source_id') or pass the values as ids=..."
        )
    return metadata


class MetadataStore:
    """Rows of metadata, one per live vector, sorted by id. Lookups by id use binary search."""

    def __init__(self, table: pa.Table | None = None):
        table = table if table is not None else pa.table({ID: pa.array([], pa.int64())})
        if ID not in table.column_names:
            raise ValueError("metadata table has no 'id' column")
        ids = table.column(ID).to_numpy().astype(np.int64, copy=False)
        if len(ids) > 1 and not (np.diff(ids) > 0).all():
            table = table.sort_by(ID)
            ids = table.column(ID).to_numpy().astype(np.int64, copy=False)
        self.table = table
        self._ids = ids

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def ids(self) -> np.ndarray:
        return self._ids

    @property
    def columns(self) -> list[str]:
        return self.table.column_names

    def append(self, ids: np.ndarray, metadata: pa.Table) -> MetadataStore:
        """A new store with ``ids`` and their metadata rows added."""
        rows = metadata if metadata.num_columns else pa.table({})
        rows = (
            rows.append_column(ID, pa.array(ids, pa.int64()))
            if rows.num_columns
            else pa.table({ID: pa.array(ids, pa.int64())})
        )
        try:
            merged = pa.concat_tables([self.table, rows], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise ValueError(f"`metadata` columns do not match the index's metadata types: {e}") from e
        return MetadataStore(merged)

    def drop(self, ids: np.ndarray) -> MetadataStore:
        """A new store without ``ids``."""
        keep = ~np.isin(self._ids, ids)
        return MetadataStore(self.table.filter(pa.array(keep)))

    def contains(self, ids: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self._ids, ids)
        pos = np.minimum(pos, max(len(self._ids) - 1, 0))
        return (self._ids[pos] == ids) if len(self._ids) else np.zeros(len(ids), bool)

    def rows(self, ids: np.ndarray) -> list[dict[str, Any]]:
        """The metadata of ``ids`` (all present) as dicts, in the order asked."""
        pos = np.searchsorted(self._ids, ids)
        return self.table.take(pa.array(pos, pa.int64())).to_pylist()

    def save(self, path: Path) -> None:
        pq.write_table(self.table, path)

    @classmethod
    def load(cls, path: Path, *, memory_map: bool = False) -> MetadataStore:
        return cls(pq.read_table(path, memory_map=memory_map))
