"""Error scores rank planted label errors first; candidates follow the estimated noise."""

import numpy as np
import pytest

from cleanlab.rank import get_label_quality_scores

from ml_backend.detectors.label_errors import (COUNT_EXTENSION, LIST_REACH, REVIEW_THRESHOLD, consensus, error_scores,
                                               estimated_error_count, find_candidates, knn_disagreement,
                                               knn_neighbours, label_posterior, neighbour_votes, noise_matrix,
                                               vote_neighbours)


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
    scores = error_scores(probs, labels, fold_probs=np.stack([probs] * 3))
    assert scores.min() >= 0 and scores.max() <= 1
    assert average_precision(scores, flipped) > 0.9
    flagged, n = find_candidates(probs, labels, scores)
    assert abs(n - flipped.sum()) <= 0.5 * flipped.sum() and n <= flagged.sum() <= 2 * flipped.sum()
    assert (flagged & flipped).sum() >= 0.8 * flipped.sum()


def planted_one_way_swap(seed=0, n=3000, share=0.25):
    """Classes 0 and 1 overlap, class 2 stands apart; a labeler calls a quarter of the 1s '0'.
    The probabilities are what a model trained on those labels learns (the noisy posterior)."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 3, n)
    x = np.array([0.0, 2.0, 8.0])[truth] + rng.normal(0, 1, n)
    clean = np.exp(-0.5 * (x[:, None] - np.array([0.0, 2.0, 8.0])) ** 2)
    clean /= clean.sum(1, keepdims=True)
    labels = truth.copy()
    swapped = (truth == 1) & (rng.random(n) < share)
    labels[swapped] = 0
    noisy = clean.copy()
    noisy[:, 0] += share * clean[:, 1]
    noisy[:, 1] *= 1 - share
    return noisy, labels, swapped


def test_a_one_way_swap_doubts_the_swapped_labels_and_trusts_the_reverse_direction():
    probs, labels, swapped = planted_one_way_swap()
    scores = error_scores(probs, labels)
    plain = 1 - np.mean([get_label_quality_scores(labels, probs, method=m)
                         for m in ("self_confidence", "normalized_margin")], axis=0)
    assert average_precision(scores, swapped) > average_precision(plain, swapped) + 0.05
    # correct 1s the model leans away from (labeled 1, model says 0): nobody mislabels a 0 as 1
    reverse = (labels == 1) & (probs.argmax(1) == 0)
    assert reverse.sum() >= 20 and np.median(scores[reverse]) < np.median(plain[reverse]) - 0.2
    noise = noise_matrix(probs, labels)
    np.testing.assert_allclose(noise.sum(axis=0), 1.0, rtol=1e-9)
    assert noise[0, 1] > 2 * noise[1, 0]  # 1s become 0s far more often than the other way round


def test_after_review_the_annotators_labels_still_tell_how_the_unreviewed_ones_go_wrong():
    first_probs, given, swapped = planted_one_way_swap()
    reviewed = np.zeros(len(given), bool)
    reviewed[np.argsort(-error_scores(first_probs, given))[:swapped.sum()]] = True  # the top of the list
    now = np.where(reviewed & swapped, 1, given)  # reviewers fixed the swaps they saw
    retrained, _, _ = planted_one_way_swap(share=0.1)  # a model trained on the fixed labels learns less swap
    left, unreviewed = swapped & ~reviewed, ~reviewed
    assert left.sum() >= 50
    corrected_only = error_scores(retrained, now)[unreviewed]
    as_given = error_scores(retrained, now, noise_labels=given)[unreviewed]
    assert average_precision(as_given, left[unreviewed]) > average_precision(corrected_only, left[unreviewed]) + 0.05
    with pytest.raises(ValueError, match="noise_labels"):
        error_scores(retrained, now, noise_labels=given[:-1])


def test_label_posterior_by_hand():
    noise = np.array([[0.8, 0.3], [0.2, 0.7]])  # P(given i | true j)
    # the model's 0.5 / 0.5 undoes to 0.4 / 0.6 (0.8*0.4 + 0.3*0.6 = 0.5); given label 0:
    # 0.4 * 0.8 against 0.6 * 0.3 -> 0.64 / 0.36
    np.testing.assert_allclose(label_posterior(np.array([[0.5, 0.5]]), np.array([0]), noise), [[0.64, 0.36]],
                               rtol=1e-4)
    with pytest.raises(ValueError, match="noise.*columns summing to 1"):
        label_posterior(np.array([[0.5, 0.5]]), np.array([0]), noise.T)


def test_knn_disagreement_is_high_for_a_planted_outlier():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 1, (50, 4)), rng.normal(10, 1, (50, 4))]).astype(np.float32)
    labels = np.array([0] * 50 + [1] * 50)
    labels[3] = 1  # sits among the zeros
    index = knn_neighbours(np.stack([x, x]), np.arange(100) % 2, k=5)
    values = knn_disagreement(index, labels)
    assert values[3] == 1.0 and np.median(values) == 0.0
    # One search serves another labeling: the outlier relabeled sits among its own class.
    relabeled = labels.copy()
    relabeled[3] = 0
    assert knn_disagreement(index, relabeled)[3] == 0.0


def test_neighbour_votes_read_the_labels_around_an_image_whatever_the_scale_of_a_feature():
    rng = np.random.default_rng(2)
    clusters = np.concatenate([rng.normal(0, 1, (60, 80)), rng.normal(4, 1, (60, 80))])
    loud = rng.normal(0, 1000, (120, 1))  # one feature on a scale of its own, carrying nothing
    x = np.concatenate([clusters, loud], axis=1).astype(np.float32)
    labels = np.array([0] * 60 + [1] * 60)
    labels[3] = 1  # sits among the zeros
    votes = neighbour_votes(vote_neighbours(x, k=10, dims=8), labels, 3)
    assert votes.shape == (120, 3) and np.allclose(votes.sum(1), 1.0)
    # 10 votes for class 0, a tenth of a vote more for every class: (10.1, 0.1, 0.1) / 10.3
    np.testing.assert_allclose(votes[3], [10.1 / 10.3, 0.1 / 10.3, 0.1 / 10.3], rtol=1e-6)
    assert (votes[labels == 0].argmax(1) == 0).all() and (votes[60:].argmax(1) == 1).all()



def test_an_exact_copy_carrying_the_same_wrong_label_does_not_vote_for_it():
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(0, 1, (60, 8)), rng.normal(4, 1, (60, 8))]).astype(np.float32)
    x[120 - 1] = x[3]  # image 119 is a copy of image 3
    labels = np.array([0] * 60 + [1] * 60)
    labels[3] = 1  # wrong, and its copy is labeled 1 too, among the ones
    copies = np.arange(120).astype(str)
    copies[119] = copies[3]
    index = vote_neighbours(x, k=10, groups=copies)
    assert 119 not in index[3] and 3 not in index[119] and (index[3] >= 0).all()
    assert neighbour_votes(index, labels, 2)[3, 0] == pytest.approx(10.1 / 10.2)  # all ten around it say 0
    with pytest.raises(ValueError, match="vote_neighbours.*groups"):
        vote_neighbours(x, groups=copies[:5])


def test_vote_neighbours_leave_narrow_features_unchanged_and_still_standardise_them():
    rng = np.random.default_rng(4)
    clusters = np.concatenate([rng.normal(0, 1, (60, 8)), rng.normal(4, 1, (60, 8))])
    loud = rng.normal(0, 1000, (120, 1))  # one feature on a scale of its own, carrying nothing
    x = np.concatenate([clusters, loud], axis=1).astype(np.float32)  # D = 9 <= dims: no PCA
    before = x.copy()
    expected = vote_neighbours(x.copy(), k=10)
    index = vote_neighbours(x, k=10)
    np.testing.assert_array_equal(x, before)  # the caller's features, float32 as given
    np.testing.assert_array_equal(index, expected)
    labels = np.array([0] * 60 + [1] * 60)
    assert (neighbour_votes(index, labels, 2).argmax(1) == labels).all()


def test_neighbour_votes_alone_rank_flipped_labels_and_bad_input_is_named():
    x, probs, labels, flipped = blobs(seed=3, n=600, k=3, flip=0.08)
    votes = neighbour_votes(vote_neighbours(x, k=10, dims=4), labels, 3)
    assert average_precision(error_scores(votes, labels), flipped) > 0.9
    combined = error_scores(probs, labels, fold_probs=[np.stack([probs, probs]), votes[None]], view_weights=[2, 1])
    assert average_precision(combined, flipped) > 0.9
    with pytest.raises(ValueError, match="neighbour_votes.*labels"):
        neighbour_votes(vote_neighbours(x), labels, 2)


def test_consensus_counts_fold_models_against_the_label():
    fold_probs = np.array([[[0.9, 0.1], [0.2, 0.8]], [[0.3, 0.7], [0.4, 0.6]]])
    np.testing.assert_allclose(consensus(fold_probs, np.array([0, 0])), [0.5, 1.0])


def test_single_class_yields_no_candidates_and_bad_smoothing_is_refused():
    probs = np.array([[0.9, 0.1], [0.8, 0.2]])
    assert find_candidates(probs, np.array([0, 0]), np.array([0.1, 0.2]))[1] == 0
    with pytest.raises(ValueError, match="smoothing"):
        error_scores(probs, np.array([0, 1]), smoothing=0)


def test_every_image_from_the_threshold_up_is_a_candidate_beyond_the_count():
    probs, labels, swapped = planted_one_way_swap(seed=1)
    scores = error_scores(probs, labels)
    top_only, n = find_candidates(probs, labels, scores, threshold=2.0, recall=0)  # no score reaches 2
    flagged, _ = find_candidates(probs, labels, scores, threshold=0.15, recall=0)
    counted_errors = np.sort(scores)[::-1][:n].sum()  # the errors the first n rows are expected to hold
    assert top_only.sum() == n + round(COUNT_EXTENSION * (n - counted_errors)) and flagged.sum() > top_only.sum()
    assert flagged[scores >= 0.15].all() and (flagged & swapped).sum() > (top_only & swapped).sum()
    with pytest.raises(TypeError, match="threshold"):
        find_candidates(probs, labels, scores, threshold="high")


def test_the_list_goes_on_by_the_correct_labels_its_first_rows_are_expected_to_hold():
    # A slip the fold models half learned ranks just after the counted rows: when those rows are
    # doubtful the list reaches it, when they are certain the list stops at the count.
    x, probs, labels, flipped = blobs(seed=3)
    n = estimated_error_count(probs, labels)
    ranked = np.argsort(-error_scores(probs, labels), kind="stable")
    for first, expected_length in ((1.0, n), (0.5, n + round(COUNT_EXTENSION * n / 2))):
        scores = np.zeros(len(labels))
        scores[ranked[:n]] = first
        scores[ranked[n:2 * n]] = 0.01
        flagged, _ = find_candidates(probs, labels, scores, threshold=2.0, recall=0)
        assert flagged.sum() == expected_length and flagged[ranked[:expected_length]].all()


def test_where_doubt_is_spread_thin_the_list_holds_the_share_of_errors_it_promises():
    # Crowd noise on photos: many labels a little doubtful, few very. Each label is wrong with
    # the chance its score gives, so the scores' sum is the number of errors they expect.
    rng = np.random.default_rng(0)
    n, k = 20_000, 4
    scores = np.clip(rng.beta(0.6, 6.0, n), 0, 1).astype(np.float32)
    wrong = rng.random(n) < scores
    labels = rng.integers(0, k, n)
    probs = np.full((n, k), 0.1 / (k - 1))
    probs[np.arange(n), labels] = 0.9  # a model that agrees with the labels: the count finds little
    short, count = find_candidates(probs, labels, scores, recall=0)
    for promise in (0.6, 0.8):
        flagged, _ = find_candidates(probs, labels, scores, recall=promise)
        assert flagged.sum() > short.sum() and flagged[scores >= REVIEW_THRESHOLD].all()
        assert abs(wrong[flagged].sum() / wrong.sum() - promise) < 0.03
    assert wrong[short].sum() / wrong.sum() < 0.65  # count and threshold alone: 59%
    # a promise further down than LIST_REACH times their list is cut there (0.83 of the errors)
    flagged, _ = find_candidates(probs, labels, scores, recall=0.9)
    assert flagged.sum() == LIST_REACH * short.sum() and wrong[flagged].sum() / wrong.sum() > 0.8


def test_a_clean_project_gets_no_list_from_doubt_spread_thin():
    # every label right, a model 98.7% accurate whose doubt is a little on every image: the
    # scores sum to 9.5, and 80% of that lay 497 images down the ranking
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 2000)
    logits = rng.normal(0, 1, (2000, 10))
    logits[np.arange(2000), labels] += 2 * np.log(8)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    scores = error_scores(probs, labels)
    flagged, count = find_candidates(probs, labels, scores)
    assert count == 0 and flagged.sum() <= LIST_REACH * max(1, (scores >= REVIEW_THRESHOLD).sum())
    with pytest.raises(ValueError, match="recall.*\\[0.0, 1.0\\)"):
        find_candidates(probs, labels, scores, recall=1.0)


def test_error_score_ranks_correctly_classified_images_too():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 0, 0])
    scores = error_scores(probs, labels)
    assert scores[0] < scores[1] < scores[2]  # eq. 1 gives 0.5 to both correct images


def test_error_score_formula_by_hand_when_no_noise_can_be_estimated():
    # one labeled class: no noise matrix, the score is 1 - the mean of self-confidence p_label
    # and normalized margin (p_label - max other + 1) / 2
    probs3 = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]])
    sc, mg = 1 - np.array([0.6, 0.2]), 1 - (np.array([0.6 - 0.3, 0.2 - 0.5]) + 1) / 2
    np.testing.assert_allclose(error_scores(probs3, np.array([0, 0])), (sc + mg) / 2, rtol=1e-6)


def test_views_are_averaged_with_their_weights_before_label_quality():
    labels = np.array([0, 1])
    strong = np.array([[[0.9, 0.1], [0.3, 0.7]]])  # (F=1, N, K)
    weak = np.array([[[0.5, 0.5], [0.5, 0.5]]])
    mixed = (2 * strong[0] + weak[0]) / 3
    np.testing.assert_allclose(
        error_scores(mixed, labels, fold_probs=[strong, weak], view_weights=[2, 1]),
        error_scores(mixed, labels), rtol=1e-6)
    with pytest.raises(ValueError, match="view_weights"):
        error_scores(mixed, labels, fold_probs=[strong, weak], view_weights=[1])


def test_candidates_follow_the_estimated_noise():
    x, probs, labels, flipped = blobs(seed=2, n=900, flip=0.08)
    scores = error_scores(probs, labels)
    flagged, n = find_candidates(probs, labels, scores)
    assert abs(n - flipped.sum()) <= 0.3 * flipped.sum() and flagged.sum() <= 1.5 * flipped.sum()
    assert estimated_error_count(probs, labels) == n  # the count alone, as the pipeline's view rule reads it
    assert (flagged & flipped).sum() >= 0.8 * flipped.sum()


def test_knn_disagreement_uses_each_images_own_fold_space():
    # fold 0's model separates the classes, fold 1's model mixes them
    labels = np.array([0] * 20 + [1] * 20)
    good = np.concatenate([np.zeros((20, 2)), np.full((20, 2), 10.0)]) + np.arange(40)[:, None] * 1e-3
    mixed = np.random.default_rng(0).normal(size=(40, 2))  # no class structure at all
    emb = np.stack([good, mixed]).astype(np.float32)
    fold_of = np.array([0] * 10 + [1] * 10 + [0] * 10 + [1] * 10)
    values = knn_disagreement(knn_neighbours(emb, fold_of, k=5), labels)
    assert values[fold_of == 0].max() == 0.0 and values[fold_of == 1].mean() > 0.3


def test_label_error_inputs_are_checked_with_helpful_messages():
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    with pytest.raises(ValueError, match="fold_of.*\\[0, 1\\]"):
        knn_neighbours(np.zeros((2, 2, 3)), np.array([0, 2]))
    with pytest.raises(ValueError, match="embeddings.*3-D"):
        knn_neighbours(np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match="neighbour_index.*\\[-1, 1\\]"):
        knn_disagreement(np.array([[1], [2]]), np.array([0, 1]))
    with pytest.raises(ValueError, match="fold_probs.*\\(F, 2, 2\\)"):
        error_scores(probs, np.array([0, 1]), fold_probs=np.stack([probs[:1]] * 3))
    with pytest.raises(ValueError, match="labels.*every one of the 3 classes"):
        noise_matrix(np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1]]), np.array([0, 1]))
    with pytest.raises(ValueError, match="error_score.*finite"):
        find_candidates(probs, np.array([0, 1]), np.array([np.nan, 0.0]))
    with pytest.raises(ValueError, match="fold_probs.*summing to 1"):
        consensus(np.ones((2, 2, 2)), np.array([0, 1]))
    with pytest.raises(TypeError, match="k"):
        knn_neighbours(np.zeros((1, 2, 3)), np.array([0, 0]), k=2.5)


@pytest.mark.parametrize("tiny", [1, 10])
def test_a_class_with_few_labels_does_not_turn_the_others_correct_labels_into_errors(tiny):
    # A model unsure of everything, and a class it barely knows: confident learning's threshold for
    # that class (the mean confidence of its own few labels) is so low that the other classes'
    # images pass it, and every correct label of theirs would look wrong.
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(100, int), np.full(100, 2), np.ones(tiny, int)]
    logits = rng.normal(0, 0.3, (len(labels), 3))
    logits[np.arange(len(labels)), labels] += 0.8
    logits[labels == 1, 1] -= 0.64
    logits[:, 1] -= 0.3
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    scores = error_scores(probs, labels)
    flagged, count = find_candidates(probs, labels, scores)
    big = labels != 1
    assert scores[big].mean() < 0.1 and flagged[big].sum() <= 5 and count <= 5


def test_a_class_with_one_image_does_not_make_the_other_class_look_mislabeled():
    # 20 cats, 1 dog the model could not learn from one image: the dog's own probability (0.02)
    # would be the dog threshold, and every cat the model gives 2% of dog would count as an error
    p_dog = np.linspace(0.001, 0.05, 20)
    probs = np.vstack([np.column_stack([1 - p_dog, p_dog]), [[0.98, 0.02]]])
    labels = np.array([0] * 20 + [1])
    flagged, n = find_candidates(probs, labels, error_scores(probs, labels))
    assert n == 0 and not flagged[:20].any()


def test_labels_the_scores_call_right_are_not_listed_to_fill_the_count():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1, 1], size=60)  # a model unsure of everything: the count is large
    labels = np.arange(60) % 2
    scores = np.zeros(60)
    scores[[3, 7]] = 0.9
    flagged, n = find_candidates(probs, labels, scores)
    assert n > 2 and np.flatnonzero(flagged).tolist() == [3, 7]
