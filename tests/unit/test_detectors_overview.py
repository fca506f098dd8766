"""Eq. 1-4 and the overview list's reading order, on hand-computed examples."""

import numpy as np
import pytest

from ml_backend.detectors.overview import (histogram, mismatch_score, overview_cells,
                                         representatives, saturation)


def test_mismatch_score_is_eq_1():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]])
    labels = np.array([0, 0, 1])
    # (max + 1 - p_label) / 2
    np.testing.assert_allclose(mismatch_score(probs, labels), [(0.7 + 0.3) / 2, (0.6 + 0.9) / 2, (0.6 + 0.8) / 2],
                               rtol=1e-6)
    assert mismatch_score(probs, labels)[0] == pytest.approx(0.5)  # correct images all score 0.5


def test_histogram_buckets_start_at_one_over_k():
    # K=4: domain [0.25, 1] in 0.1 steps -> 8 buckets; 1.0 falls in the last (closed) bucket
    counts = histogram(np.array([0.25, 0.349, 0.35, 0.99, 1.0]), 4)
    assert counts.tolist() == [2, 1, 0, 0, 0, 0, 0, 2]


def test_saturation_is_log_scale_over_a_decade():
    s = saturation(np.array([10.0, 1.0, 0.5, np.sqrt(10.0)]))
    np.testing.assert_allclose(s, [1.0, 0.0, 0.0, 0.5], atol=1e-12)


def test_representative_is_the_most_confident_image_of_each_label():
    probs = np.array([[0.6, 0.4], [0.9, 0.1], [0.3, 0.7], [0.95, 0.05]])
    assert representatives(probs, np.array([0, 0, 1, 1])).tolist() == [1, 2]
    assert representatives(probs[:2], np.array([0, 0])).tolist() == [1, -1]


def planted_swap(seed=0, n_per_class=400, k=5, swap=(3, 1), share=0.15, noise=0.01):
    """Labels with scattered confusion everywhere and a systematic swap: images of class
    swap[1] labeled swap[0]."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(k), n_per_class)
    predicted = truth.copy()
    labels = truth.copy()
    scatter = rng.random(len(truth)) < noise
    predicted[scatter] = (truth[scatter] + rng.integers(1, k, scatter.sum())) % k
    swapped = rng.choice(np.flatnonzero(truth == swap[1]), int(share * n_per_class), replace=False)
    labels[swapped] = swap[0]
    probs = np.full((len(truth), k), 0.05 / (k - 1))
    probs[np.arange(len(truth)), predicted] = 0.95
    return probs, labels


def test_planted_swap_leads_the_list_and_is_flagged_scattered_noise_is_not():
    probs, labels = planted_swap()
    cells = overview_cells(probs, labels)
    first = cells[0]
    assert (first["label"], first["predicted"]) == (3, 1) and first["row"] == 0 and first["column"] == 0
    assert first["interpretation_error"] and first["saturation"] == 1.0
    assert not any(c["interpretation_error"] for c in cells[1:])
    # reading order: rows by misclassified count, cells in a row by count
    for a, b in zip(cells, cells[1:]):
        assert (a["row"], a["column"]) < (b["row"], b["column"])
        if a["row"] == b["row"]:
            assert a["count"] >= b["count"]
    assert all(c["label"] != c["predicted"] for c in cells)
    assert sum(first["histogram"]) == first["count"]


def test_duplicate_marker_only_on_cells_holding_a_duplicate_pair():
    probs = np.array([[0.1, 0.9], [0.2, 0.8], [0.9, 0.1], [0.3, 0.7]])
    labels = np.array([0, 0, 1, 0])
    # cells: (0 -> 1) holds images 0, 1, 3; (1 -> 0) holds image 2
    cells = overview_cells(probs, labels, duplicate_group=np.array([0, 0, -1, -1]))
    assert [(c["label"], c["has_duplicates"]) for c in cells] == [(0, True), (1, False)]
    cells = overview_cells(probs, labels, duplicate_group=np.array([0, -1, 0, -1]))  # pair split over two cells
    assert [c["has_duplicates"] for c in cells] == [False, False]


def test_bad_probabilities_get_a_message_naming_the_parameter():
    with pytest.raises(ValueError, match="pred_probs.*summing to 1"):
        mismatch_score(np.array([[0.5, 0.7]]), np.array([0]))
    with pytest.raises(ValueError, match=r"labels.*\[0, 1\]"):
        mismatch_score(np.array([[0.5, 0.5]]), np.array([2]))
    with pytest.raises(TypeError, match="pred_probs"):
        mismatch_score([[0.5, 0.5]], np.array([0]))


@pytest.mark.parametrize("k, buckets", [(2, 5), (3, 7), (4, 8), (10, 9), (11, 10)])
def test_histogram_has_ceil_of_domain_over_a_tenth_buckets(k, buckets):
    counts = histogram(np.array([1.0 / k, 1.0]), k)
    assert len(counts) == buckets and counts[0] == 1 and counts[-1] == 1


def test_float32_score_on_a_bucket_edge_goes_to_the_upper_bucket():
    assert histogram(np.array([0.35], dtype=np.float32), 4).tolist() == [0, 1, 0, 0, 0, 0, 0, 0]


def test_saturation_of_no_misclassification_is_white_and_negative_input_is_refused():
    assert saturation(np.zeros(3)).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="score_wrong"):
        saturation(np.array([1.0, -0.5]))


def test_representative_ties_go_to_the_lowest_index():
    probs = np.array([[0.2, 0.8], [0.8, 0.2], [0.2, 0.8], [0.8, 0.2]])
    assert representatives(probs, np.array([1, 0, 1, 0])).tolist() == [1, 0]


def test_cells_hand_computed_k3():
    probs = np.array([
        [0.1, 0.8, 0.1],  # label 0 -> 1, eq. 1: (0.8 + 0.9) / 2 = 0.85
        [0.3, 0.6, 0.1],  # label 0 -> 1, (0.6 + 0.7) / 2 = 0.65
        [0.2, 0.1, 0.7],  # label 0 -> 2, (0.7 + 0.8) / 2 = 0.75
        [0.8, 0.1, 0.1],  # label 0, correct
        [0.5, 0.4, 0.1],  # label 1 -> 0, (0.5 + 0.6) / 2 = 0.55
        [0.1, 0.8, 0.1],  # label 1, correct
        [0.1, 0.1, 0.8],  # label 2, correct: row 2 has no cells
    ])
    labels = np.array([0, 0, 0, 0, 1, 1, 2])
    cells = overview_cells(probs, labels)
    assert [(c["label"], c["predicted"], c["row"], c["column"]) for c in cells] == [
        (0, 1, 0, 0), (0, 2, 0, 1), (1, 0, 1, 0)]
    first, second, third = cells
    assert first["count"] == 2 and first["share_of_row"] == pytest.approx(0.5)
    assert first["mean_mismatch"] == pytest.approx(0.75) and first["score_wrong"] == pytest.approx(1.5)
    # K = 3: 7 buckets from 1/3; 0.65 -> bucket 3, 0.85 -> bucket 5
    assert first["histogram"] == [0, 0, 0, 1, 0, 1, 0]
    assert second["histogram"] == [0, 0, 0, 0, 1, 0, 0] and third["histogram"] == [0, 0, 1, 0, 0, 0, 0]
    assert third["share_of_row"] == pytest.approx(0.5) and third["score_wrong"] == pytest.approx(0.55)
    # eq. 3: log10(score_wrong / (0.1 * 1.5)), clipped to [0, 1]
    np.testing.assert_allclose([c["saturation"] for c in cells], [1.0, np.log10(5.0), np.log10(0.55 / 0.15)],
                               rtol=1e-6)
    assert not any(c["interpretation_error"] or c["has_duplicates"] for c in cells)


def test_cells_in_a_row_with_equal_counts_put_the_more_confident_first():
    probs = np.array([[0.4, 0.5, 0.1], [0.1, 0.1, 0.8], [0.9, 0.05, 0.05]])
    cells = overview_cells(probs, np.array([0, 0, 0]))
    assert [c["predicted"] for c in cells] == [2, 1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scattered_confusion_alone_is_never_an_interpretation_error(seed):
    probs, labels = planted_swap(seed=seed, n_per_class=1500, k=10, share=0.0, noise=0.15)
    assert not any(c["interpretation_error"] for c in overview_cells(probs, labels))


def test_ten_percent_swap_under_scattered_noise_is_flagged_first():
    probs, labels = planted_swap(seed=3, n_per_class=1000, k=10, swap=(7, 2), share=0.10, noise=0.05)
    cells = overview_cells(probs, labels)
    assert (cells[0]["label"], cells[0]["predicted"]) == (7, 2) and cells[0]["interpretation_error"]
    assert [c["interpretation_error"] for c in cells].count(True) == 1


def test_a_cell_of_labels_the_error_score_trusts_is_not_a_misreading():
    # Two classes that look alike: the model puts 15% of class 1 in class 3 (a large cell,
    # significant against the usual confusion) while the error score says those labels are
    # right; the planted swap 3 -> 1 is as large and its labels are doubted.
    probs, labels = planted_swap(seed=4, n_per_class=1000, k=5, swap=(3, 1), share=0.15, noise=0.01)
    look_alike = np.flatnonzero((labels == 1) & (probs.argmax(1) == 1))[:150]
    probs[look_alike] = probs[look_alike][:, [0, 3, 2, 1, 4]]  # the model now reads them as 3
    swapped = (labels == 3) & (probs.argmax(1) == 1)
    error_score = np.where(swapped, 0.9, 0.1)
    flagged = lambda cells: {(c["label"], c["predicted"]) for c in cells if c["interpretation_error"]}
    assert flagged(overview_cells(probs, labels)) == {(3, 1), (1, 3)}  # the rate test alone
    assert flagged(overview_cells(probs, labels, error_score=error_score)) == {(3, 1)}
    with pytest.raises(ValueError, match="error_score"):
        overview_cells(probs, labels, error_score=error_score[:-1])



def from_confusion(counts, error_of_cell):
    """Saturated probs and labels with the given (K, K) confusion counts (label a, model b), and
    each image's error score error_of_cell[a][b]."""
    k = len(counts)
    labels = np.repeat(np.arange(k * k) // k, np.ravel(counts))
    predicted = np.repeat(np.arange(k * k) % k, np.ravel(counts))
    probs = np.full((len(labels), k), 0.05 / (k - 1))
    probs[np.arange(len(labels)), predicted] = 0.95
    return probs, labels, np.asarray(error_of_cell, dtype=float)[labels, predicted]


def flagged_cells(cells):
    return {(c["label"], c["predicted"]) for c in cells if c["interpretation_error"]}


def test_a_one_way_swap_in_a_two_class_project_is_flagged():
    # 150 images of class 1 labeled 0; the model doubts 60 correct labels of class 1 in return.
    probs, labels, error_score = from_confusion([[1050, 150], [60, 740]], [[0.05, 0.9], [0.3, 0.05]])
    assert flagged_cells(overview_cells(probs, labels, error_score=error_score)) == {(0, 1)}
    assert flagged_cells(overview_cells(probs, labels)) == set()  # nothing tells a swap from look-alikes
    # two look-alike classes: large cells both ways whose labels the error score trusts
    probs, labels, error_score = from_confusion([[900, 100], [100, 900]], [[0.05, 0.3], [0.3, 0.05]])
    assert flagged_cells(overview_cells(probs, labels, error_score=error_score)) == set()


def test_the_reverse_cell_is_not_the_usual_confusion_of_a_swap():
    # A swap 0 -> 1 whose reverse cell 1 -> 0 is large; no other confusion at all.
    probs, labels, error_score = from_confusion([[900, 100, 0], [400, 600, 0], [0, 0, 200]],
                                                [[0.05, 0.9, 0.5], [0.2, 0.05, 0.5], [0.5, 0.5, 0.05]])
    assert flagged_cells(overview_cells(probs, labels, error_score=error_score)) == {(0, 1)}


def test_small_cells_are_never_flagged_whatever_their_share():
    probs, labels = planted_swap(seed=0, n_per_class=30, k=3, swap=(2, 0), share=0.3, noise=0.0)
    cells = overview_cells(probs, labels)  # 9 of 39 images: a big share but under 10 images
    assert cells[0]["count"] == 9 and not cells[0]["interpretation_error"]
    assert overview_cells(probs, labels, min_interpretation_count=5)[0]["interpretation_error"]


def test_overview_options_and_arrays_are_checked():
    probs, labels = planted_swap(n_per_class=20)
    with pytest.raises(ValueError, match="alpha"):
        overview_cells(probs, labels, alpha=0.0)
    with pytest.raises(TypeError, match="duplicate_group"):
        overview_cells(probs, labels, duplicate_group=np.zeros(len(labels)))
    with pytest.raises(ValueError, match="mismatch.*of shape"):
        overview_cells(probs, labels, mismatch=np.zeros(3))
    with pytest.raises(ValueError, match="pred_probs.*finite"):
        overview_cells(np.full_like(probs, np.nan), labels)
    with pytest.raises(TypeError, match="labels.*integer"):
        overview_cells(probs, labels.astype(float))


def test_a_flagged_cell_offers_the_labels_likelier_wrong_than_right_to_relabel_together():
    probs, labels, error_score = from_confusion([[1050, 150], [60, 740]], [[0.05, 0.9], [0.3, 0.05]])
    in_cell = np.flatnonzero((labels == 0) & (probs.argmax(1) == 1))
    error_score[in_cell[:20]] = 0.4  # 20 of the cell's 150 labels likelier right than wrong
    cells = {(c["label"], c["predicted"]): c for c in overview_cells(probs, labels, error_score=error_score)}
    assert cells[(0, 1)]["interpretation_error"] and cells[(0, 1)]["together"] == 130
    assert cells[(1, 0)]["together"] == 0  # not flagged: nothing to relabel at once
    assert overview_cells(probs, labels, error_score=error_score, together_wrong=0.99)[0]["together"] == 0
