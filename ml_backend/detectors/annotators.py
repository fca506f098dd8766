"""Who made the labels: per-annotator review statistics, and a consensus label (CROWDLAB) for
the images that two or more annotators labeled.

Symbols: N images, K classes, M annotators (columns of the multi-annotator matrix), A
annotations (one annotator's label of one image). Quality scores here are cleanlab's: in
[0, 1], higher = the label or annotator is more likely right (the opposite direction of
``label_errors``' error scores).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from cleanlab.multiannotator import get_label_quality_multiannotator

from ._checks import array_checked, fail, pred_probs_checked

# Exact probability ties (saturated softmax outputs) send cleanlab's majority vote to
# np.random.choice: irreproducible, and a crash when every multi-annotated image ties. A tiny
# per-class offset settles them, lower class index first, without moving any score visibly.
TIE_BREAK = 1e-12


@dataclass(frozen=True)
class Consensus:
    """CROWDLAB's reading of the images labeled by two or more annotators.

    label : (N,) int64, the consensus class; -1 for images with fewer than two annotations.
    quality : (N,) float64 in [0, 1], how likely the consensus label is right; NaN where label is -1.
    agreement : (N,) float64 in [0, 1], share of the image's annotators who gave the consensus
        label; NaN where label is -1.
    annotator_quality : (M,) float64 in [0, 1], how good each annotator's labels are; NaN for an
        annotator who shares no image with another one (CROWDLAB judges annotators against each
        other), including one who labeled nothing. Few shared images make it noisy.
    notes : tuple of str, cleanlab's warnings about the data, e.g. "Annotators do not agree on
        any example. Check input data."
    """

    label: np.ndarray
    quality: np.ndarray
    agreement: np.ndarray
    annotator_quality: np.ndarray
    notes: tuple[str, ...]


def annotator_table(annotators: np.ndarray, images: np.ndarray, matches_given: np.ndarray,
                    is_candidate: np.ndarray, verdicts: np.ndarray) -> list[dict]:
    """Per annotator: labels made, how many the detector flagged, how many reviewers found wrong.

    Verdicts are about an image's given label, so an annotation is judged through it:

    - it gave the given label: wrong when the verdict is 1, right when 0;
    - it gave another label: wrong when the verdict is 0 (the given label was confirmed); not
      judged when 1: the given label was wrong, but the right class may be a third one;
    - no verdict: not judged.

    An annotation is flagged when it gave the given label and the image is a candidate: the
    flag doubts that label only.

    Parameters
    ----------
    annotators : ndarray of shape (A,), int >= -1
        Who made each annotation (Label Studio ``completed_by``); -1 = unknown, which gets one
        row of its own (annotator -1).
    images : ndarray of shape (A,), int in [0, N)
        The image each annotation labels; pass only the annotations the analysis counts.
    matches_given : ndarray of shape (A,), bool
        Whether the annotation's label is its image's given label (the label analysed and
        reviewed, i.e. before any relabeling).
    is_candidate : ndarray of shape (N,), bool
        From ``label_errors.find_candidates``.
    verdicts : ndarray of shape (N,), int in {-1, 0, 1}
        1 = a reviewer found the given label wrong (relabeled), 0 = right (confirmed),
        -1 = no verdict on the label (none, removed or ambiguous).

    Returns
    -------
    list of dict, one per annotator, JSON-serialisable
        ``annotator``, ``labels``, ``flagged``, ``share_flagged``, ``judged``, ``wrong`` and
        ``share_wrong`` (``wrong / judged``, None when nothing was judged), so a report can
        show "12 of 40". Sorted by ``share_wrong`` (highest first, None last), then by
        ``labels`` (most first), then by annotator id.
    """
    caller = "annotator_table"
    annotators = _ints_checked("annotators", annotators, None, caller, low=-1)
    a = len(annotators)
    images = _ints_checked("images", images, a, caller, low=0)
    matches_given = _mask_checked("matches_given", matches_given, a, caller)
    is_candidate = _mask_checked("is_candidate", is_candidate, None, caller)
    n = len(is_candidate)
    verdicts = _ints_checked("verdicts", verdicts, n, caller, low=-1, high=1)
    if a and images.max() >= n:
        fail("images", caller, f"image indices in [0, {n - 1}] (is_candidate has N = {n})", f"max {images.max()}")
    verdict = verdicts[images]
    wrong = np.where(matches_given, verdict == 1, verdict == 0)
    judged = (verdict == 0) | (matches_given & (verdict == 1))
    flagged = matches_given & is_candidate[images]
    ids, row = np.unique(annotators, return_inverse=True)
    made = np.bincount(row, minlength=len(ids))
    counts = [np.bincount(row, weights=x, minlength=len(ids)).astype(int) for x in (flagged, judged, wrong)]
    table = [{"annotator": int(i), "labels": int(m), "flagged": int(f), "share_flagged": float(f / m),
              "judged": int(j), "wrong": int(w), "share_wrong": float(w / j) if j else None}
             for i, m, f, j, w in zip(ids, made, *counts)]
    return sorted(table, key=lambda r: (r["share_wrong"] is None, -(r["share_wrong"] or 0.0), -r["labels"],
                                        r["annotator"]))


def consensus_labels(labels_multiannotator: np.ndarray, pred_probs: np.ndarray) -> Consensus:
    """CROWDLAB consensus of the images labeled by two or more annotators, and each annotator's quality.

    Wraps ``cleanlab.multiannotator.get_label_quality_multiannotator`` (consensus by best
    quality, quality by CROWDLAB: the annotators' labels weighted by how reliable each one is,
    blended with the model's probabilities). Images with one annotation take part (they tell
    how an annotator's labels fit the model) but get no consensus; images and annotators
    without any label are left out, so cleanlab's preconditions always hold. Without any image
    labeled twice there is nothing to reconcile: every label is -1 and every quality NaN.
    cleanlab's prints are off; its warnings come back in ``notes``.

    Parameters
    ----------
    labels_multiannotator : ndarray of shape (N, M), float
        ``[n, m]`` = the class annotator m gave image n, NaN where m did not label n.
    pred_probs : ndarray of shape (N, K), float
        Out-of-sample softmax outputs; K sets the classes (some may never be annotated).

    Returns
    -------
    Consensus
    """
    caller = "consensus_labels"
    probs = pred_probs_checked(pred_probs, caller)
    matrix = _annotations_checked(labels_multiannotator, probs.shape, caller)
    n, m = matrix.shape
    given = ~np.isnan(matrix)
    counts = given.sum(axis=1)
    label = np.full(n, -1, dtype=np.int64)
    quality, agreement, annotator_quality = np.full(n, np.nan), np.full(n, np.nan), np.full(m, np.nan)
    if not (counts >= 2).any():
        return Consensus(label, quality, agreement, annotator_quality, ())
    rows, cols, multi = counts >= 1, given.any(axis=0), counts >= 2
    tie_broken = probs[rows] + TIE_BREAK * np.arange(probs.shape[1], 0, -1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = get_label_quality_multiannotator(matrix[rows][:, cols], tie_broken, verbose=False,
                                                  return_detailed_quality=False)
    table, keep = result["label_quality"], multi[rows]
    label[multi] = table["consensus_label"].to_numpy()[keep]
    quality[multi] = table["consensus_quality_score"].to_numpy()[keep]
    agreement[multi] = table["annotator_agreement"].to_numpy()[keep]
    annotator_quality[cols] = result["annotator_stats"]["annotator_quality"].sort_index().to_numpy()
    notes = tuple(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)))
    return Consensus(label, quality, agreement, annotator_quality, notes)


def disagreement_order(labels_multiannotator: np.ndarray, quality: np.ndarray, agreement: np.ndarray) -> np.ndarray:
    """The images whose annotators gave two or more different labels, most doubtful first.

    Ordered by consensus quality, lowest first: CROWDLAB's quality already weighs how many
    annotators agree, how reliable each is and what the model says, so a 2-to-1 split against
    the reliable annotators and the model ranks above one that they back. Agreement alone is
    coarse (1/2, 2/3, ...); it breaks ties (lower first), then the image index. Images whose
    annotators all agree are left out even when the model doubts them: that is a label-error
    question, not a disagreement.

    Parameters
    ----------
    labels_multiannotator : ndarray of shape (N, M), float
        As for :func:`consensus_labels`.
    quality, agreement : ndarray of shape (N,), float
        ``Consensus.quality`` and ``Consensus.agreement``; NaN allowed where fewer than two
        annotators labeled the image.

    Returns
    -------
    ndarray of shape (D,), int64
        Image indices, D = the number of images with two or more different labels.
    """
    caller = "disagreement_order"
    matrix = _annotations_checked(labels_multiannotator, None, caller)
    given = ~np.isnan(matrix)
    lowest = np.where(given, matrix, np.inf).min(axis=1)
    disagreed = np.flatnonzero(np.where(given, matrix, -np.inf).max(axis=1) > lowest)
    scores = []
    for name, values in (("quality", quality), ("agreement", agreement)):
        values = array_checked(values, name, caller, ndim=1, shape="(N,)", finite=False)
        if values.shape != (len(matrix),):
            fail(name, caller, f"of shape ({len(matrix)},), one per image", f"shape {values.shape}")
        missing = disagreed[~np.isfinite(values[disagreed])]
        if missing.size:
            fail(name, caller, "finite where annotators disagree (Consensus from the same labels_multiannotator)",
                 f"{values[missing[0]]} at image {missing[0]}")
        scores.append(values[disagreed])
    return disagreed[np.lexsort((disagreed, scores[1], scores[0]))].astype(np.int64)


def _annotations_checked(value, probs_shape: tuple[int, int] | None, caller: str) -> np.ndarray:
    """(N, M) float64: class indices (in [0, K) when ``probs_shape`` is given) or NaN."""
    name = "labels_multiannotator"
    matrix = array_checked(value, name, caller, ndim=2, shape="(N, M)", finite=False).astype(np.float64)
    if matrix.shape[1] < 1 or (probs_shape is not None and len(matrix) != probs_shape[0]):
        fail(name, caller, "of shape (N, M), one row per image (as in pred_probs) and one column per annotator",
             f"shape {matrix.shape}")
    values = matrix[~np.isnan(matrix)]
    high = np.inf if probs_shape is None else probs_shape[1]
    bad = values[(values != np.floor(values)) | (values < 0) | (values >= high)]
    if bad.size:
        fail(name, caller, f"class indices in [0, {'K' if probs_shape is None else high}) or NaN (not labeled)",
             f"value {bad[0]}")
    return matrix


def _ints_checked(name: str, values, n: int | None, caller: str, *, low: int, high: int | None = None) -> np.ndarray:
    """(n,) int64 in [low, high]; any length when ``n`` is None."""
    arr = np.asarray(values)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        fail(name, caller, "an integer array", f"dtype {arr.dtype}", TypeError)
    if arr.ndim != 1 or (n is not None and len(arr) != n):
        fail(name, caller, f"1-D of length {'A' if n is None else n}", f"shape {arr.shape}")
    if arr.size and (arr.min() < low or (high is not None and arr.max() > high)):
        fail(name, caller, f"values in [{low}, {'inf' if high is None else high}]", f"values {arr.min()}..{arr.max()}")
    return arr.astype(np.int64, copy=False)


def _mask_checked(name: str, values, n: int | None, caller: str) -> np.ndarray:
    """(n,) bool; any length when ``n`` is None."""
    mask = np.asarray(values)
    if mask.dtype != bool:
        fail(name, caller, "a boolean mask", f"dtype {mask.dtype}", TypeError)
    if mask.ndim != 1 or (n is not None and len(mask) != n):
        fail(name, caller, f"1-D of length {'N' if n is None else n}", f"shape {mask.shape}")
    return mask
