"""Similarity errors: exact and near duplicates, and train/val leakage.

Symbols: N images of shape (H, W, C), D embedding width, P pairs, S similar images kept
per image. Never compares all pairs: exact duplicates come from equal pixel hashes, near
duplicates from each distinct image's (one per pixel hash, so that its exact copies cannot
fill its neighbour slots) k nearest neighbours in embedding space (k-d tree on a PCA,
~N log N) confirmed by SSIM >= 0.95 (the paper's similarity marker, measure 'ssim'), and
from its nearest neighbours in a coarse pixel space confirmed when, at the best of the nine
one-pixel alignments, at least 99% of the overlapping pixel values lie within 12 grey levels
(measure 'aligned_pixels') and no 3 x 3 block of pixels differs (a defect on a plain part, a
small object on a plain background: a region of content, not a copy's scattered noise): copies
re-saved with noise or moved by a pixel, which SSIM misses (noise of 3 grey levels takes a flat
region's SSIM to about 0.76; a noisy MNIST copy scores 0.90). Measured on 3,000 test
images of each set, the aligned share is >= 0.999 for noisy and shifted copies and at most
0.970 (MNIST), 0.906 (Fashion) and 0.764 (CIFAR) for an image's nearest distinct neighbour.
SSIM after a 3 x 3 blur was tried and rejected: distinct MNIST digits reach 0.987 with it.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_erosion
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ._checks import array_checked, fail, float_checked, int_checked, length_checked
from ..vocabulary import SPLITS
from ._neighbors import neighbours, pca_reduce

SSIM_WINDOW = 7  # scikit-image's default win_size
SSIM_PIXELS_PER_CHUNK = 1_000_000  # pixel values per batch of pairs: ~4 MB per int32, ~8 MB per float64 array
SHIFTS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
PIXEL_TOLERANCE = 12  # grey levels: 4 sigma of re-encoding noise of 3 levels
ALIGNED_SHARE = 0.99  # share of pixel values within PIXEL_TOLERANCE that makes an aligned copy
COARSE_SIDE = 8  # block means per side of the pixel space searched for near-copy candidates
COARSE_K = 2  # neighbours per image there: a copy is the nearest
COARSE_PIXELS_PER_CHUNK = 4_000_000  # pixel values made float32 at a time (~16 MB; 5,000 MNIST images)


def ssim_pairs(images: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM of ``images[a[m]]`` vs ``images[b[m]]`` for every pair m, vectorised over pairs.

    Same value as ``skimage.metrics.structural_similarity(x, y, data_range=255,
    channel_axis=-1)`` with its defaults (uniform 7 x 7 window, sample covariance, K1 = 0.01,
    K2 = 0.03, mean over the window positions that fit inside the image and over channels).
    For images smaller than 7 pixels a side the window is the largest odd size that fits.
    Window sums are exact integer sums, so nothing is lost to rounding.

    Parameters
    ----------
    images : ndarray of shape (N, H, W, C), uint8, H and W >= 3
    a, b : ndarray of shape (P,), int
        Image indices of each pair.

    Returns
    -------
    ndarray of shape (P,), float64, in [-1, 1]; 1 = identical.
    """
    caller = "ssim_pairs"
    _images_checked(images, caller)
    a, b = np.asarray(a), np.asarray(b)
    for name, idx in (("a", a), ("b", b)):
        if idx.dtype == bool or not np.issubdtype(idx.dtype, np.integer):
            fail(name, caller, "an int array of image indices", f"dtype {idx.dtype}", TypeError)
        if idx.ndim != 1 or idx.shape != a.shape:
            fail(name, caller, "1-D, with a and b of equal length", f"shapes {a.shape} and {b.shape}")
        if idx.size and (idx.min() < 0 or idx.max() >= len(images)):
            fail(name, caller, f"image indices in [0, {len(images) - 1}]", f"values {idx.min()}..{idx.max()}")
    return _compute_ssim_pairs(images, a.astype(np.int64), b.astype(np.int64))


def _images_checked(images, caller: str) -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        fail("images", caller, "a uint8 numpy array of shape (N, H, W, C)",
             f"dtype {images.dtype}" if isinstance(images, np.ndarray) else type(images).__name__, TypeError)
    if images.ndim != 4 or min(images.shape[1:3]) < 3:
        fail("images", caller, "of shape (N, H, W, C) with H, W >= 3 (add a channel axis to grey images: "
             "images[..., None])", f"shape {images.shape}")
    return images


def _compute_ssim_pairs(images: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.empty(len(a), dtype=np.float64)
    chunk = max(1, SSIM_PIXELS_PER_CHUNK // int(np.prod(images.shape[1:])))
    for start in range(0, len(a), chunk):
        out[start:start + chunk] = _ssim(images[a[start:start + chunk]], images[b[start:start + chunk]])
    return out


def _overlap(shift: int, h: int, w: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """(rows, columns) of a first and a second image that overlap when aligned by SHIFTS[shift]."""
    dy, dx = SHIFTS[shift]
    return ((slice(max(dy, 0), h + min(dy, 0)), slice(max(dx, 0), w + min(dx, 0))),
            (slice(max(-dy, 0), h + min(-dy, 0)), slice(max(-dx, 0), w + min(-dx, 0))))


def _aligned_share(images: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P,) best share, over the nine one-pixel alignments (SHIFTS), of the overlapping pixel
    values of images[a] and images[b] that lie within PIXEL_TOLERANCE of each other, and (P,)
    the index in SHIFTS of the alignment that gave it (the first, on a tie)."""
    h, w = images.shape[1:3]
    best, best_shift = np.zeros(len(a)), np.zeros(len(a), dtype=np.int64)
    chunk = max(1, SSIM_PIXELS_PER_CHUNK // int(np.prod(images.shape[1:])))
    for shift in range(len(SHIFTS)):
        (rows_a, cols_a), (rows_b, cols_b) = _overlap(shift, h, w)
        for start in range(0, len(a), chunk):
            x = images[a[start:start + chunk]][:, rows_a, cols_a].astype(np.int16)
            y = images[b[start:start + chunk]][:, rows_b, cols_b].astype(np.int16)
            share = (np.abs(x - y) <= PIXEL_TOLERANCE).mean(axis=(1, 2, 3))
            better = share > best[start:start + chunk]
            best[start:start + chunk][better] = share[better]
            best_shift[start:start + chunk][better] = shift
    return best, best_shift


def _differ_in_a_region(images: np.ndarray, a: np.ndarray, b: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """(P,) bool: aligned by ``shifts`` (indices into SHIFTS, :func:`_aligned_share`'s best), some
    3 x 3 block of pixels of images[a] and images[b] differs by more than PIXEL_TOLERANCE
    throughout. Called on the few pairs whose aligned share passed, one pair at a time."""
    h, w = images.shape[1:3]
    out = np.zeros(len(a), dtype=bool)
    for m, (i, j, shift) in enumerate(zip(a, b, shifts)):
        (rows_a, cols_a), (rows_b, cols_b) = _overlap(int(shift), h, w)
        x, y = images[i, rows_a, cols_a].astype(np.int16), images[j, rows_b, cols_b].astype(np.int16)
        out[m] = binary_erosion((np.abs(x - y) > PIXEL_TOLERANCE).any(axis=2), np.ones((3, 3), dtype=bool)).any()
    return out


def _ssim(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(M, H, W, C) uint8 pairs -> (M,) mean SSIM.

    With window sums S (w x w window, n = w^2 pixels) the SSIM of one window,
    ``(2 ux uy + c1)(2 vxy + c2) / ((ux^2 + uy^2 + c1)(vx + vy + c2))`` with sample
    (co)variances, equals ``(2 Sx Sy + c1 n^2)(2 (n Sxy - Sx Sy) + c2 n (n - 1)) /
    ((Sx^2 + Sy^2 + c1 n^2)(n (Sxx + Syy) - Sx^2 - Sy^2 + c2 n (n - 1)))``: every bracket is an
    exact integer (int32: at most 2 (49 * 255)^2 < 2^31 for a 7 x 7 window) plus a constant,
    so nothing is lost to cancellation.
    """
    win = min(SSIM_WINDOW, x.shape[1], x.shape[2])
    win -= 1 - win % 2  # odd
    n = win * win
    xi = x.transpose(0, 3, 1, 2).astype(np.int32)  # (M, C, H, W)
    yi = y.transpose(0, 3, 1, 2).astype(np.int32)
    sx, sy = _window_sums(xi, win), _window_sums(yi, win)
    sxy = _window_sums(xi * yi, win)
    sxx_syy = _window_sums(xi * xi + yi * yi, win)
    prod, squares = sx * sy, sx * sx + sy * sy
    c1, c2 = (0.01 * 255) ** 2 * n * n, (0.03 * 255) ** 2 * n * (n - 1)
    num = (2.0 * prod + c1) * (2.0 * (n * sxy - prod) + c2)
    den = (squares + c1) * ((n * sxx_syy - squares) + c2)
    return (num / den).mean(axis=(1, 2, 3))


def _window_sums(v: np.ndarray, win: int) -> np.ndarray:
    """(M, C, H, W) int32 -> (M, C, H - win + 1, W - win + 1) exact sums over every win x win window."""
    w = v.shape[3] - win + 1
    rows = v[..., :w].copy()
    for j in range(1, win):
        rows += v[..., j:j + w]
    h = v.shape[2] - win + 1
    out = rows[:, :, :h].copy()
    for i in range(1, win):
        out += rows[:, :, i:i + h]
    return out


def find_duplicates(images: np.ndarray, pixel_hashes, embeddings: np.ndarray, splits, *,
                    ssim_threshold: float = 0.95, k: int = 5) -> tuple[list[dict], np.ndarray]:
    """Exact and near-duplicate image pairs, their groups, and train/val leakage.

    Exact pairs: equal ``pixel_hashes``; each copy is paired with the first occurrence (a
    star, so m copies give m - 1 pairs). Near pairs are searched among the first occurrences
    only (one image per hash, so exact copies never crowd a near copy out of the k
    neighbours): each one's k nearest neighbours in ``embeddings`` (PCA to 16 dims, then a k-d
    tree: ~N log N, never all pairs) are confirmed when their SSIM (:func:`ssim_pairs`,
    identical to scikit-image's) is at least ``ssim_threshold``; its COARSE_K nearest
    neighbours in 8 x 8 block means of the pixels when their aligned pixel share (see the
    module docstring) is at least ALIGNED_SHARE and no 3 x 3 block of them differs. A near
    pair found then extends to the exact copies of both images: each copy of one pairs with
    the first copy of the other in each split (same pixels, same measures), so every copy is in
    a near pair, one across train/val when the other image has a copy there, in O(copies)
    pairs rather than all combinations.

    Parameters
    ----------
    images : ndarray of shape (N, H, W, C), uint8
    pixel_hashes : sequence of str, length N
        Equal hash = identical pixels.
    embeddings : ndarray of shape (N, D), float
        One feature space for all images.
    splits : sequence of str, length N, each "train" or "val"
    ssim_threshold : float in (0, 1], default 0.95
        The paper's duplicate marker threshold.
    k : int >= 1, default 5
        Candidate neighbours per image.

    Returns
    -------
    pairs : list of dict
        ``{"a": int, "b": int, "kind": "exact" | "near", "ssim": float, "measure": str,
        "similarity": float, "cross_split": bool}`` with a < b, ``ssim`` the pair's SSIM,
        ``measure`` what confirmed it ('pixels' for exact copies, 'ssim' or 'aligned_pixels', see
        the module docstring) and ``similarity`` that measure's value; each unordered pair once
        (exact wins over near), sorted by (a, b).
        ``cross_split`` = one image in train, one in val: leakage.
    duplicate_group : ndarray of shape (N,), int64
        Connected components of the pairs, each named by its lowest image index (so every
        member of a group, the lowest included, holds that index); -1 for images in no pair.
    """
    caller = "find_duplicates"
    images = _images_checked(images, caller)
    n = len(images)
    hashes = length_checked("pixel_hashes", pixel_hashes, n, caller)
    if n and hashes.dtype.kind not in "US":
        fail("pixel_hashes", caller, "strings (one pixel hash per image)", f"dtype {hashes.dtype}", TypeError)
    splits = length_checked("splits", splits, n, caller)
    unknown = sorted(set(np.unique(splits).tolist()) - set(SPLITS)) if n else []
    if unknown:
        fail("splits", caller, f"one of {SPLITS} per image", f"{unknown[:5]}")
    embeddings = array_checked(embeddings, "embeddings", caller, ndim=2, shape="(N, D)")
    if len(embeddings) != n:
        fail("embeddings", caller, f"of shape ({n}, D), one row per image", f"shape {embeddings.shape}")
    threshold = float_checked("ssim_threshold", ssim_threshold, caller, low=0.0, high=1.0, low_open=True)
    k = int_checked("k", k, caller)
    return _compute_duplicates(images, hashes, embeddings, splits, threshold, k)


def _compute_duplicates(images, hashes, embeddings, splits, threshold: float, k: int):
    n = len(images)
    if n == 0:
        return [], np.full(0, -1, dtype=np.int64)
    _, code = np.unique(hashes, return_inverse=True)
    code = code.ravel()

    # Exact: every later copy pairs with the first occurrence of its hash.
    first_of_code = np.full(code.max() + 1, n)
    np.minimum.at(first_of_code, code, np.arange(n))
    is_copy = first_of_code[code] != np.arange(n)
    copies, firsts = np.flatnonzero(is_copy), np.flatnonzero(~is_copy)
    exact = np.stack([first_of_code[code[copies]], copies], axis=1)

    # Near: the paper's SSIM on embedding neighbours; the aligned pixel share on each image's
    # COARSE_K nearest neighbours in a coarse pixel space, where a shifted or noisy copy is the
    # nearest (its CNN embedding can sit behind look-alikes). SSIM is not tried there: on MNIST
    # those neighbours add ~2,800 look-alike pairs (thin "1"s) at SSIM >= 0.95 and no copies.
    # Searched among first occurrences: exact copies, at distance 0, would take the neighbour slots.
    near, near_ssim, near_similarity = np.zeros((0, 2), dtype=np.int64), np.zeros(0), np.zeros(0)
    near_measure = np.zeros(0, dtype=object)
    if len(firsts) > 1:
        by_embedding = _candidate_pairs(pca_reduce(embeddings), firsts, k)
        ssim = _compute_ssim_pairs(images, by_embedding[:, 0], by_embedding[:, 1])
        by_ssim = ssim >= threshold
        by_pixels = _candidate_pairs(pca_reduce(_coarse_pixels(images)), firsts, COARSE_K)
        by_pixels = by_pixels[~_rows_in(by_pixels, by_embedding[by_ssim])]
        share, shift = _aligned_share(images, by_pixels[:, 0], by_pixels[:, 1])
        aligned = share >= ALIGNED_SHARE
        aligned[aligned] = ~_differ_in_a_region(images, *by_pixels[aligned].T, shift[aligned])
        found = np.concatenate([by_embedding[by_ssim], by_pixels[aligned]])
        found_ssim = np.concatenate([ssim[by_ssim], _compute_ssim_pairs(images, *by_pixels[aligned].T)])
        found_similarity = np.concatenate([ssim[by_ssim], share[aligned]])
        found_measure = np.array(["ssim"] * int(by_ssim.sum()) + ["aligned_pixels"] * int(aligned.sum()),
                                 dtype=object)
        near, source = _with_copies(found, code, splits)
        near_ssim, near_similarity, near_measure = found_ssim[source], found_similarity[source], found_measure[source]

    kinds = ["exact"] * len(exact) + ["near"] * len(near)
    measure = ["pixels"] * len(exact) + list(near_measure)
    ssim = np.concatenate([np.ones(len(exact)), near_ssim])
    similarity = np.concatenate([np.ones(len(exact)), near_similarity])
    both = np.concatenate([exact, near]).astype(np.int64)
    order = np.lexsort((both[:, 1], both[:, 0]))
    pairs = [{"a": int(both[i, 0]), "b": int(both[i, 1]), "kind": kinds[i], "ssim": float(ssim[i]),
              "measure": measure[i], "similarity": float(similarity[i]),
              "cross_split": bool(splits[both[i, 0]] != splits[both[i, 1]])} for i in order]
    return pairs, _groups(n, both)


def _candidate_pairs(space: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """(P, 2) int64 unique pairs a < b of each of ``rows`` ((R,) ascending indices into
    ``space`` (N, d)) and its k nearest neighbours among ``rows``."""
    idx = neighbours(space[rows], np.arange(len(rows)), min(k, len(rows) - 1))[1]
    a, b = np.repeat(np.arange(len(rows)), idx.shape[1]), idx.ravel()
    keep = b >= 0
    pairs = np.unique(np.stack([np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])], axis=1), axis=0)
    return rows[pairs]  # ascending rows keep a < b


def _with_copies(pairs: np.ndarray, code: np.ndarray, splits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Near ``pairs`` (P, 2) of first occurrences extended to the exact copies (equal ``code``)
    of both images: (Q, 2) int64 unique pairs a < b, and (Q,) the row of ``pairs`` each came from.

    Each copy of one image pairs with the first copy of the other in each split: Q <= 2 x
    (copies of both) per pair, where all combinations would be their product (a blank image
    repeated thousands of times), yet every copy with a near copy across train/val is in a
    cross-split pair.
    """
    n = len(code)
    _, split = np.unique(splits, return_inverse=True)
    heads = np.full((code.max() + 1, split.max() + 1), n)  # first image of each (hash, split)
    np.minimum.at(heads, (code, split.ravel()), np.arange(n))
    out, source = [], []
    for one, other in ((0, 1), (1, 0)):
        row, member = _members(code[pairs[:, one]], code)
        for head in heads[code[pairs[row, other]]].T:
            has = head < n
            out.append(np.stack([member[has], head[has]], axis=1))
            source.append(row[has])
    out, source = np.concatenate(out), np.concatenate(source)
    out = np.sort(out, axis=1)
    _, first = np.unique(out[:, 0] << 32 | out[:, 1], return_index=True)
    return out[first], source[first]


def _members(codes: np.ndarray, code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every image whose ``code`` ((N,) pixel hash ids) is one of ``codes`` (M,): (L,) the
    position in ``codes`` and (L,) the image index, code by code."""
    order = np.argsort(code, kind="stable")
    size = np.bincount(code)
    start = np.cumsum(size) - size
    row = np.repeat(np.arange(len(codes)), size[codes])
    offset = np.arange(len(row)) - np.repeat(np.cumsum(size[codes]) - size[codes], size[codes])
    return row, order[start[codes[row]] + offset]


def _rows_in(pairs: np.ndarray, subset: np.ndarray) -> np.ndarray:
    """(P,) bool: which rows of ``pairs`` (P, 2) occur in ``subset`` (Q, 2); both hold indices < 2^31."""
    key = lambda p: p[:, 0].astype(np.int64) << 32 | p[:, 1].astype(np.int64)
    return np.isin(key(pairs), key(subset))


def _coarse_pixels(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) uint8 -> (N, COARSE_SIDE^2 * C) float32 block means: a one-pixel shift or
    pixel noise barely moves an image here, so its copies are its nearest neighbours."""
    n, h, w, c = images.shape
    rows = np.linspace(0, h, min(COARSE_SIDE, h) + 1).astype(int)
    cols = np.linspace(0, w, min(COARSE_SIDE, w) + 1).astype(int)
    sizes = np.outer(np.diff(rows), np.diff(cols))[None, :, :, None]
    out = np.empty((n, len(rows) - 1, len(cols) - 1, c), dtype=np.float32)
    chunk = max(1, COARSE_PIXELS_PER_CHUNK // (h * w * c))
    for start in range(0, n, chunk):  # a float32 copy of all images at once would be 4x their size
        part = images[start:start + chunk].astype(np.float32)
        out[start:start + chunk] = np.add.reduceat(np.add.reduceat(part, rows[:-1], axis=1), cols[:-1], axis=2) / sizes
    return out.reshape(n, -1)


def _groups(n: int, pairs: np.ndarray) -> np.ndarray:
    """(N,) int64: lowest member index of each image's connected component, -1 if in no pair."""
    group = np.full(n, -1, dtype=np.int64)
    if len(pairs) == 0:
        return group
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    lowest = np.full(component.max() + 1, n)
    np.minimum.at(lowest, component, np.arange(n))
    in_pair = np.zeros(n, dtype=bool)
    in_pair[pairs.ravel()] = True
    group[in_pair] = lowest[component[in_pair]]
    return group


def similar_images(embeddings: np.ndarray, *, s: int = 5) -> np.ndarray:
    """The s most similar other images of every image, nearest first.

    Nearest neighbours in ``embeddings`` (PCA to 16 dims, k-d tree, (1 + eps)-approximate
    with eps = 2: ~N log N). Used for the paper's "most similar images" strip.

    Parameters
    ----------
    embeddings : ndarray of shape (N, D), float
        One feature space for all images.
    s : int >= 0, default 5

    Returns
    -------
    ndarray of shape (N, S), int64
        Image indices, never the image itself; -1 where fewer than s other images exist.
    """
    caller = "similar_images"
    embeddings = array_checked(embeddings, "embeddings", caller, ndim=2, shape="(N, D)")
    s = int_checked("s", s, caller, minimum=0)
    n = len(embeddings)
    if s == 0 or n < 2:
        return np.full((n, s), -1, dtype=np.int64)
    return neighbours(pca_reduce(embeddings), np.arange(n), s)[1]
