"""Error scores rank planted label errors first; candidates follow the estimated noise."""

import numpy as np
import pytest

from ml_backend.detectors.label_errors import consensus, error_scores, find_candidates, knn_disagreement


def blobs(seed=0, n=600, k=3, flip=0.05):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    centers = rng.normal(0, 6, (k, 8))
    x = centers[truth] + rng.normal(0, 1, (n, 8))
    labels = truth.copy()
    flipped = rng.choice(n, int(flip * n), replace=False)
    labels[flipped] = (truth[flipped] + 1) % k
    logits = -((x[:, None, :] - centers[None]) ** 2).sum(-1) / 8
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    return x, probs, labels, np.isin(np.arange(n), flipped)


def average_precision(scores, truth):
    hits = truth[np.argsort(-scores, kind="stable")]
    return (np.cumsum(hits) / np.arange(1, len(hits) + 1))[hits].mean()


def test_flipped_labels_rank_first_and_candidates_match_the_noise_rate():
    x, probs, labels, flipped = blobs()
    fold_of = np.arange(len(labels)) % 3
    emb = np.broadcast_to(x.astype(np.float32), (3, *x.shape))
    knn = knn_disagreement(emb, labels, fold_of, k=10)
    agree = consensus(np.stack([probs] * 3), labels)
    scores = error_scores(probs, labels, fold_probs=np.stack([probs] * 3), knn_disagreement=knn, consensus=agree)
    assert scores.min() >= 0 and scores.max() <= 1
    assert average_precision(scores, flipped) > 0.9
    flagged, n = find_candidates(probs, labels, scores, consensus=agree)
    assert flagged.sum() == n and abs(n - flipped.sum()) <= 0.5 * flipped.sum()
    assert (flagged & flipped).sum() >= 0.8 * flipped.sum()


def test_knn_disagreement_is_high_for_a_planted_outlier():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 1, (50, 4)), rng.normal(10, 1, (50, 4))]).astype(np.float32)
    labels = np.array([0] * 50 + [1] * 50)
    labels[3] = 1  # sits among the zeros
    values = knn_disagreement(np.stack([x, x]), labels, np.arange(100) % 2, k=5)
    assert values[3] == 1.0 and np.median(values) == 0.0


def test_consensus_counts_fold_models_against_the_label():
    fold_probs = np.array([[[0.9, 0.1], [0.2, 0.8]], [[0.3, 0.7], [0.4, 0.6]]])
    np.testing.assert_allclose(consensus(fold_probs, np.array([0, 0])), [0.5, 1.0])


def test_single_class_yields_no_candidates_and_bad_weights_are_refused():
    probs = np.array([[0.9, 0.1], [0.8, 0.2]])
    assert find_candidates(probs, np.array([0, 0]), np.array([0.1, 0.2]))[1] == 0
    with pytest.raises(ValueError, match="weights"):
        error_scores(probs, np.array([0, 0]), weights=(0, 1, 1))


def test_unanimous_fold_models_flag_what_confident_learning_undercounts():
    probs = np.array([[0.9, 0.1]] * 8 + [[0.3, 0.7]] * 2 + [[0.2, 0.8]] * 8)
    labels = np.array([0] * 10 + [1] * 8)
    scores = error_scores(probs, labels)
    unanimous = np.array([0.0] * 8 + [1.0, 1.0] + [0.0] * 8)
    flagged, _ = find_candidates(probs, labels, scores, consensus=unanimous)
    assert flagged[8] and flagged[9]


def test_images_of_a_class_interpretation_cell_are_all_candidates():
    probs = np.array([[0.9, 0.1]] * 8 + [[0.45, 0.55]] * 3 + [[0.2, 0.8]] * 8)
    labels = np.array([0] * 11 + [1] * 8)
    scores = error_scores(probs, labels)
    systematic = np.zeros(len(labels), bool)
    systematic[8:11] = True  # the cell "0 -> model 1", flagged by the overview's test
    without, _ = find_candidates(probs, labels, scores)
    flagged, n = find_candidates(probs, labels, scores, systematic=systematic)
    assert not without[8:11].all() and flagged[8:11].all()
    assert (flagged & ~systematic).sum() == n  # the confident-learning cut itself is unchanged
    with pytest.raises(TypeError, match="systematic"):
        find_candidates(probs, labels, scores, systematic=systematic.astype(int))


def test_error_score_ranks_correctly_classified_images_too():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 0, 0])
    scores = error_scores(probs, labels)
    assert scores[0] < scores[1] < scores[2]  # eq. 1 gives 0.5 to both correct images


def test_error_score_formula_by_hand():
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    labels = np.array([0, 0])
    knn, votes = np.array([0.0, 0.5]), np.array([0.25, 1.0])
    # normalized margin (p_label - max other + 1) / 2: 0.9 and 0.2 -> 1 - q = 0.1 and 0.8
    expected = [(0.8 * 0.1 + 0.1 * 0.0 + 0.1 * 0.25), (0.8 * 0.8 + 0.1 * 0.5 + 0.1 * 1.0)]
    margin = {"quality": "normalized_margin"}
    np.testing.assert_allclose(error_scores(probs, labels, knn_disagreement=knn, consensus=votes, **margin), expected,
                               rtol=1e-6)
    np.testing.assert_allclose(error_scores(probs, labels, **margin), [0.1, 0.8], rtol=1e-6)  # missing terms drop out
    # self-confidence p_label: 0.9 and 0.2 -> 0.1 and 0.8 here too; 'both' is the mean of the two
    probs3 = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]])
    sc, mg = 1 - np.array([0.6, 0.2]), 1 - (np.array([0.6 - 0.3, 0.2 - 0.5]) + 1) / 2
    np.testing.assert_allclose(error_scores(probs3, labels, quality="self_confidence"), sc, rtol=1e-6)
    np.testing.assert_allclose(error_scores(probs3, labels), (sc + mg) / 2, rtol=1e-6)


def test_views_are_averaged_with_their_weights_before_label_quality():
    labels = np.array([0, 1])
    strong = np.array([[[0.9, 0.1], [0.3, 0.7]]])  # (F=1, N, K)
    weak = np.array([[[0.5, 0.5], [0.5, 0.5]]])
    mixed = (2 * strong[0] + weak[0]) / 3
    np.testing.assert_allclose(
        error_scores(mixed, labels, fold_probs=[strong, weak], view_weights=[2, 1], weights=(1, 0, 0)),
        error_scores(mixed, labels, weights=(1, 0, 0)), rtol=1e-6)
    with pytest.raises(ValueError, match="view_weights"):
        error_scores(mixed, labels, fold_probs=[strong, weak], view_weights=[1])


def test_candidates_follow_the_estimated_noise_without_consensus():
    x, probs, labels, flipped = blobs(seed=2, n=900, flip=0.08)
    scores = error_scores(probs, labels)
    flagged, n = find_candidates(probs, labels, scores)
    assert flagged.sum() == n and abs(n - flipped.sum()) <= 0.3 * flipped.sum()
    assert (flagged & flipped).sum() >= 0.8 * flipped.sum()


def test_knn_disagreement_uses_each_images_own_fold_space():
    # fold 0's model separates the classes, fold 1's model mixes them
    labels = np.array([0] * 20 + [1] * 20)
    good = np.concatenate([np.zeros((20, 2)), np.full((20, 2), 10.0)]) + np.arange(40)[:, None] * 1e-3
    mixed = np.random.default_rng(0).normal(size=(40, 2))  # no class structure at all
    emb = np.stack([good, mixed]).astype(np.float32)
    fold_of = np.array([0] * 10 + [1] * 10 + [0] * 10 + [1] * 10)
    values = knn_disagreement(emb, labels, fold_of, k=5)
    assert values[fold_of == 0].max() == 0.0 and values[fold_of == 1].mean() > 0.3


def test_label_error_inputs_are_checked_with_helpful_messages():
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    with pytest.raises(ValueError, match="fold_of.*\\[0, 1\\]"):
        knn_disagreement(np.zeros((2, 2, 3)), np.array([0, 1]), np.array([0, 2]))
    with pytest.raises(ValueError, match="embeddings.*3-D"):
        knn_disagreement(np.zeros((2, 3)), np.array([0, 1]), np.array([0, 1]))
    with pytest.raises(ValueError, match="fold_probs.*\\(F, 2, 2\\)"):
        error_scores(probs, np.array([0, 1]), fold_probs=np.stack([probs[:1]] * 3))
    with pytest.raises(ValueError, match="knn_disagreement.*\\[0.0, 1.0\\]"):
        error_scores(probs, np.array([0, 1]), knn_disagreement=np.array([0.0, 2.0]))
    with pytest.raises(ValueError, match="error_score.*finite"):
        find_candidates(probs, np.array([0, 1]), np.array([np.nan, 0.0]))
    with pytest.raises(ValueError, match="fold_probs.*summing to 1"):
        consensus(np.ones((2, 2, 2)), np.array([0, 1]))
    with pytest.raises(TypeError, match="k"):
        knn_disagreement(np.zeros((1, 2, 3)), np.array([0, 1]), np.array([0, 0]), k=2.5)
