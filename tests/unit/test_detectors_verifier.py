"""The verifier learned from reviewers' verdicts: it helps only where it validates."""

import numpy as np
import pytest

from ml_backend.detectors.verifier import (CELL_DECISIONS, HALF_WEIGHT_AT, MAX_WEIGHT, MIN_EACH, cells_of,
                                           reordered_within, verified_scores, verifier_evidence)


def project(seed=0, n=3000):
    """Base scores that cannot tell two kinds of disagreement apart; a feature that can."""
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 2, n)  # kind 1: disagreements that are real errors here
    wrong = (rng.random(n) < np.where(kind == 1, 0.8, 0.1)).astype(int)
    base = np.clip(0.5 + 0.1 * rng.normal(size=n), 0, 1)
    evidence = np.column_stack([kind + 0.3 * rng.normal(size=n), rng.normal(size=n)])
    cells = rng.integers(0, 40, n)  # 400 reviewed: about 10 verdicts a cell
    return evidence, base, wrong, cells


def test_verdicts_teach_which_disagreements_are_errors_and_rerank_the_rest():
    evidence, base, wrong, cells = project()
    verdicts = np.full(len(base), -1)
    verdicts[:400] = wrong[:400]  # 400 reviewed
    scores, weight = verified_scores(evidence, base, verdicts, cells)
    rest = slice(400, None)
    top = lambda s: wrong[rest][np.argsort(-s[rest])[:500]].mean()  # noqa: E731
    assert 0 < weight <= 0.5 and top(scores) > top(base) + 0.15
    # Re-ordered, not re-scaled: the list length and cell flags still read scores as chances.
    assert np.array_equal(np.sort(scores), np.sort(base).astype(np.float32))


@pytest.mark.parametrize("reviewed", [2 * MIN_EACH - 2, 400])
def test_too_few_verdicts_of_a_kind_or_a_verifier_that_does_not_validate_change_nothing(reviewed):
    evidence, base, wrong, cells = project()
    verdicts = np.full(len(base), -1)
    if reviewed == 400:  # enough verdicts, but the evidence carries nothing about them
        evidence = np.random.default_rng(1).normal(size=evidence.shape)
        base = np.clip(0.5 + 0.3 * (wrong - 0.5) + 0.05 * np.random.default_rng(2).normal(size=len(base)), 0, 1)
        verdicts[:reviewed] = wrong[:reviewed]
    else:  # all but one kind: too few right labels to learn from
        verdicts[:reviewed] = 1
        verdicts[reviewed:reviewed + MIN_EACH - 1] = 0
    scores, weight = verified_scores(evidence, base, verdicts, cells)
    assert weight == 0.0 and np.array_equal(scores, base.astype(np.float32))


def test_a_cell_reviewed_at_once_counts_as_a_few_decisions_not_hundreds():
    evidence, base, wrong, cells = project()
    verdicts = np.full(len(base), -1)
    verdicts[:400] = wrong[:400]
    _, spread = verified_scores(evidence, base, verdicts, cells)
    two_cells = np.where(np.arange(len(base)) < 200, 0, 1)  # the 400 verdicts in two cells
    _, bulk = verified_scores(evidence, base, verdicts, two_cells)
    decisions = 2 * CELL_DECISIONS
    assert bulk == pytest.approx(MAX_WEIGHT * decisions / (decisions + HALF_WEIGHT_AT)) and bulk < spread / 2


def test_cells_are_the_label_and_the_predicted_class():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.1, 0.7]])
    assert cells_of(np.array([1, 1, 0]), probs).tolist() == [3, 4, 2]


def test_evidence_names_a_label_outside_the_classes():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    terms = np.array([0.8, 0.1]), np.array([0.5, 0.0]), np.array([1.0, 0.0])
    for labels in ([1, -1], [1, 3]):  # -1 would read the last class, 3 fail with a bare IndexError
        with pytest.raises(ValueError, match=r"verifier_evidence: parameter 'labels'.*in \[0, 2\]"):
            verifier_evidence(probs, np.array(labels), *terms)
    with pytest.raises(TypeError, match="verifier_evidence: parameter 'labels'.*integer"):
        verifier_evidence(probs, np.array([1.0, 0.0]), *terms)
    with pytest.raises(ValueError, match="verifier_evidence: parameter 'pred_probs'.*summing to 1"):
        verifier_evidence(probs * 2, np.array([1, 0]), *terms)


def test_evidence_has_the_error_terms_probabilities_and_both_classes_one_hot():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    x = verifier_evidence(probs, np.array([1, 1]), np.array([0.8, 0.1]), np.array([0.5, 0.0]), np.array([1.0, 0.0]))
    assert x.shape == (2, 7 + 2 * 3)
    assert x[0, :6].tolist() == pytest.approx([0.8, 0.5, 1.0, 0.2, 0.7, 0.5])  # p_label, p_max, margin
    assert x[0, 7:].tolist() == [0, 1, 0, 1, 0, 0]  # label 1, predicted 0
    with pytest.raises(ValueError, match="verdicts"):
        verified_scores(x, np.array([0.8, 0.1]), np.array([2, 0]), np.array([1, 3]))
    with pytest.raises(TypeError, match="cells"):  # the labels' check: integer ids only
        verified_scores(x, np.array([0.8, 0.1]), np.array([1, 0]), np.array([1.0, 3.0]))


def test_reordered_within_keeps_a_groups_own_scores_in_the_new_order():
    scores = np.array([0.9, 0.8, 0.1, 0.5, 0.2])
    order = np.array([0.1, 0.2, 0.9, 0.3, 0.8])  # the verifier's ranking
    unreviewed = np.array([True, True, True, False, True])
    out = reordered_within(scores, order, unreviewed)
    np.testing.assert_allclose(out, [0.1, 0.2, 0.9, 0.5, 0.8])  # image 3 (reviewed) keeps its score
    assert sorted(out[unreviewed]) == sorted(scores[unreviewed])  # a list as long as before
    assert scores[0] == 0.9  # the caller's array is left alone
