"""Input checks at the index API boundary: vectors, ids and k. Errors name the input and the fix."""

from __future__ import annotations

import numpy as np

MAX_K = 10_000
"""The largest ``k`` (plus ``offset``) one search may ask for."""


def as_matrix(x, *, name: str, dim: int | None, allow_1d: bool = False) -> np.ndarray:
    """``x`` as a C-contiguous ``(n, dim)`` float32 matrix, or a ValueError/TypeError saying why not.

    Rejects: non-float dtypes, empty input, the wrong dim, NaN and inf. Float64 becomes float32
    (the one conversion FAISS needs); anything else is the caller's to fix.
    """
    if x is None:
        raise ValueError(f"`{name}` is None; pass a (n, d) float32 numpy array")
    arr = np.asarray(x)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(
            f"`{name}` must hold floats (float32), got dtype {arr.dtype}; convert with np.asarray(x, dtype=np.float32)"
        )
    if arr.ndim == 1 and allow_1d:
        arr = arr[None, :]
    if arr.ndim != 2:
        shape = "(n, d) or (d,)" if allow_1d else "(n, d)"
        raise ValueError(f"`{name}` must have shape {shape}, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"`{name}` is empty (shape {arr.shape}); pass at least one vector")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(
            f"`{name}` has dim {arr.shape[1]} but the index holds dim-{dim} vectors; "
            "embed with the model the index was built with (see index.manifest.model)"
        )
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(
            f"`{name}` has {bad.size} row(s) with NaN or inf (first: row {int(bad[0])}); "
            "drop or re-embed those rows before adding or searching"
        )
    return arr


def normalize_rows(x: np.ndarray, *, name: str) -> np.ndarray:
    """L2-normalise rows (a copy); a zero row cannot be normalised and raises."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        bad = np.flatnonzero(norms[:, 0] == 0)
        raise ValueError(
            f"`{name}` has {bad.size} all-zero row(s) (first: row {int(bad[0])}) which cannot be normalised; "
            "drop them or build with normalize=False"
        )
    return np.ascontiguousarray(x / norms, dtype=np.float32)


def as_ids(ids, *, n: int, name: str = "ids") -> np.ndarray:
    """``ids`` as a 1-D int64 array of ``n`` unique non-negative values."""
    arr = np.asarray(ids)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"`{name}` must be a 1-D array of {n} ids (one per vector), got shape {arr.shape}")
    if n and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"`{name}` must hold integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if n and arr.min() < 0:
        raise ValueError(f"`{name}` must be >= 0 (negative ids are FAISS's 'no result'), got {int(arr.min())}")
    if np.unique(arr).size != n:
        raise ValueError(f"`{name}` has duplicates; every vector needs its own id")
    return arr


def check_k(k, *, count: int, offset: int = 0) -> None:
    """``k`` must be an int in [1, min(count, 10000)]; ``offset`` an int >= 0 with k + offset <= 10000."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
        raise TypeError(f"`k` must be an int, got {type(k).__name__}")
    if not isinstance(offset, (int, np.integer)) or isinstance(offset, bool) or offset < 0:
        raise ValueError(f"`offset` must be an int >= 0 (results to skip, for pagination), got {offset!r}")
    if count == 0:
        raise ValueError("the index is empty; add vectors before searching")
    if k < 1 or k > count or k > MAX_K:
        raise ValueError(
            f"`k` must be in [1, {min(count, MAX_K)}] (the index holds {count} vectors, max {MAX_K}), got {k}"
        )
    if k + offset > MAX_K:
        raise ValueError(f"`k + offset` must be <= {MAX_K}, got {k} + {offset}; narrow the query with filters instead")
