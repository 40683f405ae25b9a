"""Clustered synthetic embeddings for tests, examples and the benchmark (no downloads).

Vectors look like image embeddings in the ways that matter to an index: they form clusters
(classes), they have a low intrinsic dimension (a random linear map from a ``latent_dim``
space), and they carry isotropic noise in the full dimension. Queries drawn with the same seed
and a different ``part`` are held out: the same distribution, not the same points.
"""

from __future__ import annotations

import numpy as np

__all__ = ["clustered_vectors"]


def clustered_vectors(
    n: int,
    dim: int = 512,
    *,
    n_clusters: int = 1000,
    latent_dim: int = 32,
    cluster_spread: float = 0.8,
    noise: float = 0.1,
    seed: int = 0,
    part: int = 0,
    chunk: int = 100_000,
) -> tuple[np.ndarray, np.ndarray]:
    """``(vectors (n, dim) float32, cluster labels (n,) int64)``.

    The clusters and the latent→dim map depend only on ``seed``; ``part`` seeds the points, so
    ``part=1`` gives held-out queries from the same distribution as ``part=0``.
    """
    if n < 1 or dim < 1 or n_clusters < 1 or latent_dim < 1:
        raise ValueError(f"n, dim, n_clusters and latent_dim must be >= 1, got {n}, {dim}, {n_clusters}, {latent_dim}")
    world = np.random.default_rng(seed)
    centers = world.standard_normal((n_clusters, latent_dim), dtype=np.float32)
    proj = world.standard_normal((latent_dim, dim), dtype=np.float32) / np.sqrt(latent_dim)
    rng = np.random.default_rng([seed, part + 1])
    labels = rng.integers(0, n_clusters, n)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, chunk):
        lab = labels[s : s + chunk]
        z = centers[lab] + cluster_spread * rng.standard_normal((len(lab), latent_dim), dtype=np.float32)
        out[s : s + chunk] = z @ proj + noise * rng.standard_normal((len(lab), dim), dtype=np.float32)
    return out, labels.astype(np.int64)
