"""Nearest neighbours in ~N log N: PCA to a few dimensions, then a k-d tree. numpy/scipy only
(plus threadpoolctl, installed with scikit-learn, to keep the PCA's LAPACK calls on one thread).

Never builds an N x N distance matrix. Shared by ``label_errors`` (kNN label disagreement),
``duplicates`` (near-duplicate candidates, similar images) and ``maps`` (PCA before t-SNE).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree
from threadpoolctl import threadpool_limits

# 16 dims keep the class structure of embeddings with overlapping classes (kNN label
# disagreement within 0.02 of the full space; 8 dims: off by 0.39 on average); the
# approximate search below keeps the k-d tree fast there.
NEIGHBOUR_DIMS = 16
PCA_SAMPLE = 5000  # rows the PCA is fitted on: the top components are stable long before that
PROJECT_CHUNK = 8192  # rows projected at a time
EXACT_PCA_SIDE = 512  # larger matrices get a randomized PCA
# (1 + eps)-approximate search: the j-th returned neighbour is at most (1 + eps) times as far as
# the true j-th neighbour, so a copy more than 3x closer than every other image is always found.
# 70,000 queries on 16-d isotropic noise (the k-d tree's worst case): 37 s with eps = 1,
# 13 s with eps = 2; on clustered data the kNN label disagreement moves by <= 0.02 against exact.
APPROX_EPS = 2.0
MAX_COPIES_SKIPPED = 50  # an image's exact copies searched past; a picture copied more often loses neighbours


def pca_reduce(x: np.ndarray, dims: int = NEIGHBOUR_DIMS, *, seed: int = 0, sample: int = PCA_SAMPLE,
               standardise: bool = False) -> np.ndarray:
    """(N, D) -> (N, min(dims, D)) float32: projection on the top principal components.

    The components are fitted on a seeded random sample of at most ``sample`` rows, so the
    result is deterministic for a seed.
    ``standardise``: the components of the columns divided by their standard deviation (in
    the sample), so that no wide-ranging feature dominates; no scaled copy of ``x`` is made.
    When D <= dims the full rotation, which moves no distance or angle, is skipped: the
    result is ``x`` as float32 (``x`` itself when it already is: never modify it in place),
    or with ``standardise`` a new array of the centred, scaled columns.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.shape[1] <= dims and not standardise:
        return x
    rng = np.random.default_rng(seed)
    rows = x[np.sort(rng.choice(len(x), size=min(sample, len(x)), replace=False))].astype(np.float64)
    mean = rows.mean(axis=0)
    scale = 1.0 / (rows.std(axis=0) + 1e-3) if standardise else np.ones(x.shape[1])
    if x.shape[1] <= dims:
        return (x - mean.astype(np.float32)) * scale.astype(np.float32)
    rows *= scale
    # Multithreaded OpenBLAS LAPACK (SVD, QR) on a busy 2-core machine runs ~100x slower than
    # on one thread (a 128 x 128 SVD: 2.2 s vs 0.02 s; a 1,400 x 60 QR: 2.0 s vs 0.02 s), and
    # these matrices are too small to gain from threads.
    with threadpool_limits(limits=1, user_api="blas"):
        components = _top_components(rows - mean * scale, dims, rng)
    mean, components = mean.astype(np.float32), (components.T * scale[:, None]).astype(np.float32)
    out = np.empty((len(x), components.shape[1]), dtype=np.float32)
    for start in range(0, len(x), PROJECT_CHUNK):  # no centred (N, D) copy of wide features
        out[start:start + PROJECT_CHUNK] = (x[start:start + PROJECT_CHUNK] - mean) @ components
    return out


def _top_components(rows: np.ndarray, dims: int, rng: np.random.Generator) -> np.ndarray:
    """(dims, D) leading right singular vectors of the centred (m, D) ``rows``.

    The SVD runs on the small side's Gram matrix (at most 512 x 512), or, when both sides are
    larger, on a randomized range sketch (Halko et al. 2011, 4 power iterations): large
    LAPACK calls are slow on small, shared machines, matrix products are not.
    """
    m, d = rows.shape
    if d <= min(m, EXACT_PCA_SIDE):
        _, _, vt = np.linalg.svd(rows.T @ rows)  # (D, D), symmetric: right vectors = eigenvectors
        return vt[:dims]
    if m <= EXACT_PCA_SIDE:
        u, s2, _ = np.linalg.svd(rows @ rows.T)  # (m, m)
        keep = min(dims, m)
        sv = np.sqrt(np.maximum(s2[:keep], 0.0))
        vt = (rows.T @ u[:, :keep]).T / np.where(sv > 0, sv, 1.0)[:, None]
        return np.pad(vt, ((0, dims - keep), (0, 0))) if keep < dims else vt
    sketch = rows @ rng.standard_normal((d, dims + 10))
    for _ in range(4):
        sketch, _ = np.linalg.qr(rows @ (rows.T @ np.linalg.qr(sketch)[0]))
    q, _ = np.linalg.qr(sketch)
    small = q.T @ rows  # (dims + 10, D): rows' action on the sketched range
    u, s2, _ = np.linalg.svd(small @ small.T)
    sv = np.sqrt(np.maximum(s2[:dims], 0.0))
    return (small.T @ u[:, :dims]).T / np.where(sv > 0, sv, 1.0)[:, None]


def neighbours(space: np.ndarray, queries: np.ndarray, k: int, *, eps: float = APPROX_EPS,
               tree: cKDTree | None = None, groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(Q, k) distances and indices of the k nearest rows of ``space`` other than the query itself.

    space : (N, d) float32. queries : (Q,) int64 row indices into ``space``. Rows with fewer
    than k others are padded with index -1 and distance inf. ``tree`` reuses a k-d tree
    already built on ``space``. groups : (N,) int64, optional: rows of the query's group (its
    exact copies, up to MAX_COPIES_SKIPPED of them) are not its neighbours either.
    """
    queries = np.asarray(queries, dtype=np.int64)
    copies = 0 if groups is None or len(space) == 0 else min(int(np.bincount(groups).max()) - 1, MAX_COPIES_SKIPPED)
    k_eff = min(k + 1 + copies, len(space))
    if len(queries) == 0 or k_eff < 1:
        return np.full((len(queries), k), np.inf), np.full((len(queries), k), -1, dtype=np.int64)
    tree = cKDTree(space) if tree is None else tree
    dist, idx = tree.query(space[queries], k=k_eff, eps=eps, workers=-1)
    dist, idx = dist.reshape(len(queries), k_eff), idx.reshape(len(queries), k_eff)
    # Drop the query itself (not always in column 0 when exact duplicates tie at distance 0).
    is_self = idx == queries[:, None]
    if groups is not None:
        is_self |= (idx < len(space)) & (groups[np.minimum(idx, len(space) - 1)] == groups[queries][:, None])
    keep = ~is_self & (np.cumsum(~is_self, axis=1) <= k) & (idx < len(space))
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept columns first, in distance order
    taken = np.take_along_axis(keep, order, axis=1)
    out_idx = np.where(taken, np.take_along_axis(idx, order, axis=1), -1).astype(np.int64)
    out_dist = np.where(taken, np.take_along_axis(dist, order, axis=1), np.inf)
    if out_idx.shape[1] < k:  # fewer rows than k + 1
        pad = k - out_idx.shape[1]
        out_idx = np.pad(out_idx, ((0, 0), (0, pad)), constant_values=-1)
        out_dist = np.pad(out_dist, ((0, 0), (0, pad)), constant_values=np.inf)
    return out_dist, out_idx
