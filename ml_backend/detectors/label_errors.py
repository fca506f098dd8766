"""Per-image label-error evidence and the review candidates.

Symbols: N images, K classes, F fold models, D embedding width. Every score here is in
[0, 1] and higher means the given label is more likely wrong (the opposite direction of
cleanlab's label-quality scores).

Evidence, each out of sample:
- confident learning (cleanlab): :func:`error_scores`, the label quality (self-confidence and
  normalized margin) of the views' probabilities, corrected for how this data's labels go
  wrong (:func:`noise_matrix`, :func:`label_posterior`); it ranks every image, and
  :func:`find_candidates` cuts it at confident learning's estimate of the number of errors, or
  further down where the scores expect more;
- latent-space outliers (the AQUAVS noise-score idea): :func:`knn_disagreement`, how many
  of an image's neighbours in embedding space (:func:`knn_neighbours`) carry another label; in
  a pretrained space the neighbours' labels also join the score as one more view
  (:func:`vote_neighbours`, :func:`neighbour_votes`);
- model consensus (the ImageNet clean-up paper): :func:`consensus`, how many independent
  fold models vote against the label.
The last two are reported beside the score and feed the verifier; added to the score they
lowered its AP (see ``error_scores``).
"""

from __future__ import annotations

import numpy as np
from cleanlab.count import estimate_joint, num_label_issues
from cleanlab.rank import get_label_quality_scores

from ._checks import (array_checked, fail, float_checked, fold_probs_checked, int_checked, labels_checked,
                      length_checked, pred_probs_checked, scores_checked)
from ._neighbors import NEIGHBOUR_DIMS, neighbours, pca_reduce

# Mix of a uniform matrix into the estimated noise matrix. Measured on cached arrays (AP of the
# score; CIFAR-10N aggre / random1 / Fashion-MNIST corruption / MNIST swaps): 0.1: 0.679 / 0.823 /
# 0.836 / 0.994; 0.2: 0.692 / 0.831 / 0.815 / 0.991; 0.3: 0.697 / 0.835 / 0.793 / 0.990.
NOISE_SMOOTHING = 0.2
MIN_NOISE_CLASS = 20  # labeled images a class needs before the noise matrix estimates how it goes wrong
MIN_COUNT_CLASS = 5  # fewest labels a class needs to join the error count at all (one image's own
# probability is its class' threshold: every correct image of the other classes would count as wrong)
MIN_LISTED_SCORE = 1e-3  # an image whose label is this unlikely to be wrong is never listed for review
REVIEW_THRESHOLD = 0.15  # error score from which every image is a review candidate (find_candidates)
# Share of the total error score the review list holds (find_candidates): the errors the scores
# expect. On saved analyses the list then holds about that share of the true errors (CIFAR-10N
# aggre 0.82 at 0.8, random1 0.78; the scores spread their doubt over many photos there).
LIST_RECALL = 0.8
# Share of the correct labels the counted rows are expected to hold by which the list goes on
# (find_candidates). Saved analyses (flagged / errors, recall; 0 / 0.5 / 0.75 / 1): CIFAR-10N
# random1 1.11x 0.779 / 1.30x 0.833 / 1.45x 0.863 / 1.59x 0.889; Fashion-MNIST corruption
# 1.92x 0.910 / 1.92x 0.910 / 1.93x 0.911 / 2.07x 0.920; the demo's 1,797 digits 0.86x 0.860 /
# 1.02x / 1.09x / 1.16x 1.000; CIFAR-10N aggre and the paper's MNIST swaps unchanged.
# 0.75 is the largest that keeps every list within 2x the true errors.
COUNT_EXTENSION = 0.75
# How far the LIST_RECALL rule may reach: at most this many times the list that count and threshold
# make (find_candidates). Where they find nothing (a clean project, an unsure model whose doubt is
# spread thin over every image) the rule would otherwise walk far down a flat ranking: 497 of 2,000
# correctly labeled images for scores summing to 9.5. On the saved benchmark analyses it reaches
# 1.8x at most (CIFAR-10N aggre), so 2 changes none of their lists.
LIST_REACH = 2
VOTE_DIMS = 64  # vote_neighbours: PCA dimensions of the pretrained features searched
# neighbour_votes: votes every class gets before the neighbours'. Half a vote made the votes so
# unsure that the doubt they add lengthened CIFAR-10N aggre's list from 1.79x to 2.04x the errors;
# a tenth: 1.91x, at AP 0.717 (offline, same arrays).
VOTE_PRIOR = 0.1


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


def knn_neighbours(embeddings: np.ndarray, fold_of: np.ndarray, *, k: int = 10,
                   dims: int = NEIGHBOUR_DIMS) -> np.ndarray:
    """Each image's k nearest neighbours in embedding space, out of sample, for :func:`knn_disagreement`.

    Image i is placed by the fold model that never trained on it (``fold_of[i]``), among *all*
    other images embedded by that same model. Each fold's embeddings are reduced to ``dims``
    dimensions by PCA (numpy SVD on a 5,000-row sample) and searched with a k-d tree (scipy
    ``cKDTree``, (1 + eps)-approximate with eps = 2), so the cost grows ~N log N and no N x N
    matrix is built. The search does not depend on the labels: one search serves every
    labeling scored (the labels as given and as reviewed).

    Parameters
    ----------
    embeddings : ndarray of shape (F, N, D), float
        Every fold model's features of every image (a read-only broadcast of one (N, D) space
        is fine and is reduced once).
    fold_of : ndarray of shape (N,), int in [0, F)
        The fold whose model held each image out.
    k : int >= 1, default 10
        Neighbours per image (fewer when N <= k).
    dims : int >= 1, default 16
        PCA dimensions searched. 16 keep a small CNN's class structure; wide pretrained
        features need more (CIFAR-10N, EfficientNet-Lite0: AP 0.31 at 16, 0.37 at 64).

    Returns
    -------
    ndarray of shape (N, min(k, N - 1)), int64: neighbour indices, nearest first; -1 pads rows
    the approximate search left short (and the one row of a single image).
    """
    caller = "knn_neighbours"
    embeddings = array_checked(embeddings, "embeddings", caller, ndim=3, shape="(F, N, D)")
    f_count, n = embeddings.shape[:2]
    if min(embeddings.shape) < 1:
        fail("embeddings", caller, "of shape (F, N, D) with F, N, D >= 1", f"shape {embeddings.shape}")
    fold_of = length_checked("fold_of", fold_of, n, caller)
    if fold_of.dtype == bool or not np.issubdtype(fold_of.dtype, np.integer):
        fail("fold_of", caller, "integer fold indices", f"dtype {fold_of.dtype}", TypeError)
    if fold_of.min() < 0 or fold_of.max() >= f_count:
        fail("fold_of", caller, f"fold indices in [0, {f_count - 1}] (embeddings has F = {f_count} folds)",
             f"values {fold_of.min()}..{fold_of.max()}")
    k = int_checked("k", k, caller)
    dims = int_checked("dims", dims, caller)
    return _compute_knn_neighbours(embeddings, fold_of.astype(np.int64), k, dims)


def _compute_knn_neighbours(embeddings: np.ndarray, fold_of: np.ndarray, k: int, dims: int) -> np.ndarray:
    n = embeddings.shape[1]
    out = np.full((n, max(min(k, n - 1), 1)), -1, dtype=np.int64)
    if n < 2:
        return out
    shared = embeddings.strides[0] == 0  # one space broadcast over the folds (frozen backbone)
    space = pca_reduce(embeddings[0], dims) if shared else None
    for f in np.unique(fold_of):
        queries = np.flatnonzero(fold_of == f)
        out[queries] = neighbours(space if shared else pca_reduce(embeddings[f], dims), queries, min(k, n - 1))[1]
    return out


def knn_disagreement(neighbour_index: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Share of an image's nearest neighbours (:func:`knn_neighbours`) whose label differs from
    its own: the latent-space outlier idea. Neighbours count equally.

    Parameters
    ----------
    neighbour_index : ndarray of shape (N, k), int, -1 for none
    labels : ndarray of shape (N,), int >= 0

    Returns
    -------
    ndarray of shape (N,), float32, in [0, 1]
        Higher = more of the image's neighbours carry another label. Images of a class with
        fewer than k other members score above 0 even when they sit among their own class.
    """
    caller = "knn_disagreement"
    index = _neighbour_index_checked(neighbour_index, caller)
    labels = labels_checked(labels, len(index), None, caller)
    valid = index >= 0
    differs = (labels[np.where(valid, index, 0)] != labels[:, None]) & valid
    return (differs.sum(axis=1) / np.maximum(valid.sum(axis=1), 1)).astype(np.float32)


def _neighbour_index_checked(neighbour_index, caller: str) -> np.ndarray:
    """(N, k) integer neighbour indices in [-1, N)."""
    index = array_checked(neighbour_index, "neighbour_index", caller, ndim=2, shape="(N, k)")
    if not np.issubdtype(index.dtype, np.integer) or index.min(initial=0) < -1 or index.max(initial=0) >= len(index):
        fail("neighbour_index", caller, f"integer indices in [-1, {len(index) - 1}]",
             f"dtype {index.dtype}, values {index.min(initial=0)}..{index.max(initial=0)}")
    return index


def vote_neighbours(features: np.ndarray, *, k: int = 10, dims: int = VOTE_DIMS,
                    groups: np.ndarray | None = None) -> np.ndarray:
    """Each image's k nearest neighbours in a pretrained feature space, for :func:`neighbour_votes`.

    Features are standardised, reduced to ``dims`` dimensions by PCA and compared by angle
    (rows scaled to unit length), searched with the same approximate k-d tree as
    :func:`knn_neighbours`. An image is never its own neighbour, nor are its exact copies
    (``groups``): a copy carrying the same wrong label would vote for it. The search does not
    depend on the labels, so one search serves every labeling scored (given and reviewed labels).

    Parameters
    ----------
    features : ndarray of shape (N, D), float
        A frozen pretrained backbone's features (not a CNN trained on these labels: its
        embedding places images by the very labels under test).
    k : int >= 1, default 10
    dims : int >= 1, default 64
    groups : ndarray of shape (N,), optional: ids of exact copies (e.g. pixel hashes)

    Returns
    -------
    ndarray of shape (N, min(k, N - 1)), int64: neighbour indices, nearest first; -1 pads rows
    the approximate search left short.
    """
    caller = "vote_neighbours"
    features = array_checked(features, "features", caller, ndim=2, shape="(N, D)")
    k = int_checked("k", k, caller)
    dims = int_checked("dims", dims, caller)
    space = pca_reduce(features, dims, standardise=True)
    space = space / np.maximum(np.linalg.norm(space, axis=1, keepdims=True), 1e-12)  # never the caller's array
    if groups is not None:
        if np.shape(groups) != (len(space),):
            fail("groups", caller, f"one id per image, shape ({len(space)},)", f"shape {np.shape(groups)}")
        groups = np.unique(np.asarray(groups), return_inverse=True)[1].ravel()
    return neighbours(space, np.arange(len(space)), min(k, max(len(space) - 1, 1)), groups=groups)[1]


def neighbour_votes(neighbour_index: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """The labels of each image's neighbours as class probabilities: a nearest-neighbour
    classifier in a pretrained feature space, one more view for :func:`error_scores`.

    The neighbours come from :func:`vote_neighbours`, which never counts an image as its own
    neighbour, so the votes are out of sample without folds. Each class gets VOTE_PRIOR (a
    tenth) of a vote more, so that no class is impossible.
    Why: in the noise-corrected score they lift AP on CIFAR-10N from 0.711 to 0.717 (`aggre`)
    and 0.842 to 0.846 (`random1`), offline on the same arrays; unscaled Euclidean neighbours
    in the same space added 0.001 (see the README's ablation).

    Parameters
    ----------
    neighbour_index : ndarray of shape (N, k), int, -1 for none (:func:`vote_neighbours`)
    labels : ndarray of shape (N,), int in [0, K)
    num_classes : int >= 2, K

    Returns
    -------
    ndarray of shape (N, K), float32, rows summing to 1
    """
    caller = "neighbour_votes"
    num_classes = int_checked("num_classes", num_classes, caller, minimum=2)
    index = _neighbour_index_checked(neighbour_index, caller)
    labels = labels_checked(labels, len(index), num_classes, caller)
    return _compute_neighbour_votes(index, labels, num_classes)


def _compute_neighbour_votes(index: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    votes = np.full((len(labels), num_classes), VOTE_PRIOR, dtype=np.float64)
    for column in index.T:
        valid = column >= 0
        np.add.at(votes, (np.flatnonzero(valid), labels[column[valid]]), 1.0)
    return (votes / votes.sum(axis=1, keepdims=True)).astype(np.float32)


def noise_matrix(pred_probs: np.ndarray, labels: np.ndarray, *, smoothing: float = NOISE_SMOOTHING) -> np.ndarray:
    """How labels go wrong in this data: P(given label i | true class j), estimated by confident learning.

    cleanlab's calibrated confident joint (``cleanlab.count.estimate_joint``) of the
    out-of-sample probabilities, each true class's column normalised, then mixed with the
    uniform matrix: ``(1 - smoothing) * T + smoothing / K``. The mix keeps room for errors the
    joint did not count (a lone mislabeled image) and keeps the matrix invertible.

    Parameters
    ----------
    pred_probs : ndarray of shape (N, K), float
        Out-of-sample softmax outputs; every class must have labeled images.
    labels : ndarray of shape (N,), int in [0, K)
    smoothing : float in (0, 1), default 0.2

    Returns
    -------
    ndarray of shape (K, K), float64, columns summing to 1
        Entry [i, j] = P(given label i | true class j).
    """
    caller = "noise_matrix"
    probs = pred_probs_checked(pred_probs, caller)
    labels = labels_checked(labels, len(probs), probs.shape[1], caller)
    if np.unique(labels).size != probs.shape[1]:
        fail("labels", caller, f"every one of the {probs.shape[1]} classes present", f"{np.unique(labels).size}")
    return _compute_noise_matrix(probs, labels, _smoothing_checked(smoothing, caller))


def _smoothing_checked(smoothing, caller: str) -> float:
    if not isinstance(smoothing, (int, float)) or not 0 < smoothing < 1:
        fail("smoothing", caller, "a number in (0, 1)", repr(smoothing))
    return float(smoothing)


def _compute_noise_matrix(probs: np.ndarray, labels: np.ndarray, smoothing: float) -> np.ndarray:
    k = probs.shape[1]
    joint = estimate_joint(labels, probs)  # rows: given label, columns: true class
    mass = joint.sum(axis=0, keepdims=True)
    given_if_true = np.where(mass > 0, joint / np.maximum(mass, 1e-12), np.eye(k))
    # Confident learning counts an image as surely class j above the mean confidence of j's own
    # labels; for a class of a few images that can be so low that most images of other classes pass
    # it, and their correct labels would read as wrong (a 2-image class: 160 of 162 images flagged).
    # Too few labels to estimate how the class goes wrong: assume it does not.
    few = np.bincount(labels, minlength=k) < MIN_NOISE_CLASS
    given_if_true[:, few] = np.eye(k)[:, few]
    return (1.0 - smoothing) * given_if_true + smoothing / k


def label_posterior(probs: np.ndarray, labels: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """P(true class j | image, its given label): the model's view corrected for how this data's labels go wrong.

    A classifier trained on noisy labels learns the noise: when 20% of shirts are labeled
    T-shirt, it gives every shirt some T-shirt probability, and a true T-shirt that looks a
    little like a shirt seems doubtful. Undoing the noise (``p = T^-1 p~``, clipped to the
    simplex) and then asking Bayes how likely the *given* label is,
    ``P(j | x, label i) ~ p_j(x) * T[i, j]``, doubts a label in the direction labelers
    actually err (a shirt labeled T-shirt) and trusts the reverse (a T-shirt labeled T-shirt).

    Parameters
    ----------
    probs : ndarray of shape (N, K), float
        The model's class probabilities (trained on the given labels).
    labels : ndarray of shape (N,), int in [0, K)
    noise : ndarray of shape (K, K)
        From :func:`noise_matrix`.

    Returns
    -------
    ndarray of shape (N, K), float64, rows summing to 1
    """
    caller = "label_posterior"
    probs = pred_probs_checked(probs, caller, name="probs")
    labels = labels_checked(labels, len(probs), probs.shape[1], caller)
    k = probs.shape[1]
    noise = array_checked(noise, "noise", caller, ndim=2, shape="(K, K)")
    if noise.shape != (k, k) or noise.min() < 0 or not np.allclose(noise.sum(axis=0), 1.0):
        fail("noise", caller, f"a ({k}, {k}) matrix of probabilities, columns summing to 1 (noise_matrix)",
             f"shape {noise.shape}")
    return _compute_label_posterior(probs, labels, noise)


def _compute_label_posterior(probs: np.ndarray, labels: np.ndarray, noise: np.ndarray) -> np.ndarray:
    clean = probs @ np.linalg.pinv(noise).T
    clean = np.clip(clean, 0.0, None) + 1e-6
    clean /= clean.sum(axis=1, keepdims=True)
    joint = clean * noise[labels]
    return joint / joint.sum(axis=1, keepdims=True)


def error_scores(pred_probs: np.ndarray, labels: np.ndarray, *, fold_probs=None, view_weights=None,
                 smoothing: float = NOISE_SMOOTHING, noise_labels: np.ndarray | None = None) -> np.ndarray:
    """How likely each given label is wrong: one score that ranks every image.

    ``score = 1 - q``, where ``q`` is cleanlab's label quality (the mean of self-confidence and
    normalized margin, ``cleanlab.rank.get_label_quality_scores``) of :func:`label_posterior`:
    the views' fold-mean probabilities ``fold_probs[v].mean(0)`` (averaged with
    ``view_weights``; without ``fold_probs``, ``pred_probs``) corrected by the noise matrix
    that the out-of-sample ``pred_probs`` estimate. Averaging a view's F fold models is a
    soft model consensus; the noise correction stops a systematic swap from casting doubt on
    the correct labels of the class it is swapped with (AP on our Fashion-MNIST corruption
    0.633 -> 0.815, the paper's MNIST swaps 0.959 -> 0.992, CIFAR-10N 0.682 -> 0.692; adding
    kNN disagreement and consensus at weight 0.1 each, as before, lowered it to 0.795 / 0.988 /
    0.691, offline on the same arrays). When fewer than two classes have labels there is no
    noise to estimate and ``q`` is read off the probabilities themselves. Unlike eq. 1
    (``mismatch_score``) the score is continuous for correctly classified images too.

    Parameters
    ----------
    pred_probs : ndarray of shape (N, K), float
        Out-of-sample softmax outputs.
    labels : ndarray of shape (N,), int in [0, K)
    fold_probs : ndarray of shape (F, N, K), or a list of them (one per view), optional
        Every fold model's softmax outputs; replaces ``pred_probs`` in ``q`` when given.
    view_weights : sequence of floats > 0, one per view, optional (default equal)
    smoothing : float in (0, 1), default 0.2
        See :func:`noise_matrix`.
    noise_labels : ndarray of shape (N,), int in [0, K), optional (default ``labels``)
        The labels as the annotators gave them, before any review: the noise matrix is
        estimated on them. Reviewers' corrections hide how the annotators err from the
        estimate, while the labels nobody reviewed still carry exactly that noise (our
        Fashion-MNIST corruption, round 2 of review after 5% was reviewed: 86.9% of the wrong
        labels fixed with the matrix of the corrected labels, 92.9% with that of the given ones).
        When review emptied a class or gave one the annotators never used, the two labelings
        do not share their classes, and the matrix comes from ``labels`` after all.

    Returns
    -------
    ndarray of shape (N,), float32, in [0, 1]
        Higher = the label is more likely wrong.
    """
    caller = "error_scores"
    probs = pred_probs_checked(pred_probs, caller)
    n, k = probs.shape
    labels = labels_checked(labels, n, k, caller)
    views = [] if fold_probs is None else [fold_probs] if isinstance(fold_probs, np.ndarray) else list(fold_probs)
    for v, view in enumerate(views):
        views[v] = fold_probs_checked(view, caller)
        if views[v].shape[1:] != probs.shape:
            fail("fold_probs", caller, f"of shape (F, {n}, {k}) to match pred_probs", f"shape {views[v].shape}")
    view_weights = [1.0] * len(views) if view_weights is None else [float(x) for x in view_weights]
    if len(view_weights) != len(views) or any(not np.isfinite(x) or x <= 0 for x in view_weights):
        fail("view_weights", caller, f"{len(views)} numbers > 0 (one per view)", repr(view_weights))
    mean = probs if not views else sum(x * v.mean(axis=0) for v, x in zip(views, view_weights)) / sum(view_weights)
    noise_labels = labels if noise_labels is None else labels_checked(noise_labels, n, k, caller, name="noise_labels")
    return _compute_error_scores(probs, mean, labels, _smoothing_checked(smoothing, caller), noise_labels)


def _compute_error_scores(oof: np.ndarray, probs: np.ndarray, labels: np.ndarray, smoothing: float,
                          noise_labels: np.ndarray) -> np.ndarray:
    present = np.unique(labels)
    if not np.array_equal(np.unique(noise_labels), present):  # review added or emptied a class
        noise_labels = labels
    if present.size < 2:
        posterior = probs
    else:  # cleanlab needs every class present: estimate over the labeled classes
        sub_labels = np.searchsorted(present, labels)
        noise = _compute_noise_matrix(_restricted(oof, present), np.searchsorted(present, noise_labels), smoothing)
        posterior = np.zeros(probs.shape)
        posterior[:, present] = _compute_label_posterior(_restricted(probs, present), sub_labels, noise)
    q = np.mean([get_label_quality_scores(labels, posterior, method=m)
                 for m in ("self_confidence", "normalized_margin")], axis=0)
    return np.clip(1.0 - q, 0.0, 1.0).astype(np.float32)


def _restricted(probs: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Probabilities over the ``present`` classes only, renormalised (uniform where none was left)."""
    sub = probs[:, present]
    mass = sub.sum(axis=1, keepdims=True)
    return np.where(mass > 1e-12, sub / np.maximum(mass, 1e-12), 1.0 / present.size)


def find_candidates(pred_probs: np.ndarray, labels: np.ndarray, error_score: np.ndarray, *,
                    threshold: float = REVIEW_THRESHOLD, recall: float = LIST_RECALL) -> tuple[np.ndarray, int]:
    """The images to review: the n highest error scores, n estimated by confident learning,
    and after them as many rows as 3/4 of the correct labels those n are expected to hold;
    every image whose error score reaches ``threshold``; and the top of the ranking that holds
    ``recall`` of the total error score.

    n is confident learning's estimate of how many labels are wrong: cleanlab
    ``num_label_issues`` (``estimation_method="off_diagonal_calibrated"``: off-diagonal sum
    of the confident joint calibrated to the label counts) on the out-of-sample
    ``pred_probs``, over the classes with MIN_NOISE_CLASS labels (in a small project, with
    MIN_COUNT_CLASS: a class of one image would set its threshold at that image's own
    probability and count every correct image of the others). Not a fixed top-k: the cut
    follows the data's noise. Confident learning undercounts large systematic swaps (a model
    that saw 20% of a class mislabeled is rarely *confident* about them); the noise-corrected
    error score is not fooled by them, so the threshold adds what the count misses. An error
    score of 0.15 is about a one-in-seven chance that the label is wrong when two classes
    compete: on the paper's MNIST swaps the list holds 1.04 x the true errors with recall
    0.998, on our Fashion-MNIST corruption 1.86 x with recall 0.907 (0.10: 2.41 x, 0.944).

    Where label noise is diffuse (crowd labels on photos) the scores spread their doubt over
    many images, few reach the threshold, and count and threshold together hold only 64% of
    the errors (CIFAR-10N majority vote). The error score reads as the chance that a label is
    wrong, so its sum is the number of errors the scores expect, and the top of the ranking
    that carries ``recall`` of that sum is expected to hold that share of them. Measured on
    saved analyses with recall 0.8: CIFAR-10N majority vote 1.95 x the errors, recall 0.820;
    one annotator 1.11 x, 0.780; our Fashion-MNIST corruption 1.92 x, 0.912; the paper's
    MNIST swaps unchanged (1.04 x, 0.998: count and threshold already hold more). It reaches
    at most LIST_REACH (2) times as far as count and threshold: where they find nothing (a
    clean project, a model unsure of every image) a flat ranking would take it far down.
    No image whose error score is under MIN_LISTED_SCORE (0.001) is listed to fill a count.

    Read the same way, the first n rows hold fewer than n errors wherever their scores are
    below 1, and the errors they miss rank right after them: a slip that the fold models
    trained on and half learned (small projects, many epochs), a photo whose doubt is spread
    over two readings. So the list goes on by ``COUNT_EXTENSION`` (0.75) of the correct labels
    the first n rows are expected to hold: CIFAR-10N one annotator 1.11 x -> 1.45 x the
    errors, recall 0.779 -> 0.863; the demo's 1,797 digits 0.86 x -> 1.09 x, recall 0.86 ->
    1.0 (all five slips); the others within 0.01 x.

    Parameters
    ----------
    pred_probs : ndarray of shape (N, K), float
        Out-of-sample softmax outputs.
    labels : ndarray of shape (N,), int in [0, K)
    error_score : ndarray of shape (N,), float
        From :func:`error_scores`; higher = more likely wrong.
    threshold : float, default 0.15
        Error score from which an image is always a candidate.
    recall : float in [0, 1), default 0.8
        Share of the total error score the list holds at least; 0 = count and threshold only.

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
    if not isinstance(threshold, (int, float)) or not np.isfinite(threshold):
        fail("threshold", caller, "a finite number", repr(threshold), TypeError)
    recall = float_checked("recall", recall, caller, low=0.0, high=1.0, high_open=True)
    return _compute_candidates(probs, labels, scores, float(threshold), recall)


def _compute_candidates(probs: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                        threshold: float, recall: float) -> tuple[np.ndarray, int]:
    flagged = np.zeros(len(probs), dtype=bool)
    if np.unique(labels).size < 2:  # nothing to compare a label with
        return flagged, 0
    n = _compute_error_count(probs, labels)
    order = np.argsort(-scores, kind="stable")
    expected = np.cumsum(scores[order], dtype=np.float64)
    # The first n rows are expected to hold expected[n - 1] errors: the list goes on by (a share
    # of) the correct labels they are expected to hold, towards the n errors counted.
    counted = n + int(round(COUNT_EXTENSION * (n - expected[n - 1]))) if n else 0
    listed = max(counted, int((scores >= threshold).sum()))  # count and threshold: a top of the ranking
    holding = int(np.searchsorted(expected, recall * expected[-1])) + 1 if recall > 0 and expected[-1] > 0 else 0
    flagged[order[:max(listed, min(holding, LIST_REACH * listed))]] = True
    return (flagged & (scores >= MIN_LISTED_SCORE)) | (scores >= threshold), n


def estimated_error_count(pred_probs: np.ndarray, labels: np.ndarray) -> int:
    """Confident learning's estimate of how many labels are wrong (the count
    :func:`find_candidates` cuts at), without ranking any image.

    pred_probs : ndarray of shape (N, K), out-of-sample softmax. labels : ndarray of shape (N,),
    int in [0, K). Returns 0 when fewer than two classes have images.
    """
    caller = "estimated_error_count"
    probs = pred_probs_checked(pred_probs, caller)
    return _compute_error_count(probs, labels_checked(labels, len(probs), probs.shape[1], caller))


def _compute_error_count(probs: np.ndarray, labels: np.ndarray) -> int:
    # among the classes with enough labels to set a confidence threshold (see _compute_noise_matrix)
    counts = np.bincount(labels, minlength=probs.shape[1])
    present = np.flatnonzero(counts >= MIN_NOISE_CLASS)
    if present.size < 2:  # a small project: every class with enough labels to set a threshold at all
        present = np.flatnonzero(counts >= MIN_COUNT_CLASS)
    if present.size < 2:
        return 0
    rows = np.isin(labels, present)
    return int(num_label_issues(np.searchsorted(present, labels[rows]), _restricted(probs[rows], present),
                                estimation_method="off_diagonal_calibrated"))
