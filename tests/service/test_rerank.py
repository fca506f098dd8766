"""Re-ranking while people review: verdicts on the stored analysis re-order what is left, in
seconds, without retraining; idempotent; and the report shows the queue's precision."""

import numpy as np
import pytest

from ml_backend.analysis import Analysis, save
from ml_backend.pipeline import rerank
from ml_backend.service.verdicts import rerank_after_publishing, rerank_due, rerank_published, verdicts_on_labels
from ml_backend.store import ProjectStore
from ml_backend.views.report import report_html, with_review_outcomes
from ml_backend.vocabulary import Verdict

VERSION = "deconfusion-v1-test"
ERRORS = range(0, 100)       # labeled 0, the model says 1: a labeler's misreading, every one wrong
CONFUSION = range(100, 200)  # labeled 2, the model says 3: real two-way confusion, every label right


def confusable_analysis(n: int = 400, seed: int = 0) -> Analysis:
    """Two cells the model doubts equally; only the verdicts can tell them apart."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    labels[ERRORS.start:ERRORS.stop], labels[CONFUSION.start:CONFUSION.stop] = 0, 2
    predicted = labels.copy()
    predicted[ERRORS.start:ERRORS.stop], predicted[CONFUSION.start:CONFUSION.stop] = 1, 3
    probs = np.full((n, 4), 0.05, np.float32)
    probs[np.arange(n), predicted] = 0.85
    doubted = labels != predicted
    probs[doubted, labels[doubted]] = 0.2
    probs[doubted, predicted[doubted]] = 0.7
    probs /= probs.sum(axis=1, keepdims=True)
    score = np.where(doubted, 0.6, 0.1) + rng.uniform(0, 0.02, n)
    return Analysis(
        model_version=VERSION, items=[f"{i}.png" for i in range(n)], class_names=["goose", "duck", "wolf", "dog"],
        task_ids=np.arange(1, n + 1), splits=np.array(["train"] * n), labels=labels, pred_probs=probs,
        predicted=predicted, mismatch=np.full(n, 0.5, np.float32), error_score=score.astype(np.float32),
        is_candidate=doubted, knn_disagreement=np.where(doubted, 0.5, 0.0).astype(np.float32),
        consensus=np.where(doubted, 1.0, 0.0).astype(np.float32), duplicate_group=np.full(n, -1),
        neighbors=np.zeros((n, 1), int), map_xy=np.full((n, 2), np.nan, np.float32),
        representatives=np.zeros(4, int), thumbs=np.zeros((n, 4, 4, 1), np.uint8), cells=[], duplicates=[],
        summary={"images": n}, params={})


def verdicts_on(analysis, wrong, right, version=VERSION):
    return {**{str(analysis.task_ids[i]): {"verdict": "relabeled_to_model", "label": "duck", "version": version}
               for i in wrong},
            **{str(analysis.task_ids[i]): {"verdict": "kept", "label": "wolf", "version": version} for i in right}}


def test_verdicts_teach_which_disagreement_is_an_error_and_lift_the_rest_of_it():
    analysis = confusable_analysis()
    known = verdicts_on_labels(analysis, verdicts_on(analysis, ERRORS[:40], CONFUSION[:40]))
    scores, weight = rerank(analysis, known)
    assert weight > 0
    left = np.array([*ERRORS[40:], *CONFUSION[40:]])

    def errors_in_first_half(ranking):
        return np.isin(left[np.argsort(-ranking[left])[:len(left) // 2]], ERRORS).mean()

    assert errors_in_first_half(analysis.error_score) < 0.55  # before: the two cells interleave
    assert errors_in_first_half(scores) > 0.6
    assert np.median(scores[ERRORS[40:]]) > np.median(scores[CONFUSION[40:]])
    assert np.array_equal(np.sort(scores), np.sort(analysis.error_score))  # re-ordered, still read as chances


def test_too_few_verdicts_leave_the_ranking_as_it_was():
    analysis = confusable_analysis()
    known = verdicts_on_labels(analysis, verdicts_on(analysis, ERRORS[:10], CONFUSION[:10]))
    scores, weight = rerank(analysis, known)
    assert weight == 0 and np.array_equal(scores, analysis.error_score)


def test_only_verdicts_on_the_analysed_labels_count():
    analysis = confusable_analysis()
    verdicts = {"1": {"verdict": "relabeled_to_model", "label": "duck", "version": "deconfusion-v0-old"},
                "2": {"verdict": "kept", "label": "dog", "version": "deconfusion-v0-old"},   # a goose now
                "204": {"verdict": "kept", "label": "dog", "version": "deconfusion-v0-old"},  # still a dog
                "5": {"verdict": "ambiguous", "label": "goose", "version": VERSION},
                "6": {"verdict": "removed", "label": "goose", "version": VERSION},  # a copy removed: judges no label
                "999": {"verdict": "kept", "label": "dog", "version": VERSION}}
    known = verdicts_on_labels(analysis, verdicts)
    assert {int(analysis.task_ids[i]): int(known[i]) for i in np.flatnonzero(known >= 0)} == {204: 0}


@pytest.fixture()
def store(tmp_path):
    store = ProjectStore(tmp_path, 5)
    analysis = confusable_analysis()
    save(analysis, store.version_dir(VERSION))
    store.set_current(VERSION, 1)
    return store


def test_a_rerank_rewrites_unreviewed_flagged_scores_highest_first_and_once(store):
    analysis = store.load_analysis()
    for task, verdict in verdicts_on(analysis, ERRORS[:40], CONFUSION[:40]).items():
        store.record_verdict(int(task), verdict)
    writes = []
    entry = rerank_published(store, analysis, writes.append)
    written = writes[0]
    reviewed = {int(analysis.task_ids[i]) for i in [*ERRORS[:40], *CONFUSION[:40]]}
    flagged = {int(analysis.task_ids[i]) for i in [*ERRORS, *CONFUSION]}
    # Scores are re-ordered, not re-scaled, so a task can keep its value: it is not written again.
    assert set(written) <= flagged - reviewed and len(written) > 0.9 * len(flagged - reviewed)
    order = list(written)
    assert [written[t]["dc_error_score"] for t in order] == sorted((w["dc_error_score"] for w in written.values()),
                                                                   reverse=True)
    # the queue keeps its tasks and their scores, re-ordered: each still shows a candidate's score
    left = [i for i in range(len(analysis)) if int(analysis.task_ids[i]) in flagged - reviewed]
    shown = {int(analysis.task_ids[i]): round(float(analysis.error_score[i]), 6) for i in left}
    shown.update({t: w["dc_error_score"] for t, w in written.items()})
    assert sorted(shown.values()) == sorted(round(float(analysis.error_score[i]), 6) for i in left)
    errors_left = [int(analysis.task_ids[i]) for i in ERRORS[40:]]
    assert np.median([shown[t] for t in errors_left]) > np.median([v for t, v in shown.items() if t not in errors_left])
    assert entry["verdicts"] == 80 and entry["found_wrong"] == 40 and entry["verifier_weight"] > 0
    assert entry["tasks_rewritten"] == len(written)
    rerank_published(store, analysis, writes.append)
    assert writes[1] == {}  # the same verdicts again: nothing to write
    assert [r["tasks_rewritten"] for r in store.reranks()] == [len(written), 0]


def test_a_task_whose_old_verdict_no_longer_holds_stays_in_the_reranked_queue(store):
    # These tasks were kept as "dog" on an older version; their label is "wolf" now (changed in
    # Label Studio since), so publishing put them back in the queue, and a re-rank re-orders them too.
    analysis = store.load_analysis()
    for task, verdict in verdicts_on(analysis, ERRORS[:40], CONFUSION[:40]).items():
        store.record_verdict(int(task), verdict)
    stale = {int(analysis.task_ids[i]) for i in CONFUSION[40:]}
    for task in stale:
        store.record_verdict(task, {"verdict": "kept", "label": "dog", "version": "deconfusion-v0-old"})
    writes = []
    rerank_published(store, analysis, writes.append)
    assert len(set(writes[0]) & stale) > 0.9 * len(stale)


def test_a_rerank_made_while_publishing_is_made_again_once_published(store):
    # Publishing writes the analysis' own scores over what a re-rank during it wrote.
    analysis = store.load_analysis()
    for task, verdict in verdicts_on(analysis, ERRORS[:40], CONFUSION[:40]).items():
        store.record_verdict(int(task), verdict)
    during, after = [], []
    rerank_published(store, analysis, during.append)
    assert rerank_after_publishing(store, analysis, after.append, after_verdicts=0) is None
    entry = rerank_after_publishing(store, analysis, after.append, after_verdicts=25)
    assert after == during and entry["tasks_rewritten"] == len(during[0])
    assert not rerank_due(store, 25)  # these verdicts are re-ranked: no second run on the next webhook


def test_a_rerank_is_due_every_n_new_verdicts_and_not_on_a_repeated_webhook(store):
    analysis = store.load_analysis()
    due = []
    for n, (task, verdict) in enumerate(verdicts_on(analysis, ERRORS[:30], CONFUSION[:30]).items(), 1):
        store.record_verdict(int(task), verdict)
        if rerank_due(store, 25):
            due.append(n)
        store.record_verdict(int(task), verdict)  # the same webhook again adds no verdict
        assert not rerank_due(store, 25)
    assert due == [25, 50]
    assert not rerank_due(store, 0)


def test_a_rerank_label_studio_did_not_take_is_asked_for_again_by_the_next_verdict(store, monkeypatch):
    from ml_backend.config import Settings
    from ml_backend.errors import LabelStudioUnavailable
    from ml_backend.service.verdicts import VerdictHandler

    class LabelStudioDown:
        def __init__(self, *args, **kwargs):
            raise LabelStudioUnavailable("Label Studio at http://ls did not answer")
    monkeypatch.setattr("ml_backend.service.verdicts.LabelStudioClient", LabelStudioDown)
    analysis = store.load_analysis()
    verdicts = list(verdicts_on(analysis, ERRORS[:30], CONFUSION[:30]).items())
    for task, verdict in verdicts[:25]:
        store.record_verdict(int(task), verdict)
    assert rerank_due(store, 25)
    with pytest.raises(LabelStudioUnavailable):
        VerdictHandler(Settings.from_env({}, model_dir=str(store.root.parent.parent))).rerank(5)
    store.record_verdict(int(verdicts[25][0]), verdicts[25][1])
    assert rerank_due(store, 25)  # the 26th verdict retries it, rather than the 50th


def test_the_report_shows_how_many_reviewed_labels_were_wrong_per_iteration(store):
    analysis = store.load_analysis()
    verdicts = verdicts_on(analysis, ERRORS[:30], CONFUSION[:10])
    verdicts["400"] = {"verdict": Verdict.AMBIGUOUS.value, "label": "dog", "version": VERSION}
    history = with_review_outcomes([{"iteration": 1, "model_version": VERSION}], verdicts,
                                   [{"model_version": VERSION, "verdicts": 40}])
    assert history[0]["reviewed"] == 40 and history[0]["found_wrong"] == 30
    assert history[0]["queue_precision"] == 0.75 and len(history[0]["reranks"]) == 1
    assert "30 of 40 (75.0%)" in report_html(history, chart_url=lambda name: name)


def test_requests_during_a_rerank_coalesce_into_one_more_run():
    import threading
    from ml_backend.service.verdicts import Coalescing

    started, release, runs = threading.Event(), threading.Event(), []

    def job():
        runs.append(1)
        started.set()
        release.wait(5)

    background = Coalescing()
    background.run(5, job)
    started.wait(5)
    for _ in range(3):
        background.run(5, job)
    release.set()
    background.wait(5)
    assert len(runs) == 2


def test_the_report_counts_the_verdicts_given_since_the_analysis_ended(store, tmp_path, monkeypatch):
    from ml_backend.config import Settings
    from ml_backend.service.app import create_app
    from ml_backend.views import report
    charted, draw = {}, report.line_chart_png
    monkeypatch.setattr(report, "line_chart_png", lambda series, **kw: charted.update(series) or draw(series, **kw))
    analysis = store.load_analysis()
    store.append_history({"iteration": 1, "model_version": VERSION, "candidates": 200, "verdicts": {}})
    for task, verdict in verdicts_on(analysis, ERRORS[:30], CONFUSION[:10]).items():
        store.record_verdict(int(task), verdict)
    client = create_app(Settings.from_env({}, model_dir=str(tmp_path))).test_client()
    latest = client.get("/report/5.json").get_json()["latest"]
    assert latest["candidates"] == 160  # 200 flagged, 40 of them decided since
    assert latest["verdicts"]["relabeled_to_model"] == 30 and latest["verdicts"]["kept"] == 10
    assert "<b>160</b> images still to review" in client.get("/report/5").get_data(as_text=True)
    for name in ("candidates", "verdicts"):  # the page's charts show the same figures
        assert client.get(f"/report/5/chart/{name}.png").status_code == 200
    assert charted["images to review"] == [160]
    assert charted[report.VERDICT_KINDS["relabeled_to_model"]] == [30] and charted[report.VERDICT_KINDS["kept"]] == [10]


def test_the_history_keeps_the_images_not_analysed_and_the_tasks_whose_fields_were_refused(store):
    from ml_backend.service.analyze import history_entry
    analysis = store.load_analysis()
    analysis.summary.update(estimated_error_rate=0.1, model_accuracy_estimate=0.9, duplicate_pairs=0, leakage_pairs=0,
                            skipped=[{"item": "task-9", "reason": "task 9: no image URL in task data field 'image'"}])
    entry = history_entry(analysis, 1, {}, refused={31: "HTTP 413: too large", 4: "HTTP 400: invalid"})
    assert entry["not_analysed"] == analysis.summary["skipped"]
    assert entry["fields_refused"] == [{"task": 4, "reason": "HTTP 400: invalid"},
                                       {"task": 31, "reason": "HTTP 413: too large"}]
