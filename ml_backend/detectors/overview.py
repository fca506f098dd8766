"""The paper's overview list (Bäuerle et al. 2018, Sect. 5.1-5.2) as numbers.

Symbols: N images, K classes, C off-diagonal cells. A *cell* is a (label a, model class b)
pair with a != b; the model class is the argmax of the out-of-sample probabilities.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import binom

from ._checks import labels_checked, length_checked, pred_probs_checked

BUCKET_WIDTH = 0.1
# Class interpretation test (see ``overview_cells``).
INTERPRETATION_ALPHA = 1e-6
INTERPRETATION_MIN_COUNT = 10
INTERPRETATION_MIN_SHARE = 0.01
BASELINE_FLOOR = 1e-4


def mismatch_score(pred_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Eq. 1: ``(max_k p_ik + (1 - p_i,label)) / 2``, (N,) float32 in [1/K, 1].

    Higher = the model more confidently disagrees with the label. For an image the model
    classifies as its label the score is exactly 0.5, so eq. 1 does not rank correctly
    classified images at all; ``label_errors.error_scores`` ranks every image.
    """
    probs = pred_probs_checked(pred_probs, "mismatch_score")
    labels = labels_checked(labels, len(probs), probs.shape[1], "mismatch_score")
    return _mismatch(probs, labels)


def _mismatch(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return ((probs.max(axis=1) + 1.0 - probs[np.arange(len(labels)), labels]) / 2.0).astype(np.float32)


def histogram(scores: np.ndarray, num_classes: int) -> np.ndarray:
    """Eq. 4: counts of mismatch scores in 0.1-wide buckets from 1/K up to 1, (B,) int64.

    B = ceil((1 - 1/K) / 0.1); bucket 0 holds the lowest scores, the last bucket is closed at 1.
    """
    low = 1.0 / num_classes
    buckets = max(1, math.ceil((1.0 - low) / BUCKET_WIDTH - 1e-9))
    index = np.floor((np.asarray(scores, dtype=np.float64) - low) / BUCKET_WIDTH + 1e-9).astype(np.int64)
    return np.bincount(np.clip(index, 0, buckets - 1), minlength=buckets).astype(np.int64)


def saturation(score_wrong: np.ndarray) -> np.ndarray:
    """Eq. 3: saturation in [0, 1] on a log scale over [0.1 * max, max], (C,) float64.

    The largest cell is fully saturated; a cell at a tenth of it or less is white.
    """
    values = np.asarray(score_wrong, dtype=np.float64)
    top = values.max(initial=0.0)
    if top <= 0:
        return np.zeros_like(values)
    with np.errstate(divide="ignore"):
        return np.clip(np.log10(values / (0.1 * top)), 0.0, 1.0)


def representatives(pred_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per class k, the image labeled k with the highest softmax for k (the paper's
    "maximally activated" image), (K,) int64; -1 for a class without images."""
    probs = pred_probs_checked(pred_probs, "representatives")
    labels = labels_checked(labels, len(probs), probs.shape[1], "representatives")
    out = np.full(probs.shape[1], -1, dtype=np.int64)
    for k in range(probs.shape[1]):
        members = np.flatnonzero(labels == k)
        if members.size:
            out[k] = members[np.argmax(probs[members, k])]
    return out


def overview_cells(pred_probs: np.ndarray, labels: np.ndarray, *, mismatch: np.ndarray | None = None,
                   duplicate_group: np.ndarray | None = None, alpha: float = INTERPRETATION_ALPHA) -> list[dict]:
    """The off-diagonal cells of the overview list in the paper's reading order.

    Rows (labels) are sorted by how many of their images the model misclassifies, most
    first; cells within a row by count, most first. Each dict has: ``label``, ``predicted``,
    ``count``, ``share_of_row`` (count / images labeled a), ``mean_mismatch``,
    ``score_wrong`` (eq. 2, read as the *sum* of the cell's mismatch scores: the extracted
    formula is garbled, and the paper's text says blue marks cells with *many* confident
    misclassifications), ``saturation`` (eq. 3), ``histogram`` (eq. 4), ``has_duplicates``,
    ``interpretation_error``, ``row`` and ``column`` (0-based reading-order position).

    ``interpretation_error`` marks a candidate class interpretation error: the cell's count
    is improbably high under the model's usual confusion. The usual rate r0 is the mean rate
    over all other label -> class pairs (leave-one-out, so the cell cannot hide itself); it is
    flagged when a one-sided binomial test ``P(X >= count | n_a, r0) < alpha`` rejects, the
    count is at least 10 and its share of the row at least 1%.
    """
    probs = pred_probs_checked(pred_probs, "overview_cells")
    n, k = probs.shape
    labels = labels_checked(labels, n, k, "overview_cells")
    scores = _mismatch(probs, labels) if mismatch is None else length_checked("mismatch", mismatch, n, "overview_cells")
    groups = (np.full(n, -1) if duplicate_group is None
              else length_checked("duplicate_group", duplicate_group, n, "overview_cells"))
    predicted = probs.argmax(axis=1)
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (labels, predicted), 1)
    row_sizes = counts.sum(axis=1)
    off = counts.copy()
    np.fill_diagonal(off, 0)
    rates = off / np.maximum(row_sizes, 1)[:, None]
    total_off, pair_slots = off.sum(), row_sizes.sum() * (k - 1)

    cells = []
    row_order = sorted(range(k), key=lambda a: (-off[a].sum(), a))
    for row, a in enumerate(r for r in row_order if off[r].sum() > 0):
        for column, b in enumerate(sorted(np.flatnonzero(off[a]), key=lambda b: (-off[a, b], b))):
            members = np.flatnonzero((labels == a) & (predicted == b))
            member_groups = groups[members][groups[members] >= 0]
            count, share = int(off[a, b]), float(rates[a, b])
            # Usual confusion: the mean rate over every *other* label -> class pair.
            baseline = max((total_off - count) / max(pair_slots - row_sizes[a], 1), BASELINE_FLOOR)
            p_value = float(binom.sf(count - 1, int(row_sizes[a]), baseline))
            cells.append({
                "label": int(a), "predicted": int(b), "count": count, "share_of_row": share,
                "mean_mismatch": float(scores[members].mean()), "score_wrong": float(scores[members].sum()),
                "histogram": histogram(scores[members], k).tolist(),
                "has_duplicates": bool(len(member_groups) != len(np.unique(member_groups))),
                "interpretation_error": bool(p_value < alpha and count >= INTERPRETATION_MIN_COUNT
                                             and share >= INTERPRETATION_MIN_SHARE),
                "row": row, "column": column,
            })
    for cell, value in zip(cells, saturation(np.array([c["score_wrong"] for c in cells]))):
        cell["saturation"] = float(value)
    return cells
