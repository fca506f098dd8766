"""A verifier learned from reviewers' verdicts (the CleanNet idea): which kinds of disagreement
are real label errors in this project.

Symbols: N images, D evidence features per image. Every score is in [0, 1], higher = the
given label is more likely wrong.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.stats import rankdata

from ._checks import array_checked, fail, labels_checked, pred_probs_checked, scores_checked

MIN_EACH = 30  # verdicts of each kind (wrong, right) before the verifier is fitted at all
MAX_WEIGHT = 0.5  # the verifier never outweighs the model's own evidence
HALF_WEIGHT_AT = 100  # decisions at which the weight reaches half of MAX_WEIGHT
CELL_DECISIONS = 20  # the verdicts of one (label, predicted class) cell count as at most this many decisions
L2 = 100.0  # ridge penalty on standardised features (few decisions, many correlated features)
FOLDS = 5  # folds of the reviewed images that validate the verifier before it is used


def enough_verdicts(verdicts: np.ndarray) -> bool:
    """Whether ``verdicts`` ((N,) in {-1, 0, 1}) hold MIN_EACH of each kind, wrong and right."""
    verdicts = np.asarray(verdicts)
    return min(int((verdicts == 1).sum()), int((verdicts == 0).sum())) >= MIN_EACH


def verifier_evidence(pred_probs: np.ndarray, labels: np.ndarray, error_score: np.ndarray,
                      knn_disagreement: np.ndarray, consensus: np.ndarray) -> np.ndarray:
    """(N, 7 + 2K) features of each image's label for the verifier: the error score and its
    kNN and consensus terms, the label's probability, the top probability, the margin of the
    best other class over the label, the entropy, and the label and the predicted class one-hot
    (which confusions are errors here is project knowledge only verdicts carry)."""
    caller = "verifier_evidence"
    probs = pred_probs_checked(pred_probs, caller)
    n, k = probs.shape
    labels = labels_checked(labels, n, k, caller)
    rows = np.arange(n)
    p_label = probs[rows, labels]
    others = probs.copy()
    others[rows, labels] = -1.0
    entropy = -(probs * np.log(probs + 1e-12)).sum(axis=1)
    terms = [scores_checked(name, values, n, caller, low=0.0, high=1.0)
             for name, values in (("error_score", error_score), ("knn_disagreement", knn_disagreement),
                                  ("consensus", consensus))]
    one_hot = np.eye(k)
    return np.column_stack([*terms, p_label, probs.max(axis=1), others.max(axis=1) - p_label, entropy,
                            one_hot[labels], one_hot[probs.argmax(axis=1)]])


def cells_of(labels: np.ndarray, pred_probs: np.ndarray) -> np.ndarray:
    """(N,) int64 id of each image's (label, predicted class) cell."""
    probs = np.asarray(pred_probs)
    return np.asarray(labels, dtype=np.int64) * probs.shape[1] + probs.argmax(axis=1)


def verified_scores(evidence: np.ndarray, base: np.ndarray, verdicts: np.ndarray, cells: np.ndarray, *,
                    seed: int = 0) -> tuple[np.ndarray, float]:
    """Error scores re-ranked with what reviewers decided, and the weight the verifier got.

    A logistic regression learns from the reviewed images how the evidence maps to "label
    wrong" and scores every image; it is blended in only when, out of fold on the reviewed
    images, it ranks their verdicts better than ``base`` does (AUC), and then with a weight that
    grows with the number of decisions ``n`` (``MAX_WEIGHT * n / (n + HALF_WEIGHT_AT)``). A
    cell's verdicts count, in the fit and in ``n``, as at most CELL_DECISIONS decisions: a cell
    relabeled at once is one decision, and hundreds of its verdicts would otherwise teach the
    verifier that cell instead of what carries over to the cells nobody reviewed. Otherwise,
    or with fewer than MIN_EACH verdicts of either kind, ``base`` comes back unchanged, so a
    few verdicts cannot hurt. Blending is on percentile ranks (both scores' scales differ); the
    blend only re-orders: the i-th highest score returned is the i-th highest of ``base``.

    Parameters
    ----------
    evidence : ndarray of shape (N, D), float
        Features of each image's *given* label (for a reviewed image, the label it had when it
        was reviewed): error-score terms, class probabilities, label and predicted class.
    base : ndarray of shape (N,), float in [0, 1]
        The error score without verdicts.
    verdicts : ndarray of shape (N,), int
        1 = a reviewer found the label wrong, 0 = right, -1 = not reviewed (or no verdict on
        the label, e.g. ambiguous).
    cells : ndarray of shape (N,), int
        Each image's (given label, predicted class) cell, any non-negative id per cell (:func:`cells_of`).

    Returns
    -------
    scores : ndarray of shape (N,), float32 in [0, 1]
    weight : float in [0, MAX_WEIGHT], 0 when the verifier was not used.
    """
    caller = "verified_scores"
    x = array_checked(evidence, "evidence", caller, ndim=2, shape="(N, D)")
    n = len(x)
    base = scores_checked("base", base, n, caller, low=0.0, high=1.0)
    verdicts = np.asarray(verdicts)
    if verdicts.shape != (n,) or not np.isin(verdicts, (-1, 0, 1)).all():
        fail("verdicts", caller, f"an ({n},) array of -1, 0 and 1", f"shape {verdicts.shape}")
    cells = labels_checked(cells, n, None, caller, name="cells")
    if not enough_verdicts(verdicts):
        return base.astype(np.float32), 0.0
    known = np.flatnonzero(verdicts >= 0)
    wrong = verdicts[known].astype(np.float64)
    _, cell_index, per_cell = np.unique(cells[known], return_inverse=True, return_counts=True)
    decision = np.minimum(1.0, CELL_DECISIONS / per_cell[cell_index])
    z = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)
    if _out_of_fold_auc(z[known], wrong, decision, seed) <= _auc(base[known], wrong):
        return base.astype(np.float32), 0.0
    weight = MAX_WEIGHT * decision.sum() / (decision.sum() + HALF_WEIGHT_AT)
    p_wrong = _predict(_fit(z[known], wrong, decision), z)
    blended = (1 - weight) * rankdata(base) / n + weight * rankdata(p_wrong) / n
    # The verifier re-orders the scores; their values stay the model's, so the review list's
    # length and the cells' flags still read them as the chance that a label is wrong.
    scores = np.empty(n, dtype=np.float32)
    scores[np.argsort(blended, kind="stable")] = np.sort(base)
    return scores, float(weight)


def reordered_within(scores: np.ndarray, order: np.ndarray, members: np.ndarray) -> np.ndarray:
    """``scores`` (N,) with the values of ``members`` ((N,) bool) handed out again among them,
    the highest to the member highest in ``order`` (N,); the rest unchanged.

    Where :func:`verified_scores` re-orders every image, this keeps a group's own values: the
    images nobody reviewed, or a review queue, then read as before (a list as long, a queue
    whose every score made it a candidate) while the verifier decides their order.
    """
    out = np.array(scores, copy=True)
    idx = np.flatnonzero(members)
    out[idx[np.argsort(-np.asarray(order)[idx], kind="stable")]] = np.sort(out[idx])[::-1]
    return out


def _fit(z: np.ndarray, y: np.ndarray, sample_weight: np.ndarray) -> np.ndarray:
    """Ridge-penalised, weighted logistic regression; returns weights with the bias last."""
    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        p = 1.0 / (1.0 + np.exp(-(z @ w[:-1] + w[-1])))
        log_lik = sample_weight * (y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12))
        residual = sample_weight * (p - y)
        return -log_lik.sum() + L2 / 2 * w[:-1] @ w[:-1], np.append(z.T @ residual + L2 * w[:-1], residual.sum())
    return minimize(loss, np.zeros(z.shape[1] + 1), jac=True, method="L-BFGS-B").x


def _predict(w: np.ndarray, z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(z @ w[:-1] + w[-1])))


def _out_of_fold_auc(z: np.ndarray, y: np.ndarray, sample_weight: np.ndarray, seed: int) -> float:
    fold = np.random.default_rng(seed).permutation(len(y)) % FOLDS
    scores = np.empty(len(y))
    for f in range(FOLDS):
        train = fold != f
        scores[~train] = _predict(_fit(z[train], y[train], sample_weight[train]), z[~train])
    return _auc(scores, y)


def _auc(scores: np.ndarray, y: np.ndarray) -> float:
    """Probability that a wrong label scores above a right one (ties count half)."""
    ranks = rankdata(scores)
    positives = y.sum()
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * (len(y) - positives)))
