"""Nearest neighbours in ~N log N: PCA to a few dimensions, then a k-d tree. numpy/scipy only."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

NEIGHBOUR_DIMS = 16  # k-d trees stay fast up to ~20 dimensions; CNN embeddings keep their structure in 16


def pca_reduce(x: np.ndarray, dims: int = NEIGHBOUR_DIMS, *, seed: int = 0, sample: int = 5000) -> np.ndarray:
    """(N, D) -> (N, min(dims, D)) float32, PCA fitted on a random sample of rows."""
    x = np.asarray(x, dtype=np.float32)
    if x.shape[1] <= dims:
        return x
    rng = np.random.default_rng(seed)
    rows = x[rng.choice(len(x), size=min(sample, len(x)), replace=False)]
    mean = rows.mean(axis=0)
    _, _, vt = np.linalg.svd(rows - mean, full_matrices=False)
    return (x - mean) @ vt[:dims].T


def neighbours(space: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(Q, k) distances and indices of the k nearest rows of ``space`` other than the query itself.

    space : (N, d) float32. queries : (Q,) int64 row indices into ``space``. Rows with fewer
    than k others are padded with index -1 and distance inf.
    """
    k_eff = min(k + 1, len(space))
    dist, idx = cKDTree(space).query(space[queries], k=k_eff, workers=-1)
    dist, idx = dist.reshape(len(queries), k_eff), idx.reshape(len(queries), k_eff)
    # Drop the query itself (not always in column 0 when exact duplicates tie at distance 0).
    is_self = idx == queries[:, None]
    keep_first_k = np.cumsum(~is_self, axis=1) <= k
    mask = ~is_self & keep_first_k
    order = np.argsort(~mask, axis=1, kind="stable")[:, :k]  # kept columns first, in distance order
    taken = np.take_along_axis(mask, order, axis=1)
    out_idx = np.where(taken, np.take_along_axis(idx, order, axis=1), -1).astype(np.int64)
    out_dist = np.where(taken, np.take_along_axis(dist, order, axis=1), np.inf)
    if out_idx.shape[1] < k:  # fewer rows than k + 1
        pad = k - out_idx.shape[1]
        out_idx = np.pad(out_idx, ((0, 0), (0, pad)), constant_values=-1)
        out_dist = np.pad(out_dist, ((0, 0), (0, pad)), constant_values=np.inf)
    return out_dist, out_idx
