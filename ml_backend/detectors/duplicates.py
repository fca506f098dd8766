"""Similarity errors: exact and near duplicates, and train/val leakage.

Symbols: N images of shape (H, W, C), D embedding width. Never compares all pairs:
exact duplicates come from equal pixel hashes, near-duplicate candidates from each image's
k nearest neighbours in embedding space (k-d tree on a PCA, ~N log N), confirmed by SSIM.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from scipy.ndimage import uniform_filter

from ._checks import fail, length_checked, positive_int_checked
from ._neighbors import neighbours, pca_reduce

SSIM_WINDOW = 7
SSIM_VALUES_PER_CHUNK = 8_000_000  # float64 values per filtered array: ~64 MB each


def ssim_pairs(images: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM of images[a[m]] vs images[b[m]], (M,) float64, vectorised over pairs.

    Same definition as ``skimage.metrics.structural_similarity`` with its defaults
    (7x7 uniform window, sample covariance, K1=0.01, K2=0.03, data_range=255), channels
    averaged: the paper's similarity measure.
    """
    out = np.empty(len(a), dtype=np.float64)
    chunk = max(1, SSIM_VALUES_PER_CHUNK // int(np.prod(images.shape[1:])))
    for start in range(0, len(a), chunk):
        x = images[a[start:start + chunk]].astype(np.float64)
        y = images[b[start:start + chunk]].astype(np.float64)
        out[start:start + chunk] = _ssim(x, y)
    return out


def _ssim(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    win = min(SSIM_WINDOW, x.shape[1], x.shape[2])
    win -= 1 - win % 2  # odd
    size = (1, win, win, 1)
    filt = lambda v: uniform_filter(v, size=size, mode="reflect")  # noqa: E731
    ux, uy = filt(x), filt(y)
    cov = win * win / (win * win - 1)
    vx, vy, vxy = cov * (filt(x * x) - ux * ux), cov * (filt(y * y) - uy * uy), cov * (filt(x * y) - ux * uy)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    pad = (win - 1) // 2  # skimage averages away from the borders
    inner = s[:, pad:s.shape[1] - pad or None, pad:s.shape[2] - pad or None, :]
    return inner.mean(axis=(1, 2, 3))


def find_duplicates(images: np.ndarray, pixel_hashes, embeddings: np.ndarray, splits, *,
                    ssim_threshold: float = 0.95, k: int = 5) -> tuple[list[dict], np.ndarray]:
    """Exact and near-duplicate pairs and their groups.

    images : (N, H, W, C) uint8. pixel_hashes : (N,) str, equal hash = identical pixels.
    embeddings : (N, D) float, one space for all images. splits : (N,) "train" | "val".
    Returns pairs ``{a, b, kind: "exact"|"near", ssim, cross_split}`` (a < b, each once,
    exact wins) and duplicate_group (N,) int64: the lowest index of each connected group,
    -1 for images in no pair. ``cross_split`` pairs are train/val leakage.
    """
    caller = "find_duplicates"
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.dtype != np.uint8:
        fail("images", caller, "a uint8 array (N, H, W, C)", f"{getattr(images, 'dtype', type(images))} "
             f"{getattr(images, 'shape', '')}", TypeError)
    n = len(images)
    hashes = length_checked("pixel_hashes", pixel_hashes, n, caller)
    splits = length_checked("splits", splits, n, caller)
    embeddings = length_checked("embeddings", embeddings, n, caller)
    k = positive_int_checked("k", k, caller)
    if not 0 < ssim_threshold <= 1:
        fail("ssim_threshold", caller, "in (0, 1]", ssim_threshold)

    pairs: dict[tuple[int, int], dict] = {}
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i, h in enumerate(hashes):
        by_hash[h].append(i)
    for members in by_hash.values():
        for j in members[1:]:  # the first occurrence is the group's key
            pairs[(members[0], j)] = {"a": members[0], "b": j, "kind": "exact", "ssim": 1.0}
    if n > 1:
        _, idx = neighbours(pca_reduce(embeddings), np.arange(n), min(k, n - 1))
        a = np.repeat(np.arange(n), idx.shape[1])
        b = idx.ravel()
        keep = (b >= 0) & (a != b)
        lo, hi = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
        candidates = np.unique(np.stack([lo, hi], axis=1), axis=0)
        fresh = np.array([(int(x), int(y)) not in pairs for x, y in candidates], dtype=bool)
        candidates = candidates[fresh] if candidates.size else candidates
        if len(candidates):
            scores = ssim_pairs(images, candidates[:, 0], candidates[:, 1])
            for (x, y), s in zip(candidates[scores >= ssim_threshold], scores[scores >= ssim_threshold]):
                pairs[(int(x), int(y))] = {"a": int(x), "b": int(y), "kind": "near", "ssim": float(s)}
    ordered = [pairs[key] for key in sorted(pairs)]
    for pair in ordered:
        pair["cross_split"] = bool(splits[pair["a"]] != splits[pair["b"]])
    return ordered, _groups(n, ordered)


def _groups(n: int, pairs: list[dict]) -> np.ndarray:
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for pair in pairs:
        ra, rb = root(pair["a"]), root(pair["b"])
        parent[max(ra, rb)] = min(ra, rb)  # the lowest index names the group
    group = np.full(n, -1, dtype=np.int64)
    members = {p[key] for p in pairs for key in ("a", "b")}
    for i in members:
        group[i] = root(i)
    return group


def similar_images(embeddings: np.ndarray, *, s: int = 5) -> np.ndarray:
    """The s most similar other images per image, (N, s) int64, -1 padded."""
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2:
        fail("embeddings", "similar_images", "2-D (N, D)", f"shape {embeddings.shape}")
    s = positive_int_checked("s", s, "similar_images", minimum=0)
    if s == 0 or len(embeddings) < 2:
        return np.full((len(embeddings), s), -1, dtype=np.int64)
    return neighbours(pca_reduce(embeddings), np.arange(len(embeddings)), s)[1]
