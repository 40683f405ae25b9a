"""Near-duplicate detection: a similarity threshold, neighbours, then connected components.

At build time :func:`duplicate_groups` maps every vector to the first vector of its group (as
clip-retrieval does for results, but over the whole set before indexing). At search time
:func:`fold_duplicates` folds hits that are near-duplicates of a better-ranked hit into it.
"""

from __future__ import annotations

import math

import faiss
import numpy as np

from raylens.index._faiss_utils import metric_type

__all__ = ["duplicate_groups", "fold_duplicates", "is_close"]

EXACT_MAX_N = 20_000
"""Above this many vectors, neighbours come from a temporary IVF index (approximate)."""


def is_close(score: np.ndarray, threshold: float, metric: str) -> np.ndarray:
    """Similarity >= threshold for ``ip``; squared distance <= threshold for ``l2``."""
    return score >= threshold if metric == "ip" else score <= threshold


def _neighbours(x: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    n, d = x.shape
    mt = metric_type(metric)
    if n <= EXACT_MAX_N:
        return faiss.knn(x, x, k, metric=mt)
    nlist = 2 ** int(math.log2(math.sqrt(n)))
    index = faiss.index_factory(d, f"IVF{nlist},Flat", mt)
    rng = np.random.default_rng(0)
    index.train(x[rng.choice(n, min(n, 64 * nlist), replace=False)])
    index.add(x)
    index.nprobe = 8
    return index.search(x, k)


def duplicate_groups(x: np.ndarray, threshold: float, metric: str = "ip", k: int = 16) -> np.ndarray:
    """``rep[i]``: the smallest row index in row i's near-duplicate group (``rep[i] == i`` for the kept rows).

    Two rows are near-duplicates when their score passes ``threshold``; groups are the connected
    components of that relation among each row's ``k`` nearest neighbours.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(x)
    if n < 2:
        return np.arange(n)
    D, I = _neighbours(x, min(k, n), metric)
    rows = np.repeat(np.arange(n), I.shape[1])
    cols, scores = I.ravel(), D.ravel()
    keep = (cols >= 0) & (cols != rows) & is_close(scores, threshold, metric)
    graph = coo_matrix((np.ones(int(keep.sum()), np.int8), (rows[keep], cols[keep])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    first = np.full(labels.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(n))
    return first[labels]


def fold_duplicates(vectors: np.ndarray, threshold: float, metric: str) -> list[list[int]]:
    """Greedy fold of ranked hits: returns groups of positions, each led by the best-ranked member.

    A hit joins the first kept hit it is a near-duplicate of; otherwise it starts a new group.
    """
    if metric == "ip":
        sim = vectors @ vectors.T
    else:
        sq = (vectors**2).sum(1)
        sim = sq[:, None] + sq[None, :] - 2 * vectors @ vectors.T
    groups: list[list[int]] = []
    leaders: list[int] = []
    for i in range(len(vectors)):
        if leaders:
            close = is_close(sim[i, leaders], threshold, metric)
            if close.any():
                groups[int(np.argmax(close))].append(i)
                continue
        leaders.append(i)
        groups.append([i])
    return groups
