"""One analysis run: dataset -> cross-fitted model outputs -> detectors -> Analysis.

Every stage reports ``progress(stage, done, total)``; the CLI turns that into a progress
bar, the service into job status. Stage timings go into ``Analysis.summary``.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import datetime, timezone
from functools import partial

import cleanlab
import numpy as np
import torch
from threadpoolctl import threadpool_limits

from . import __version__
from .analysis import Analysis
from .config import Settings
from .dataset import ImageDataset
from .detectors.duplicates import find_duplicates, similar_images
from .detectors.label_errors import (consensus, error_scores, estimated_error_count, find_candidates,
                                      knn_disagreement, knn_neighbours, neighbour_votes, vote_neighbours)
from .detectors.maps import cell_map, saliency_features
from .detectors.overview import mismatch_score, overview_cells, representatives
from .detectors.verifier import cells_of, enough_verdicts, reordered_within, verified_scores, verifier_evidence
from .model import ModelSet, choose_views, cross_fit
from .model.ensemble import is_pretrained, view_weight
from .model.fit import PRETRAINED_PAIR, CrossFitResult, auto_epochs, training_size
from .reviews import ReviewOutcome
from .vocabulary import VERSION_PREFIX, Progress

log = logging.getLogger(__name__)

SIMILAR_PER_IMAGE = 5
MAPS_BATCH = 256  # misclassified images whose saliency is computed and reduced together
VOTE_WEIGHT = 1.0  # each pretrained space's neighbour votes (label_errors.neighbour_votes) in the score
# A lone small CNN (grey images) gets the pretrained views (Lite0 and Lite2 at 64 px) when it
# misclassifies this share of the images beyond the labels confident learning counts as wrong:
# Fashion-MNIST corruption 5.4% (AP 0.535 -> 0.610 with Lite0, 0.629 with both), the paper's MNIST
# swaps 1.6% (the CNN alone is 99% right).
CONFUSION_FOR_PRETRAINED = 0.03
PRETRAINED_KNN_DIMS = 64  # wide pretrained features keep their classes in more PCA dimensions than a CNN's
PIXEL_KNN_SIDE = 32  # pixels per side kept for that search (memory: N x 32 x 32 x C floats)
PIXEL_KNN_DIMS = 64  # MNIST / Fashion swaps: AP 0.959 / 0.543 at 16, 0.960 / 0.548 at 64
ANALYSIS_PARAMS = ("folds", "epochs", "seed", "backbone", "device", "batch_size", "ssim_threshold", "knn_k",
                   "list_recall", "confirmed_weight", "backbone_weights", "verifier")


def new_model_version(prefix: str = VERSION_PREFIX) -> str:
    """A sortable, unique-enough version tag: every published object carries it."""
    return f"{prefix}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"


def _quiet(stage: str, done: int, total: int) -> None:
    pass


def run_analysis(
    dataset: ImageDataset,
    settings: Settings,
    *,
    model_version: str | None = None,
    progress: Progress | None = None,
    reviews: ReviewOutcome | None = None,
) -> tuple[Analysis, ModelSet]:
    """Analyse ``dataset`` end to end; returns the artefact and the fitted fold models of every view.
    ``reviews`` (from ``reviews.apply_reviews``): reviewed images are scored like any other but
    are never candidates, and their verdicts re-rank the rest through the verifier."""
    progress = progress or _quiet
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = round(now - clock, 3)
        clock = now

    n = len(dataset)
    labels = dataset.labels
    fits, ensembles = _cross_fit_views(dataset, settings, progress)
    lap("train")

    reviewed = np.zeros(n, dtype=bool) if reviews is None else np.asarray(reviews.reviewed, dtype=bool)
    if reviewed.shape != (n,):
        raise ValueError(f"reviews must describe the {n} images of the data set; got {reviewed.shape[0]}")
    # Searched once: the verifier scores the labels before review on the same neighbours.
    space, space_dims = _neighbour_space(dataset, fits)
    knn_index = knn_neighbours(space, fits[0].fold_of, k=settings.knn_k, dims=space_dims)
    copies = np.asarray(dataset.pixel_hashes)
    vote_index = [vote_neighbours(f.embeddings[0], k=settings.knn_k, groups=copies)
                  for f in fits if is_pretrained(f.backbone)]
    given = None if reviews is None else np.asarray(reviews.given_labels, dtype=np.int64)
    probs, scores, agreement, knn = _combine_views(fits, labels, knn_index, vote_index, given)
    evidence = _view_doubts(fits, labels, given)
    verifier_weight = 0.0
    if reviews is not None and settings.verifier:
        model_scores = scores
        scores, verifier_weight = _verify(fits, probs, scores, reviews, settings.seed, knn_index, vote_index)
        if verifier_weight > 0:
            evidence["doubt_without_verifier"] = model_scores.astype(np.float32)
    predicted = probs.argmax(axis=1).astype(np.int64)
    mismatch = mismatch_score(probs, labels)
    models = ModelSet(ensembles)
    lap("label_errors")

    # Duplicates need one embedding space for the whole set: the first view's fold 0 serves.
    shared_space = fits[0].embeddings[0]
    progress("duplicates", 0, 1)
    pairs, duplicate_group = find_duplicates(
        dataset.images, dataset.pixel_hashes, shared_space, dataset.splits, ssim_threshold=settings.ssim_threshold)
    neighbors = similar_images(shared_space, s=min(SIMILAR_PER_IMAGE, n - 1))
    progress("duplicates", 1, 1)
    lap("duplicates")

    cells = overview_cells(probs, labels, mismatch=mismatch, duplicate_group=duplicate_group, error_score=scores)
    is_candidate, n_estimated = find_candidates(probs, labels, scores, recall=settings.list_recall)
    is_candidate &= ~reviewed
    map_xy = _inspection_maps(dataset, models, predicted, fits[0].fold_of, cells, settings.seed, progress)
    lap("maps")

    summary = _summary(dataset, labels, predicted, is_candidate, n_estimated, pairs, cells, timings, fits)
    analysis = Analysis(
        model_version=model_version or new_model_version(),
        items=list(dataset.items), class_names=list(dataset.class_names), task_ids=dataset.task_ids,
        splits=dataset.splits, labels=labels, pred_probs=probs.astype(np.float32), predicted=predicted,
        mismatch=mismatch.astype(np.float32), error_score=scores.astype(np.float32), is_candidate=is_candidate,
        knn_disagreement=knn.astype(np.float32), consensus=agreement.astype(np.float32),
        duplicate_group=duplicate_group, neighbors=neighbors, map_xy=map_xy,
        representatives=representatives(probs, labels), thumbs=dataset.thumbnails(), cells=cells,
        duplicates=pairs, summary={**summary, "reviewed": int(reviewed.sum()),
                                   "verifier_weight": round(verifier_weight, 4)},
        evidence=evidence, reviewed=reviewed, aspects=dataset.aspects,
        params={**{k: v for k, v in asdict(settings).items() if k in ANALYSIS_PARAMS},
                "backbone_used": "+".join(f.backbone for f in fits), "epochs_used": [f.epochs for f in fits]})
    return analysis, models


def rerank(analysis: Analysis, verdicts: np.ndarray, *, seed: int = 0) -> tuple[np.ndarray, float]:
    """``analysis``' error scores re-ranked by what reviewers decided about its labels, without
    retraining: the verifier (``detectors.verifier``) learns from the stored evidence of the
    reviewed images and scores the rest. ``verdicts`` (N,) int: 1 = the reviewer found the
    analysed label wrong, 0 = right, -1 = no verdict on it. Returns (scores (N,) float32 in [0, 1],
    verifier weight; 0 and the stored scores when the verdicts do not validate it)."""
    evidence = verifier_evidence(analysis.pred_probs, analysis.labels, analysis.error_score,
                                 analysis.knn_disagreement, analysis.consensus)
    return verified_scores(evidence, analysis.error_score, verdicts, cells_of(analysis.labels, analysis.pred_probs),
                           seed=seed)


def _cross_fit_views(dataset: ImageDataset, settings: Settings, progress: Progress):
    """One cross-fit per view (:func:`choose_views`), all on the same folds, and the fold models.

    With ``auto`` a lone small CNN (grey images) takes a first look (with automatic epochs a third
    of its training images, ``fit.FIRST_LOOK_SAMPLES``): if it already tells the classes apart
    (confusion beyond the label noise at most CONFUSION_FOR_PRETRAINED), that is the analysis'
    view; otherwise the data is hard, and the pretrained views join the CNN, which first trains
    its full epochs where the first look had fewer. The paper's MNIST swaps: one epoch instead of
    three (AP 0.9908 against 0.9920); Fashion-MNIST is trained as before, after a one-epoch look.
    """
    views = choose_views(dataset.images.shape[1:], settings.backbone)
    fit_view = partial(
        cross_fit, dataset.images, dataset.labels, dataset.num_classes, folds=settings.folds, epochs=settings.epochs,
        seed=settings.seed, device=settings.device, batch_size=settings.batch_size, weights=dataset.weights,
        progress=progress, class_names=list(dataset.class_names), backbone_weights=settings.backbone_weights,
        groups=np.asarray(dataset.pixel_hashes))
    fits, ensembles = [], []
    if settings.backbone == "auto" and views == ["small_cnn"]:
        fit, ensemble = fit_view(backbone="small_cnn", first_look=not settings.epochs)
        if _confusion_beyond_noise(fit, dataset.labels) <= CONFUSION_FOR_PRETRAINED:
            return [fit], [ensemble]
        views = list(PRETRAINED_PAIR)
        if not settings.epochs and fit.epochs < auto_epochs("small_cnn", training_size(fit.fold_of)):
            log.info("the small CNN confuses classes beyond the label noise after %d epoch(s): it trains its "
                     "full epochs, and the pretrained views join it", fit.epochs)
            views.insert(0, "small_cnn")
        else:
            fits, ensembles = [fit], [ensemble]
    for backbone in views:
        fit, ensemble = fit_view(backbone=backbone)
        fits.append(fit)
        ensembles.append(ensemble)
    return fits, ensembles


def _confusion_beyond_noise(fit: CrossFitResult, labels: np.ndarray) -> float:
    """Share of images the view classifies against their label minus the share confident
    learning counts as wrong labels: confusion the view itself cannot resolve."""
    estimated = estimated_error_count(fit.pred_probs, labels)
    misclassified = float((fit.pred_probs.argmax(axis=1) != labels).mean())
    log.info("%s: %.1f%% misclassified, %.1f%% estimated wrong labels", fit.backbone, 100 * misclassified,
             100 * estimated / len(labels))
    return misclassified - estimated / len(labels)


def _neighbour_space(dataset: ImageDataset, fits: list[CrossFitResult]) -> tuple[np.ndarray, int]:
    """The (F, N, D) space kNN label disagreement searches, and its PCA dimensions: the
    pretrained features when a view has them (the latent-space idea works best there), else the
    pixels themselves. A CNN trained on the noisy labels places images by those labels, so its
    embedding echoes the model; pixels do not (kNN in 64 PCA dimensions of the pixels instead
    of the held-out CNN embedding: paper's MNIST swaps AP 0.9525 -> 0.960, Fashion 0.535 -> 0.548)."""
    pretrained = next((f for f in fits if is_pretrained(f.backbone)), None)
    if pretrained is not None:
        return pretrained.embeddings, PRETRAINED_KNN_DIMS
    step = -(-max(dataset.images.shape[1:3]) // PIXEL_KNN_SIDE)  # large images: every step-th pixel
    pixels = dataset.images[:, ::step, ::step].reshape(len(dataset), -1).astype(np.float32) / 255.0
    return np.broadcast_to(pixels, (len(fits[0].embeddings),) + pixels.shape), PIXEL_KNN_DIMS


def _combine_views(fits: list[CrossFitResult], labels: np.ndarray, knn_index: np.ndarray,
                   vote_index: list[np.ndarray], given: np.ndarray | None = None):
    """The views' evidence on ``labels`` combined: out-of-sample probabilities (N, K), error
    scores (with the neighbour votes over ``vote_index``, one per pretrained view), consensus
    and kNN disagreement over ``knn_index`` (neighbours in :func:`_neighbour_space`).
    ``given``: the labels before review, which tell how the annotators err (``error_scores``)."""
    view_weights = [view_weight(f.backbone) for f in fits]
    probs = sum(w * f.pred_probs for w, f in zip(view_weights, fits)) / sum(view_weights)
    knn = knn_disagreement(knn_index, labels)
    agreement = consensus(np.concatenate([f.fold_probs for f in fits]), labels)
    # The neighbours' labels in each pretrained space are one more view of the score (not of
    # ``probs``: the model class stays the classifiers').
    votes = [neighbour_votes(index, labels, probs.shape[1])[None] for index in vote_index]
    scores = error_scores(probs, labels, fold_probs=[f.fold_probs for f in fits] + votes,
                          view_weights=view_weights + [VOTE_WEIGHT] * len(votes), noise_labels=given)
    return probs, scores, agreement, knn


def _view_doubts(fits: list[CrossFitResult], labels: np.ndarray, given: np.ndarray | None) -> dict[str, np.ndarray]:
    """Each view's error score alone (``doubt_<backbone>`` columns of scores.csv)."""
    return {f"doubt_{f.backbone}": error_scores(f.pred_probs, labels, fold_probs=f.fold_probs, noise_labels=given)
            for f in fits}


def _verify(fits: list[CrossFitResult], probs: np.ndarray, scores: np.ndarray, reviews: ReviewOutcome,
            seed: int, knn_index: np.ndarray, vote_index: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """Error scores re-ranked by the verifier learned from the verdicts (``detectors.verifier``),
    and its weight. Its evidence is computed for each image's label *before* review, as the
    reviewer saw it: a relabeled image teaches what a wrong label looks like."""
    if not enough_verdicts(reviews.verdicts):  # skip the given-label evidence: it could not be used
        return scores, 0.0
    given = np.asarray(reviews.given_labels, dtype=np.int64)
    _, given_scores, given_agreement, given_knn = _combine_views(fits, given, knn_index, vote_index)
    features = verifier_evidence(probs, given, given_scores, given_knn, given_agreement)
    blended, weight = verified_scores(features, given_scores, reviews.verdicts, cells_of(given, probs), seed=seed)
    log.info("verifier: %d verdicts, weight %.2f", int((reviews.verdicts >= 0).sum()), weight)
    if weight == 0:
        return scores, 0.0
    # Reviewed images keep the score of the label they have now (they are never candidates); the
    # others keep their own scores in the verifier's order. Handing them all of blended's values
    # gave them the high scores of the reviewed images: Fashion-MNIST round 2, the list of 1,602
    # unreviewed images grew to 2,242 for the same 373 errors left.
    return reordered_within(scores, blended, ~reviews.reviewed), weight


def _inspection_maps(dataset, ensemble, predicted, fold_of, cells, seed, progress) -> np.ndarray:
    """Per-cell 2-D maps of guided-backprop saliency (the paper's in-detail view); NaN off the cells."""
    map_xy = np.full((len(dataset), 2), np.nan, dtype=np.float32)
    off_diagonal = np.flatnonzero(dataset.labels != predicted)
    if off_diagonal.size == 0:
        return map_xy
    features = np.empty((len(dataset),), dtype=object)
    for start in range(0, off_diagonal.size, MAPS_BATCH):
        batch = off_diagonal[start:start + MAPS_BATCH]
        saliency = ensemble.saliency(dataset.images[batch], predicted[batch], folds=fold_of[batch])
        for i, row in zip(batch, saliency_features(saliency)):
            features[i] = row
        progress("saliency", min(start + MAPS_BATCH, off_diagonal.size), off_diagonal.size)
    members = [np.flatnonzero((dataset.labels == c["label"]) & (predicted == c["predicted"])) for c in cells]
    # Cells are independent t-SNE runs of one thread each: one per core at once. BLAS stays on one
    # thread throughout (a limit set and restored per thread would race).
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        maps = pool.map(lambda rows: cell_map(np.stack(features[rows]), seed=seed), members)
        for done, (rows, xy) in enumerate(zip(members, maps), 1):
            map_xy[rows] = xy
            progress("maps", done, len(cells))
    return map_xy


def _summary(dataset, labels, predicted, is_candidate, n_estimated, pairs, cells, timings, fits) -> dict:
    agrees = predicted == labels
    trusted = ~is_candidate
    return {
        "images": len(dataset),
        "classes": dataset.num_classes,
        "train_images": int((dataset.splits == "train").sum()),
        "val_images": int((dataset.splits == "val").sum()),
        "candidates": int(is_candidate.sum()),
        "estimated_label_errors": int(n_estimated),
        "estimated_error_rate": round(n_estimated / len(dataset), 6),
        # Out-of-sample agreement with the given labels, and on the images not flagged as likely errors.
        "label_agreement": round(float(agrees.mean()), 6),
        "model_accuracy_estimate": round(float(agrees[trusted].mean()) if trusted.any() else 0.0, 6),
        "misclassified": int((~agrees).sum()),
        "cells": len(cells),
        "interpretation_error_cells": sum(1 for c in cells if c["interpretation_error"]),
        "duplicate_pairs": len(pairs),
        "exact_duplicates": sum(1 for p in pairs if p["kind"] == "exact"),
        "near_duplicates": sum(1 for p in pairs if p["kind"] == "near"),
        "leakage_pairs": sum(1 for p in pairs if p["cross_split"]),
        "skipped": [{"item": s.item, "reason": s.reason} for s in dataset.skipped],
        "timings_s": timings,
        "versions": {
            "deconfusion": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "torch": torch.__version__, "cleanlab": cleanlab.__version__,
        },
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "backbone": "+".join(f.backbone for f in fits),
    }
