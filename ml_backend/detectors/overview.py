"""The paper's overview list (Bäuerle et al. 2018, Sect. 5.1-5.2) as numbers.

Symbols: N images, K classes, C off-diagonal cells, B histogram buckets. A *cell* is a
(label a, model class b) pair with a != b; the model class is the argmax of the
out-of-sample probabilities ``pred_probs``.

Functions:
- :func:`mismatch_score`: eq. 1, per image;
- :func:`histogram`: eq. 4, the red bars of one cell;
- :func:`saturation`: eq. 2-3, the blue background of every cell;
- :func:`representatives`: the image shown for each class;
- :func:`overview_cells`: all of the above per cell, in the list's reading order, with the
  duplicate marker and the class-interpretation-error test.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import binom

from ._checks import (fail, float_checked, int_checked, labels_checked, length_checked, pred_probs_checked,
                      scores_checked)

BUCKET_WIDTH = 0.1  # eq. 4: one histogram bar per 0.1 of mismatch score
SATURATION_DECADE = 0.1  # eq. 3: the log scale spans [0.1 * max, max]
_EDGE_TOLERANCE = 1e-6  # float32 scores on a bucket edge (e.g. 0.35) belong to the upper bucket


def mismatch_score(pred_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The paper's mismatch score (eq. 1) of every image.

    ``score_i = (max_k p_ik + (1 - p_i,labels[i])) / 2``

    Parameters
    ----------
    pred_probs : ndarray of shape (N, K), float
        Out-of-sample softmax outputs; rows sum to 1.
    labels : ndarray of shape (N,), int
        The given label of each image, in [0, K).

    Returns
    -------
    ndarray of shape (N,), float32, in [1/K, 1]
        Higher = the model more confidently disagrees with the label. An image the model
        classifies as its label scores exactly 0.5 (``p_max == p_label``), so eq. 1 does not
        rank correctly classified images at all: use ``label_errors.error_scores`` to rank
        every image.
    """
    probs = pred_probs_checked(pred_probs, "mismatch_score")
    labels = labels_checked(labels, len(probs), probs.shape[1], "mismatch_score")
    return _compute_mismatch(probs, labels)


def _compute_mismatch(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    p_label = probs[np.arange(len(labels)), labels]
    return ((probs.max(axis=1) + 1.0 - p_label) / 2.0).astype(np.float32)


def histogram(scores: np.ndarray, num_classes: int) -> np.ndarray:
    """The eq. 4 histogram of one cell's mismatch scores.

    The domain ``[1/K, 1]`` is cut into buckets of width 0.1 starting at 1/K; the last
    bucket may be narrower and is closed at 1. Bucket j holds scores in
    ``[1/K + 0.1 j, 1/K + 0.1 (j + 1))``; a score within 1e-6 below an edge counts as on it
    (float32 scores). Scores outside the domain are clipped into the first or last bucket.

    Parameters
    ----------
    scores : ndarray of shape (M,), float
        Mismatch scores (eq. 1) of the cell's M images.
    num_classes : int
        K >= 2.

    Returns
    -------
    ndarray of shape (B,), int64
        Counts per bucket, lowest scores first; ``B = ceil((1 - 1/K) / 0.1)``.
    """
    k = int_checked("num_classes", num_classes, "histogram", minimum=2)
    values = scores_checked("scores", scores, len(np.atleast_1d(np.asarray(scores))), "histogram")
    return _compute_histogram(values, k)


def num_buckets(num_classes: int) -> int:
    """B = ceil((1 - 1/K) / 0.1), the number of eq. 4 buckets."""
    return max(1, math.ceil((1.0 - 1.0 / num_classes) / BUCKET_WIDTH - 1e-9))


def _compute_histogram(scores: np.ndarray, k: int) -> np.ndarray:
    buckets = num_buckets(k)
    index = np.floor((scores - 1.0 / k + _EDGE_TOLERANCE) / BUCKET_WIDTH).astype(np.int64)
    return np.bincount(np.clip(index, 0, buckets - 1), minlength=buckets).astype(np.int64)


def saturation(score_wrong: np.ndarray) -> np.ndarray:
    """The blue saturation of every off-diagonal cell (eq. 3) on the paper's log scale.

    ``s_m = log10(score_wrong_m / (0.1 * max))`` clipped to [0, 1]: the cell with the largest
    ``score_wrong`` is fully saturated (1), a cell at a tenth of it or less is white (0), and
    cells in between are placed on a log scale (``sqrt(10) * 0.1 * max`` gives 0.5).

    Parameters
    ----------
    score_wrong : ndarray of shape (C,), float >= 0
        Eq. 2 of every off-diagonal cell (see :func:`overview_cells`).

    Returns
    -------
    ndarray of shape (C,), float64, in [0, 1]
        All zeros when every value is 0.
    """
    values = scores_checked("score_wrong", score_wrong, len(np.atleast_1d(np.asarray(score_wrong))),
                            "saturation", low=0.0)
    return _compute_saturation(values)


def _compute_saturation(values: np.ndarray) -> np.ndarray:
    top = values.max(initial=0.0)
    if top <= 0:
        return np.zeros_like(values)
    with np.errstate(divide="ignore"):
        return np.clip(np.log10(values / (SATURATION_DECADE * top)), 0.0, 1.0)


def representatives(pred_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The image shown for each class: labeled k with the highest softmax output p_k.

    This is the paper's "image that maximally activated the neuron of the label in the
    softmax layer". Ties go to the lowest index.

    Parameters
    ----------
    pred_probs : ndarray of shape (N, K), float
    labels : ndarray of shape (N,), int in [0, K)

    Returns
    -------
    ndarray of shape (K,), int64
        Image index per class; -1 for a class no image is labeled with.
    """
    probs = pred_probs_checked(pred_probs, "representatives")
    labels = labels_checked(labels, len(probs), probs.shape[1], "representatives")
    return _compute_representatives(probs, labels)


def _compute_representatives(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    n, k = probs.shape
    own = probs[np.arange(n), labels]
    # Sort by (label, -p_label, index); the first image of each label wins.
    order = np.lexsort((np.arange(n), -own, labels))
    first = np.ones(n, dtype=bool)
    first[1:] = labels[order][1:] != labels[order][:-1]
    out = np.full(k, -1, dtype=np.int64)
    out[labels[order][first]] = order[first]
    return out


def overview_cells(pred_probs: np.ndarray, labels: np.ndarray, *, mismatch: np.ndarray | None = None,
                   duplicate_group: np.ndarray | None = None, error_score: np.ndarray | None = None,
                   alpha: float = 0.01, min_interpretation_count: int = 10, min_interpretation_share: float = 0.01,
                   min_interpretation_ratio: float = 2.0, min_interpretation_wrong: float = 0.5,
                   together_wrong: float = 0.5) -> list[dict]:
    """The off-diagonal cells of the overview list, in the paper's reading order.

    Rows (labels a) are sorted by how many of their images the model puts in another class,
    most first (ties: lower label index first); rows without such images have no cells. The
    cells of a row are sorted by count, most first (ties: higher ``score_wrong``, then lower
    class index). Only cells with count > 0 are listed.

    Parameters
    ----------
    pred_probs : ndarray of shape (N, K), float
        Out-of-sample softmax outputs; the model class is their argmax.
    labels : ndarray of shape (N,), int in [0, K)
    mismatch : ndarray of shape (N,), float in [0, 1], optional
        Precomputed :func:`mismatch_score`; computed here when None.
    duplicate_group : ndarray of shape (N,), int, optional
        ``duplicates.find_duplicates``'s group per image, -1 for none.
    error_score : ndarray of shape (N,), float in [0, 1], optional
        ``label_errors.error_scores``, read as the chance that each label is wrong. When given,
        a flagged cell must also be expected to hold mostly wrong labels (see Notes).
    alpha : float in (0, 1), default 0.01
        Family-wise error rate of the class-interpretation test over all K (K - 1) cells.
    min_interpretation_count : int, default 10
        Fewest images a flagged cell holds.
    min_interpretation_share : float in [0, 1], default 0.01
        Smallest share of its row a flagged cell holds.
    min_interpretation_ratio : float >= 1, default 2.0
        How many times the usual confusion rate a flagged cell's rate must significantly exceed.
    min_interpretation_wrong : float in [0, 1], default 0.5
        Smallest mean ``error_score`` of a flagged cell's images (ignored without ``error_score``).
    together_wrong : float in [0, 1], default 0.5
        Smallest ``error_score`` of an image in the part of a flagged cell offered to relabel
        together (see Notes).

    Returns
    -------
    list of dict, one per cell, with keys
        ``label`` (a), ``predicted`` (b), ``count`` (images labeled a that the model puts in b),
        ``share_of_row`` (count / images labeled a), ``mean_mismatch`` (mean eq. 1 score),
        ``score_wrong`` (eq. 2), ``saturation`` (eq. 3, in [0, 1]), ``histogram`` (eq. 4,
        list of B ints), ``interpretation_error`` (bool), ``together`` (int, see Notes),
        ``has_duplicates`` (bool),
        ``row`` and ``column`` (0-based reading-order position; column 0 is a row's first
        off-diagonal cell).

    Notes
    -----
    ``score_wrong`` (eq. 2) is the *sum* of the cell's mismatch scores: the count weighted by
    how confident each misclassification is. The extracted formula is garbled
    (``numImages / sum``); the text says blue marks cells with *many* (confident)
    misclassifications, which only the sum gives.

    ``has_duplicates`` is true when two of the cell's images share a duplicate group (the
    paper's SSIM >= 0.95 marker, restricted to pairs inside the cell).

    ``interpretation_error`` marks a candidate class interpretation error (a labeler taking
    images of b for a): a share of row a lands in b that is systematically beyond the
    model's usual confusion. The usual rate ``r0`` of cell (a, b) is the largest of three
    leave-one-out rates, so that ordinary confusion of any shape does not trigger it:

    - pooled: all off-diagonal images but those of (a, b) and (b, a) over all other
      (image, wrong class) slots, with one pseudo-count so that r0 > 0;
    - row: label a's other off-diagonal cells (a label the model finds hard overall);
    - column: other labels' rate into b (a class that attracts everything).
    The reverse rate b -> a is not used: a swap a -> b teaches the model that some images of
    b are a, so that cell grows with the very error it would be compared against.
    With K = 2 there is no other confusion to compare with, so the rate test is skipped and
    the other rules decide: the count, the share and, with ``error_score``, the mean error
    score (without ``error_score`` no cell of a two-class project is flagged).

    The cell is flagged when its count is at least ``min_interpretation_count``, its share
    at least ``min_interpretation_share``, and a one-sided binomial test rejects
    ``rate_ab <= min(1, ratio * r0)``: ``P(X >= count | n_a, ratio * r0) < alpha / (K (K - 1))``
    (Bonferroni over all cells). Requiring the rate to beat *ratio* times the usual rate,
    not just the rate itself, keeps the natural cell-to-cell variation of a large data set
    from becoming significant.

    A cell that is merely large is not yet a misreading: two classes that look alike fill both
    a -> b and b -> a with correctly labeled images (CIFAR-10N's cats and dogs: 22% of either
    cell truly the other class), and a one-way swap a -> b fills the reverse cell b -> a with
    the correct labels the model now doubts. So with ``error_score`` a flagged cell must also
    have a mean error score of at least ``min_interpretation_wrong``: relabeling the whole cell
    is then expected to fix more labels than it breaks. On the saved benchmark analyses the
    mean separates the cells cleanly: truly swapped cells 0.59-0.97 (71-100% of their images
    truly the model's class), reverse and two-way cells 0.12-0.34 (0-73%).

    Even a misread cell holds correct labels (those swapped cells: 71-83% truly the model's
    class), and relabeling it at once would break them. ``together`` is how many of a flagged
    cell's images have an error score of at least ``together_wrong``, each label more likely
    wrong than right: the part a reviewer can relabel at once after checking a sample (its
    tab lists that part; the rest goes through the review queue one by one). On our
    Fashion-MNIST corruption the four swapped cells' parts are 94-98% truly the model's class
    (the cells 72-82%); a reviewer who samples 20 images of each and relabels the part when 18
    agree fixes 88.7% of all wrong labels in 5% of the images (85.6-89.0% over 20 draws), where
    sampling the whole cell fixed 77-84% (79.3% on average: most cells fail the sample). On the
    paper's MNIST swaps (cells 97-100% truly the model's class) the parts keep 98% of the cells:
    200 looks fix 98.9% of the wrong labels (99.8% relabeling whole cells) and break 1 correct
    label instead of 19. ``together`` is 0 without ``error_score``.
    """
    caller = "overview_cells"
    probs = pred_probs_checked(pred_probs, caller)
    n, k = probs.shape
    labels = labels_checked(labels, n, k, caller)
    scores = (_compute_mismatch(probs, labels) if mismatch is None
              else scores_checked("mismatch", mismatch, n, caller, low=0.0, high=1.0))
    if duplicate_group is None:
        groups = np.full(n, -1, dtype=np.int64)
    else:
        groups = length_checked("duplicate_group", duplicate_group, n, caller)
        if groups.ndim != 1 or not np.issubdtype(groups.dtype, np.integer):
            fail("duplicate_group", caller, "an (N,) int array (find_duplicates' groups, -1 for none)",
                 f"dtype {groups.dtype}, shape {groups.shape}", TypeError)
    if error_score is not None:
        error_score = scores_checked("error_score", error_score, n, caller, low=0.0, high=1.0)
    test = {
        "together_wrong": float_checked("together_wrong", together_wrong, caller, low=0.0, high=1.0),
        "alpha": float_checked("alpha", alpha, caller, low=0.0, high=1.0, low_open=True, high_open=True),
        "min_count": int_checked("min_interpretation_count", min_interpretation_count, caller, minimum=0),
        "min_share": float_checked("min_interpretation_share", min_interpretation_share, caller, low=0.0, high=1.0),
        "ratio": float_checked("min_interpretation_ratio", min_interpretation_ratio, caller, low=1.0,
                               high=float("inf")),
        "min_wrong": float_checked("min_interpretation_wrong", min_interpretation_wrong, caller, low=0.0, high=1.0),
    }
    return _compute_cells(probs, labels, scores.astype(np.float64), groups.astype(np.int64), error_score, **test)


def _confusion(labels: np.ndarray, predicted: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(labels * k + predicted, minlength=k * k).reshape(k, k)


def _interpretation_p_values(counts: np.ndarray, ratio: float) -> np.ndarray:
    """(K, K) one-sided binomial p-values of each cell against ``ratio`` x its usual rate; K >= 3."""
    k = len(counts)
    rows = counts.sum(axis=1).astype(np.float64)  # n_a, images labeled a
    off = counts.astype(np.float64)
    np.fill_diagonal(off, 0.0)
    row_off, col_off = off.sum(axis=1), off.sum(axis=0)

    # pooled: every (image, wrong class) slot but those of a -> b and b -> a (n_a and n_b
    # slots); one pseudo-count keeps r0 > 0.
    slots = rows.sum() * (k - 1)
    pooled = (off.sum() - off - off.T + 1.0) / (slots - rows[:, None] - rows[None, :] + 1.0)
    # row: label a's other K-2 wrong classes.
    row_rate = (row_off[:, None] - off) / np.maximum(rows[:, None] * (k - 2), 1.0)
    # column: other labels a' (not a, not b) into b.
    col_images = rows.sum() - rows[:, None] - rows[None, :]  # images labeled neither a nor b
    col_rate = np.where(col_images > 0, (col_off[None, :] - off) / np.maximum(col_images, 1.0), 0.0)
    # No reverse (b -> a) rate: a swap teaches the model some b-images are a, so the reverse
    # cell grows with the very error it would be compared against.
    usual = np.maximum.reduce([pooled, row_rate, col_rate])
    null = np.minimum(ratio * usual, 1.0)
    p = binom.sf(off - 1, rows[:, None], null)
    p[off == 0] = 1.0
    np.fill_diagonal(p, 1.0)
    return p


def _compute_cells(probs: np.ndarray, labels: np.ndarray, scores: np.ndarray, groups: np.ndarray,
                   error_score: np.ndarray | None, *, alpha: float, min_count: int, min_share: float,
                   ratio: float, min_wrong: float, together_wrong: float) -> list[dict]:
    n, k = probs.shape
    predicted = probs.argmax(axis=1)
    counts = _confusion(labels, predicted, k)
    rows = counts.sum(axis=1)
    off = counts.copy()
    np.fill_diagonal(off, 0)
    score_wrong = np.zeros((k, k))
    np.add.at(score_wrong, (labels, predicted), scores)
    if k > 2:
        flagged = _interpretation_p_values(counts, ratio) < alpha / (k * (k - 1))
    else:  # no confusion but the reverse cell (not used) to compare with: the error score decides
        flagged = np.full((k, k), error_score is not None)
    flagged &= (off >= max(min_count, 1)) & (off >= min_share * rows[:, None])
    if error_score is not None:  # and most of the cell's labels are expected wrong
        expected_wrong = np.zeros((k, k))
        np.add.at(expected_wrong, (labels, predicted), error_score)
        flagged &= expected_wrong >= min_wrong * np.maximum(counts, 1)

    wrong = np.flatnonzero(labels != predicted)
    cell_of = labels[wrong] * k + predicted[wrong]
    members_sorted = wrong[np.argsort(cell_of, kind="stable")]
    starts = np.concatenate([[0], np.cumsum(np.bincount(cell_of, minlength=k * k))])

    cells = []
    row_order = sorted((a for a in range(k) if off[a].sum() > 0), key=lambda a: (-off[a].sum(), a))
    for row, a in enumerate(row_order):
        columns = sorted(np.flatnonzero(off[a]), key=lambda b: (-off[a, b], -score_wrong[a, b], b))
        for column, b in enumerate(columns):
            members = members_sorted[starts[a * k + b]:starts[a * k + b + 1]]
            member_groups = groups[members][groups[members] >= 0]
            cells.append({
                "label": int(a), "predicted": int(b), "count": int(off[a, b]),
                "share_of_row": float(off[a, b] / rows[a]),
                "mean_mismatch": float(scores[members].mean()), "score_wrong": float(score_wrong[a, b]),
                "saturation": 0.0,  # set below, once every cell's score_wrong is known
                "histogram": _compute_histogram(scores[members], k).tolist(),
                "interpretation_error": bool(flagged[a, b]),
                "together": int((error_score[members] >= together_wrong).sum())
                if flagged[a, b] and error_score is not None else 0,
                "has_duplicates": bool(len(member_groups) != len(np.unique(member_groups))),
                "row": row, "column": column,
            })
    for cell, value in zip(cells, _compute_saturation(np.array([c["score_wrong"] for c in cells]))):
        cell["saturation"] = float(value)
    return cells
