"""Per-image label-error evidence and the review candidates.

Symbols: N images, K classes, F fold models, D embedding width. Every score here is in
[0, 1] and higher means the given label is more likely wrong (the opposite direction of
cleanlab's label-quality scores).

Evidence, each out of sample:
- confident learning (cleanlab): the label quality (self-confidence and normalized margin) of
  the views' probabilities;
- latent-space outliers (the AQUAVS noise-score idea): :func:`knn_disagreement`, how many
  of an image's neighbours in embedding space carry another label;
- model consensus (the ImageNet clean-up paper): :func:`consensus`, how many independent
  fold models vote against the label.
:func:`error_scores` combines them into one ranking of every image, and
:func:`find_candidates` cuts it at confident learning's estimate of the number of errors.
"""

from __future__ import annotations

import numpy as np
from cleanlab.count import num_label_issues
from cleanlab.rank import get_label_quality_scores

from ._checks import (array_checked, fail, fold_probs_checked, int_checked, labels_checked, length_checked,
                      pred_probs_checked, scores_checked)
from ._neighbors import NEIGHBOUR_DIMS, neighbours, pca_reduce

DEFAULT_WEIGHTS = (0.8, 0.1, 0.1)  # (label quality, kNN disagreement, consensus)
QUALITY_METHODS = ("both", "self_confidence", "normalized_margin")


def consensus(fold_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Share of the F fold models whose predicted class differs from the label.

    Model consensus: a label is suspicious when independent models agree with each other
    against it.

    Parameters
    ----------
    fold_probs : ndarray of shape (F, N, K), float
        Every fold model's softmax outputs for every image.
    labels : ndarray of shape (N,), int in [0, K)

    Returns
    -------
    ndarray of shape (N,), float32, in [0, 1] (steps of 1/F)
        Higher = more models vote against the label; 1 = all of them.
    """
    probs = fold_probs_checked(fold_probs, "consensus")
    labels = labels_checked(labels, probs.shape[1], probs.shape[2], "consensus")
    return _compute_consensus(probs, labels)


def _compute_consensus(fold_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return (fold_probs.argmax(axis=2) != labels[None, :]).mean(axis=0).astype(np.float32)


def knn_disagreement(embeddings: np.ndarray, labels: np.ndarray, fold_of: np.ndarray, *, k: int = 10,
                     dims: int = NEIGHBOUR_DIMS) -> np.ndarray:
    """Share of an image's k nearest neighbours in embedding space whose label differs from its own.

    The latent-space outlier idea, kept out of sample: image i is placed by the fold model
    that never trained on it (``fold_of[i]``), among *all* other images embedded by that
    same model. Each fold's embeddings are reduced to 16 dimensions by PCA (numpy SVD on a
    5,000-row sample) and searched with a k-d tree (scipy ``cKDTree``, (1 + eps)-approximate
    with eps = 2), so the cost grows ~N log N and no N x N matrix is built. Neighbours count
    equally.

    Parameters
    ----------
    embeddings : ndarray of shape (F, N, D), float
        Every fold model's features of every image (a read-only broadcast of one (N, D) space
        is fine and is reduced once).
    labels : ndarray of shape (N,), int >= 0
    fold_of : ndarray of shape (N,), int in [0, F)
        The fold whose model held each image out.
    k : int >= 1, default 10
        Neighbours per image (fewer when N <= k).
    dims : int >= 1, default 16
        PCA dimensions searched. 16 keep a small CNN's class structure; wide pretrained
        features need more (CIFAR-10N, EfficientNet-Lite0: AP 0.31 at 16, 0.37 at 64).

    Returns
    -------
    ndarray of shape (N,), float32, in [0, 1]
        Higher = more of the image's neighbours carry another label. Images of a class with
        fewer than k other members score above 0 even when they sit among their own class.
    """
    caller = "knn_disagreement"
    embeddings = array_checked(embeddings, "embeddings", caller, ndim=3, shape="(F, N, D)")
    f_count, n = embeddings.shape[:2]
    if min(embeddings.shape) < 1:
        fail("embeddings", caller, "of shape (F, N, D) with F, N, D >= 1", f"shape {embeddings.shape}")
    labels = labels_checked(labels, n, None, caller)
    fold_of = length_checked("fold_of", fold_of, n, caller)
    if fold_of.dtype == bool or not np.issubdtype(fold_of.dtype, np.integer):
        fail("fold_of", caller, "integer fold indices", f"dtype {fold_of.dtype}", TypeError)
    if fold_of.min() < 0 or fold_of.max() >= f_count:
        fail("fold_of", caller, f"fold indices in [0, {f_count - 1}] (embeddings has F = {f_count} folds)",
             f"values {fold_of.min()}..{fold_of.max()}")
    k = int_checked("k", k, caller)
    dims = int_checked("dims", dims, caller)
    return _compute_knn_disagreement(embeddings, labels, fold_of.astype(np.int64), k, dims)


def _compute_knn_disagreement(embeddings: np.ndarray, labels: np.ndarray, fold_of: np.ndarray, k: int,
                              dims: int) -> np.ndarray:
    n = embeddings.shape[1]
    out = np.zeros(n, dtype=np.float32)
    if n < 2:
        return out
    shared = embeddings.strides[0] == 0  # one space broadcast over the folds (frozen backbone)
    space = pca_reduce(embeddings[0], dims) if shared else None
    for f in np.unique(fold_of):
        queries = np.flatnonzero(fold_of == f)
        _, idx = neighbours(space if shared else pca_reduce(embeddings[f], dims), queries, min(k, n - 1))
        valid = idx >= 0
        differs = (labels[np.where(valid, idx, 0)] != labels[queries][:, None]) & valid
        out[queries] = differs.sum(axis=1) / np.maximum(valid.sum(axis=1), 1)
    return out


def error_scores(pred_probs: np.ndarray, labels: np.ndarray, *, fold_probs=None,
                 knn_disagreement: np.ndarray | None = None, consensus: np.ndarray | None = None,
                 weights: tuple[float, float, float] = DEFAULT_WEIGHTS, view_weights=None,
                 quality: str = "both") -> np.ndarray:
    """How likely each given label is wrong: one score that ranks every image.

    ``score = (w1 * (1 - q) + w2 * knn_disagreement + w3 * consensus) / (w1 + w2 + w3)``

    where ``q`` is cleanlab's label-quality score (``cleanlab.rank.get_label_quality_scores``)
    of the views' fold-mean probabilities ``fold_probs[v].mean(0)``, averaged over the views
    with ``view_weights``; without ``fold_probs``, of ``pred_probs``. Averaging a view's F
    fold models is a soft model consensus (on a 7,000-image MNIST corruption it ranked injected
    errors with AP 0.97 against 0.69 for the single out-of-fold model; on CIFAR-10N photos 0.61
    against 0.59). The kNN and hard-consensus terms add latent-space and vote evidence and break
    ties. A term that is not given drops out together with its weight. Unlike eq. 1
    (``mismatch_score``), the score is continuous for correctly classified images too.

    Parameters
    ----------
    pred_probs : ndarray of shape (N, K), float
        Out-of-sample softmax outputs.
    labels : ndarray of shape (N,), int in [0, K)
    fold_probs : ndarray of shape (F, N, K), or a list of them (one per view), optional
        Every fold model's softmax outputs; replaces ``pred_probs`` in ``q`` when given.
    knn_disagreement : ndarray of shape (N,), float in [0, 1], optional
        From :func:`knn_disagreement`.
    consensus : ndarray of shape (N,), float in [0, 1], optional
        From :func:`consensus`.
    weights : tuple of three floats >= 0, first > 0, default (0.8, 0.1, 0.1)
        (w1, w2, w3) above.
    view_weights : sequence of floats > 0, one per view, optional (default equal)
    quality : {'both', 'self_confidence', 'normalized_margin'}, default 'both'
        cleanlab's method for ``q``; 'both' is the mean of the two. On CIFAR-10N photos
        (CNN + pretrained views) self-confidence ranks errors with AP 0.623, the margin 0.600,
        both 0.633; on the paper's MNIST swaps the margin is far ahead of self-confidence
        (0.952 vs 0.906): a swapped digit's given class is the model's runner-up.

    Returns
    -------
    ndarray of shape (N,), float32, in [0, 1]
        Higher = the label is more likely wrong.
    """
    caller = "error_scores"
    probs = pred_probs_checked(pred_probs, caller)
    n, k = probs.shape
    labels = labels_checked(labels, n, k, caller)
    w = _weights_checked(weights, caller)
    if quality not in QUALITY_METHODS:
        fail("quality", caller, f"one of {QUALITY_METHODS}", repr(quality))
    views = [] if fold_probs is None else [fold_probs] if isinstance(fold_probs, np.ndarray) else list(fold_probs)
    for v, view in enumerate(views):
        views[v] = fold_probs_checked(view, caller)
        if views[v].shape[1:] != probs.shape:
            fail("fold_probs", caller, f"of shape (F, {n}, {k}) to match pred_probs", f"shape {views[v].shape}")
    view_weights = [1.0] * len(views) if view_weights is None else [float(x) for x in view_weights]
    if len(view_weights) != len(views) or any(not np.isfinite(x) or x <= 0 for x in view_weights):
        fail("view_weights", caller, f"{len(views)} numbers > 0 (one per view)", repr(view_weights))
    terms = [(w[0], None)]
    for name, values, weight in (("knn_disagreement", knn_disagreement, w[1]), ("consensus", consensus, w[2])):
        if values is not None:
            terms.append((weight, scores_checked(name, values, n, caller, low=0.0, high=1.0)))
    if views:
        probs = sum(x * v.mean(axis=0) for v, x in zip(views, view_weights)) / sum(view_weights)
    return _compute_error_scores(probs, labels, terms, quality)


def _weights_checked(weights, caller: str) -> tuple[float, float, float]:
    try:
        w = tuple(float(v) for v in weights)
    except (TypeError, ValueError):
        fail("weights", caller, "three numbers (label quality, kNN, consensus)", repr(weights), TypeError)
    if len(w) != 3 or not all(np.isfinite(w)) or min(w) < 0 or w[0] <= 0:
        fail("weights", caller, "three finite numbers >= 0 with the first (label quality) > 0, e.g. (0.8, 0.1, 0.1)",
             repr(weights))
    return w


def _compute_error_scores(probs: np.ndarray, labels: np.ndarray, terms: list, quality: str) -> np.ndarray:
    methods = QUALITY_METHODS[1:] if quality == "both" else (quality,)
    q = np.mean([get_label_quality_scores(labels, probs, method=m) for m in methods], axis=0)
    total = sum(weight for weight, _ in terms)
    score = sum(weight * (1.0 - q if values is None else values) for weight, values in terms) / total
    return np.clip(score, 0.0, 1.0).astype(np.float32)


def find_candidates(pred_probs: np.ndarray, labels: np.ndarray, error_score: np.ndarray, *,
                    consensus: np.ndarray | None = None,
                    systematic: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """The images to review: the n highest error scores, n estimated by confident learning.

    n is confident learning's estimate of how many labels are wrong: cleanlab
    ``num_label_issues`` (``estimation_method="off_diagonal_calibrated"``: off-diagonal sum
    of the confident joint calibrated to the label counts) on the out-of-sample
    ``pred_probs``, over the classes that have labeled images. Not a fixed top-k: the cut
    follows the data's noise. Confident learning undercounts large systematic swaps (a
    model that saw 20% of a class mislabeled is rarely *confident* about them), so when
    ``consensus`` is given, images that every fold model votes against (consensus == 1)
    are flagged too, and so are the images of the cells the overview flags as class
    interpretation errors (``systematic``): a swap that is beyond the model's usual confusion
    makes every image of its cell a candidate, the paper's highlighted cells.

    Parameters
    ----------
    pred_probs : ndarray of shape (N, K), float
        Out-of-sample softmax outputs.
    labels : ndarray of shape (N,), int in [0, K)
    error_score : ndarray of shape (N,), float
        From :func:`error_scores`; higher = more likely wrong.
    consensus : ndarray of shape (N,), float in [0, 1], optional
        From :func:`consensus`.
    systematic : ndarray of shape (N,), bool, optional
        True for images in a cell flagged as a class interpretation error
        (``overview.interpretation_members``).

    Returns
    -------
    is_candidate : ndarray of shape (N,), bool
    n_estimated : int
        Estimated number of label errors (0 when fewer than two classes have images).
    """
    caller = "find_candidates"
    probs = pred_probs_checked(pred_probs, caller)
    labels = labels_checked(labels, len(probs), probs.shape[1], caller)
    scores = scores_checked("error_score", error_score, len(probs), caller)
    votes = None if consensus is None else scores_checked("consensus", consensus, len(probs), caller, low=0.0,
                                                          high=1.0)
    if systematic is not None:
        systematic = length_checked("systematic", systematic, len(probs), caller)
        if systematic.dtype != bool:
            fail("systematic", caller, "a boolean mask (N,)", f"dtype {systematic.dtype}", TypeError)
    return _compute_candidates(probs, labels, scores, votes, systematic)


def _compute_candidates(probs: np.ndarray, labels: np.ndarray, scores: np.ndarray, votes: np.ndarray | None,
                        systematic: np.ndarray | None) -> tuple[np.ndarray, int]:
    flagged = np.zeros(len(probs), dtype=bool)
    present = np.unique(labels)
    if present.size < 2:
        return flagged, 0
    # cleanlab needs every class present: restrict to the labeled classes and renormalise.
    sub = probs[:, present]
    mass = sub.sum(axis=1, keepdims=True)
    sub = np.where(mass > 1e-12, sub / np.maximum(mass, 1e-12), 1.0 / present.size)
    n = int(num_label_issues(np.searchsorted(present, labels), sub, estimation_method="off_diagonal_calibrated"))
    flagged[np.argsort(-scores, kind="stable")[:n]] = True
    if votes is not None:
        flagged |= votes >= 1.0
    if systematic is not None:
        flagged |= systematic
    return flagged, n
