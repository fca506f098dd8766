"""The in-detail view's layout (paper Sect. 5.3): a 2-D map of a cell's saliency maps.

Symbols: M images in one cell, (H, W, C) saliency shape, P feature length.
"""

from __future__ import annotations

import numpy as np
from openTSNE import TSNE

from ._checks import fail
from ._neighbors import pca_reduce

MIN_TSNE_IMAGES = 6  # the paper: fewer images are shown side by side
FEATURE_SIDE = 32
TSNE_DIMS = 50


def saliency_features(saliency: np.ndarray) -> np.ndarray:
    """(M, H, W, C) saliency >= 0 -> (M, P) float32 features for the map.

    Colour maps (C = 3) keep only their hue, as in the paper, so the layout does not depend
    on saturation or brightness; grey maps (C = 1) keep their normalised magnitude.
    Maps are block-averaged to at most 32 x 32 first.
    """
    saliency = np.asarray(saliency, dtype=np.float32)
    if saliency.ndim != 4 or saliency.shape[3] not in (1, 3):
        fail("saliency", "saliency_features", "shape (M, H, W, C) with C in (1, 3)", f"shape {saliency.shape}")
    small = _downsample(saliency)
    peak = small.reshape(len(small), -1).max(axis=1).reshape(-1, 1, 1, 1)
    small = small / np.maximum(peak, 1e-12)
    features = _hue(small) if small.shape[3] == 3 else small[..., 0]
    return features.reshape(len(features), -1).astype(np.float32)


def _downsample(x: np.ndarray) -> np.ndarray:
    m, h, w, c = x.shape
    fy, fx = max(1, -(-h // FEATURE_SIDE)), max(1, -(-w // FEATURE_SIDE))
    h2, w2 = h // fy * fy, w // fx * fx
    return x[:, :h2, :w2].reshape(m, h2 // fy, fy, w2 // fx, fx, c).mean(axis=(2, 4))


def _hue(rgb: np.ndarray) -> np.ndarray:
    """HSV hue in [0, 1) of (M, H, W, 3) values in [0, 1]; grey pixels get hue 0."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    top, bottom = rgb.max(axis=-1), rgb.min(axis=-1)
    span = np.where(top > bottom, top - bottom, 1.0)
    hue = np.where(top == r, (g - b) / span, np.where(top == g, 2.0 + (b - r) / span, 4.0 + (r - g) / span))
    return np.where(top > bottom, (hue / 6.0) % 1.0, 0.0)


def cell_map(features: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """(M, P) -> (M, 2) float32 coordinates in [0, 1].

    M >= 6: openTSNE on a PCA of the features (perplexity adapted to M, deterministic for a
    seed). Fewer images: one row, side by side, in input order.
    """
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2:
        fail("features", "cell_map", "2-D (M, P)", f"shape {features.shape}")
    m = len(features)
    if m < MIN_TSNE_IMAGES:
        return np.stack([(np.arange(m) + 0.5) / max(m, 1), np.full(m, 0.5)], axis=1).astype(np.float32)
    reduced = pca_reduce(features, TSNE_DIMS, seed=seed)
    tsne = TSNE(perplexity=min(30.0, (m - 1) / 3.0), n_jobs=1, random_state=seed, verbose=False,
                negative_gradient_method="bh", initialization="pca")
    xy = np.asarray(tsne.fit(reduced))
    low, span = xy.min(axis=0), np.ptp(xy, axis=0)
    return ((xy - low) / np.where(span > 0, span, 1.0)).astype(np.float32)
