"""The in-detail view's layout (paper Sect. 5.3): a 2-D map of one cell's saliency maps.

Symbols: M images in one cell, (H, W, C) saliency shape, P feature length. The paper
embeds a cell's guided-backpropagation saliency maps with t-SNE, using their hue so the
layout ignores saturation and value; cells with fewer than 6 images are shown side by side.
"""

from __future__ import annotations

import numpy as np
from openTSNE import TSNE

from ._checks import array_checked, fail, int_checked
from ._neighbors import pca_reduce

MIN_TSNE_IMAGES = 6  # the paper: fewer images are shown side by side, not embedded
FEATURE_SIDE = 32  # saliency maps are block-averaged to at most 32 x 32 before featurising
TSNE_DIMS = 50  # PCA width in front of t-SNE
MAX_PERPLEXITY = 30.0  # openTSNE's default; smaller cells get (M - 1) / 3
MIN_CHROMA = 0.01  # a pixel whose colour spread is below 1% of the map's peak has no hue


def saliency_features(saliency: np.ndarray) -> np.ndarray:
    """Feature vectors of saliency maps for the cell map.

    Each map is block-averaged to at most 32 x 32 pixels and normalised by its peak.
    Colour maps (C = 3) then keep only their hue, as in the paper, so the layout does not
    depend on saturation or brightness: the HSV hue angle h of each pixel becomes
    ``(cos 2 pi h, sin 2 pi h)`` (hues 0.99 and 0.01 are neighbours on the colour circle), and
    pixels without a hue (max - min channel below 1% of the peak: grey or empty) become
    (0, 0), the centre of the circle. Grey maps (C = 1) keep their normalised magnitude.

    Parameters
    ----------
    saliency : ndarray of shape (M, H, W, C), float >= 0, C in {1, 3}

    Returns
    -------
    ndarray of shape (M, P), float32
        P = h * w (C = 1) or 2 * h * w (C = 3), with h, w <= 32 the reduced size. An all-zero
        map gives all-zero features.
    """
    caller = "saliency_features"
    saliency = array_checked(saliency, "saliency", caller, ndim=4, shape="(M, H, W, C)")
    if saliency.shape[3] not in (1, 3) or min(saliency.shape[1:3]) < 1:
        fail("saliency", caller, "of shape (M, H, W, C) with C = 1 (grey) or 3 (colour)",
             f"shape {saliency.shape}")
    if saliency.size and saliency.min() < 0:
        fail("saliency", caller, ">= 0 (use the absolute gradient)", f"minimum {saliency.min():.4g}")
    return _compute_features(saliency.astype(np.float32, copy=False))


def _compute_features(saliency: np.ndarray) -> np.ndarray:
    small = _downsample(saliency)
    peak = small.reshape(len(small), -1).max(axis=1, initial=0.0).reshape(-1, 1, 1, 1)
    small = small / np.where(peak > 0, peak, 1.0)
    if small.shape[3] == 1:
        return small.reshape(len(small), -1).astype(np.float32)
    hue, chroma = _hue(small)
    angle = 2.0 * np.pi * hue
    has_hue = chroma >= MIN_CHROMA
    features = np.stack([np.where(has_hue, np.cos(angle), 0.0), np.where(has_hue, np.sin(angle), 0.0)], axis=-1)
    return features.reshape(len(features), -1).astype(np.float32)


def _downsample(x: np.ndarray) -> np.ndarray:
    """(M, H, W, C) -> (M, h, w, C) block means with h, w <= 32 (edge rows that do not fill a block are dropped)."""
    m, h, w, c = x.shape
    fy, fx = -(-h // FEATURE_SIDE), -(-w // FEATURE_SIDE)
    h2, w2 = h // fy * fy, w // fx * fx
    return x[:, :h2, :w2].reshape(m, h2 // fy, fy, w2 // fx, fx, c).mean(axis=(2, 4))


def _hue(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSV hue in [0, 1) and chroma (max - min) of (M, h, w, 3) values; hue is 0 where chroma is 0."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    top, chroma = rgb.max(axis=-1), np.ptp(rgb, axis=-1)
    span = np.where(chroma > 0, chroma, 1.0)
    hue = np.where(top == r, (g - b) / span, np.where(top == g, 2.0 + (b - r) / span, 4.0 + (r - g) / span))
    return np.where(chroma > 0, (hue / 6.0) % 1.0, 0.0), chroma


def cell_map(features: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """2-D positions of one cell's images for the in-detail view.

    M >= 6: openTSNE (Barnes-Hut, one thread, PCA initialisation, ``random_state=seed``, so
    the same input and seed give the same map) on the features reduced to at most 50
    dimensions by PCA; perplexity ``min(30, (M - 1) / 3)`` so small cells still have enough
    neighbours. The map is scaled uniformly (aspect kept) into [0, 1] and centred. When all
    feature vectors are equal there is nothing to embed and the images go on a grid.
    M < 6: one row, side by side, in input order, at ``x = (i + 0.5) / M``, ``y = 0.5``.

    Parameters
    ----------
    features : ndarray of shape (M, P), float
        From :func:`saliency_features`.
    seed : int >= 0, default 0

    Returns
    -------
    ndarray of shape (M, 2), float32, in [0, 1]
        (x, y) per image, y pointing down the canvas.
    """
    caller = "cell_map"
    features = array_checked(features, "features", caller, ndim=2, shape="(M, P)")
    if features.shape[1] < 1 and len(features):
        fail("features", caller, "of shape (M, P) with P >= 1", f"shape {features.shape}")
    seed = int_checked("seed", seed, caller, minimum=0)
    return _compute_map(features.astype(np.float32, copy=False), seed)


def _compute_map(features: np.ndarray, seed: int) -> np.ndarray:
    m = len(features)
    if m < MIN_TSNE_IMAGES:
        return _row(m)
    reduced = pca_reduce(features, TSNE_DIMS, seed=seed)
    if np.ptp(reduced, axis=0).max() <= 1e-12 * max(1.0, float(np.abs(reduced).max())):
        return _grid(m)
    tsne = TSNE(perplexity=min(MAX_PERPLEXITY, (m - 1) / 3.0), n_jobs=1, random_state=seed, verbose=False,
                negative_gradient_method="bh", initialization="pca")
    xy = np.asarray(tsne.fit(reduced), dtype=np.float64)
    if not np.isfinite(xy).all():
        return _grid(m)
    return _unit_square(xy)


def _row(m: int) -> np.ndarray:
    return np.stack([(np.arange(m) + 0.5) / max(m, 1), np.full(m, 0.5)], axis=1).astype(np.float32)


def _grid(m: int) -> np.ndarray:
    cols = int(np.ceil(np.sqrt(m)))
    rows = int(np.ceil(m / cols))
    i = np.arange(m)
    return np.stack([(i % cols + 0.5) / cols, (i // cols + 0.5) / rows], axis=1).astype(np.float32)


def _unit_square(xy: np.ndarray) -> np.ndarray:
    low, span = xy.min(axis=0), np.ptp(xy, axis=0)
    scale = span.max()
    if scale <= 0:
        return np.full(xy.shape, 0.5, dtype=np.float32)
    out = (xy - low) / scale + (1.0 - span / scale) / 2.0  # the shorter axis is centred
    return np.clip(out, 0.0, 1.0).astype(np.float32)
