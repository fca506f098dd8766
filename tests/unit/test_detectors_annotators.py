"""Annotators: a careless one is found by the reviews and by CROWDLAB; consensus beats them."""

import json
import warnings

import numpy as np
import pytest

from ml_backend.detectors.annotators import annotator_table, consensus_labels, disagreement_order

BAD = 2  # the annotator who flips 40% of their labels


def crowd(seed=0, n=300, k=3):
    """3 annotators, each labels an image with probability 0.7; annotator BAD flips 40%, the
    others 5%; a model right on 70% of the images."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    flip = rng.random((n, 3)) < np.array([0.05, 0.05, 0.4])
    matrix = np.where(flip, (truth[:, None] + rng.integers(1, k, (n, 3))) % k, truth[:, None]).astype(float)
    matrix[rng.random((n, 3)) > 0.7] = np.nan
    matrix[np.isnan(matrix).all(axis=1), 0] = truth[np.isnan(matrix).all(axis=1)]
    guess = np.where(rng.random(n) < 0.7, truth, rng.integers(0, k, n))
    probs = np.full((n, k), 0.3 / (k - 1))
    probs[np.arange(n), guess] = 0.7
    return truth, matrix, probs


def test_crowdlab_ranks_the_careless_annotator_last_and_consensus_beats_them():
    truth, matrix, probs = crowd()
    result = consensus_labels(matrix, probs)
    assert np.argmin(result.annotator_quality) == BAD
    multi = (~np.isnan(matrix)).sum(axis=1) >= 2
    assert (result.label >= 0).tolist() == multi.tolist() and np.isnan(result.quality[~multi]).all()
    by_bad = multi & ~np.isnan(matrix[:, BAD])
    bad_accuracy = (matrix[by_bad, BAD] == truth[by_bad]).mean()
    assert (result.label[by_bad] == truth[by_bad]).mean() > max(0.9, bad_accuracy + 0.25)
    assert result.notes == ()


def test_reviews_find_the_careless_annotator_wrong_most_often():
    truth, matrix, probs = crowd()
    rng = np.random.default_rng(1)
    image, annotator = np.nonzero(~np.isnan(matrix))
    first = np.unique(image, return_index=True)[1]
    given = matrix[image[first], annotator[first]].astype(int)  # the first annotation's label is the image's
    verdicts = np.where(rng.random(len(truth)) < 0.5, (given != truth).astype(np.int8), -1).astype(np.int8)
    table = annotator_table(annotator, image, matrix[image, annotator] == given[image], probs.argmax(1) != given,
                            verdicts)
    assert table[0]["annotator"] == BAD
    assert table[0]["share_wrong"] > 2 * max(row["share_wrong"] for row in table[1:])
    assert sum(row["labels"] for row in table) == len(image)


def test_annotator_table_judges_each_annotation_through_its_image_verdict():
    # image 0: given label confirmed; image 1: relabeled; image 2: not reviewed but flagged.
    annotators = np.array([7, 8, 7, 8, 7, -1])
    images = np.array([0, 0, 1, 1, 2, 2])
    matches_given = np.array([True, False, True, False, True, True])
    table = annotator_table(annotators, images, matches_given, np.array([False, True, True]), np.array([0, 1, -1]))
    rows = {row["annotator"]: row for row in table}
    # 7: right on 0, wrong on 1 (gave the relabeled label), flagged on 1 and 2.
    assert rows[7] == {"annotator": 7, "labels": 3, "flagged": 2, "share_flagged": 2 / 3, "judged": 2, "wrong": 1,
                       "share_wrong": 0.5}
    # 8: wrong on 0 (dissented from a confirmed label); not judged on 1 (the right class is unknown).
    assert rows[8] == {"annotator": 8, "labels": 2, "flagged": 0, "share_flagged": 0.0, "judged": 1, "wrong": 1,
                       "share_wrong": 1.0}
    assert rows[-1]["judged"] == 0 and rows[-1]["share_wrong"] is None
    assert [row["annotator"] for row in table] == [8, 7, -1]
    assert json.loads(json.dumps(table)) == table
    assert annotator_table(np.array([], int), np.array([], int), np.array([], bool), np.array([False]),
                           np.array([-1])) == []


def test_disagreement_order_lists_only_disagreed_images_most_doubtful_first():
    truth, matrix, probs = crowd()
    matrix[:5, :] = truth[:5, None]  # unanimous: never listed ...
    probs[:5] = np.eye(3)[(truth[:5] + 1) % 3] * 0.98 + 0.02 / 3  # ... even when the model doubts them
    result = consensus_labels(matrix, probs)
    order = disagreement_order(matrix, result.quality, result.agreement)
    distinct = [len(set(row[~np.isnan(row)])) for row in matrix]
    assert sorted(order.tolist()) == [i for i, d in enumerate(distinct) if d >= 2]
    assert np.all(np.diff(result.quality[order]) >= 0)
    half = len(order) // 2  # doubtful disagreements are wrong consensus more often
    wrong = result.label[order] != truth[order]
    assert wrong[:half].mean() > wrong[half:].mean()


def test_one_annotation_per_image_leaves_nothing_to_reconcile():
    truth, matrix, probs = crowd()
    single = np.full_like(matrix, np.nan)
    single[:, 0] = truth
    result = consensus_labels(single, probs)
    assert (result.label == -1).all() and np.isnan(result.quality).all() and np.isnan(result.annotator_quality).all()
    assert disagreement_order(single, result.quality, result.agreement).size == 0


def test_exact_ties_are_settled_quietly_and_reproducibly(capsys):
    # 1-to-1 splits, equal class counts, a model that cannot choose: cleanlab alone breaks such
    # ties with np.random, and here crashes (no untied image to rank the annotators by).
    matrix = np.array([[0, 1], [1, 2], [2, 0]], dtype=float)
    probs = np.full((3, 3), 1 / 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first, again = consensus_labels(matrix, probs), consensus_labels(matrix, probs)
    assert capsys.readouterr().out == ""  # cleanlab would print that class 2 was lost
    assert first.label.tolist() == again.label.tolist() == [0, 1, 0]
    assert first.notes == ("Annotators do not agree on any example. Check input data.",)
    assert sorted(disagreement_order(matrix, first.quality, first.agreement).tolist()) == [0, 1, 2]


def test_unlabeled_images_idle_or_lonely_annotators_and_unannotated_classes_are_left_out(capsys):
    truth, matrix, probs = crowd()
    wide = np.column_stack([matrix, np.full((len(matrix), 2), np.nan)])
    wide[0] = np.nan  # an image nobody labeled
    wide[1] = np.nan
    wide[1, 3] = truth[1]  # annotator 3 labels one image, alone; annotator 4 labels nothing
    probs = np.column_stack([0.9 * probs, np.full(len(probs), 0.1)])  # class 3: never annotated
    result = consensus_labels(wide, probs)
    assert capsys.readouterr().out == ""  # cleanlab would print that annotator 3 overlaps nobody
    assert result.label[:2].tolist() == [-1, -1] and np.isnan(result.quality[:2]).all()
    assert np.isnan(result.annotator_quality[3:]).all()
    assert np.argmin(result.annotator_quality[:3]) == BAD


@pytest.mark.parametrize("call, param", [
    (lambda m, p: consensus_labels(m[:-1], p), "labels_multiannotator"),
    (lambda m, p: consensus_labels(m + 0.5, p), "labels_multiannotator"),
    (lambda m, p: consensus_labels(np.where(np.isnan(m), m, 3), p), "labels_multiannotator"),
    (lambda m, p: consensus_labels(m, p[:, :2]), "pred_probs"),
    (lambda m, p: disagreement_order(m, np.full(len(m), np.nan), np.ones(len(m))), "quality"),
    (lambda m, p: disagreement_order(m, np.ones(len(m)), np.ones(3)), "agreement"),
    (lambda m, p: annotator_table(np.array([1, 2]), np.array([0, 3]), np.array([True, True]),
                                  np.array([False] * 3), np.array([-1] * 3)), "images"),
    (lambda m, p: annotator_table(np.array([1]), np.array([0]), np.array([True]), np.array([False]),
                                  np.array([2])), "verdicts"),
    (lambda m, p: annotator_table(np.array([-2]), np.array([0]), np.array([True]), np.array([False]),
                                  np.array([0])), "annotators"),
    (lambda m, p: annotator_table(np.array([1]), np.array([0]), np.array([True, False]), np.array([False]),
                                  np.array([0])), "matches_given"),
])
def test_bad_input_raises_value_error_naming_the_parameter(call, param):
    _, matrix, probs = crowd(n=30)
    with pytest.raises(ValueError, match=f"'{param}'"):
        call(matrix, probs)
