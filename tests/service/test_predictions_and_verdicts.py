"""The real Predictor and verdict recording, on a real stored analysis and saved fold models
(Label Studio's side of both is exercised end to end in tests/integration)."""

import base64
import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from ml_backend.ls.schema import ClassSpec
from ml_backend.model import cross_fit
from ml_backend.model.ensemble import ModelSet
from ml_backend.service.predictions import Predictor
from ml_backend.service.jobs import JobQueueUnavailable
from ml_backend.service.verdicts import (
    VerdictHandler, _mark_reviewed, forget_verdicts, record_verdicts, retrain_due, reviews_left)
from ml_backend.analysis import save
from ml_backend.dataset import Record
from ml_backend.service.analyze import labelers_annotations
from ml_backend.service.crowd import CROWD_FILE, annotator_report, crowd_summary
from ml_backend.store import ProjectStore, write_json
from ml_backend.vocabulary import UNTRAINED_VERSION, VERDICT_CONTROL, Verdict
from tests.unit.test_analysis import tiny_analysis
from tests.unit.test_model import make_squares

SPEC = ClassSpec(image_key="image", image_name="image", choices_name="label", labels=["cat", "dog"])
CONFIG = ('<View><Image name="image" value="$image"/><Choices name="label" toName="image" choice="single">'
          '<Choice value="cat"/><Choice value="dog"/></Choices></View>')
PROJECT = 7


@pytest.fixture()
def store(settings):
    """A project whose current analysis is ``tiny_analysis`` (tasks 1-4: cat, cat, dog, dog; the
    model says cat, dog, dog, cat) with fold models that tell squares in two corners apart."""
    store = ProjectStore(settings.model_dir, PROJECT)
    analysis = tiny_analysis()
    save(analysis, store.version_dir(analysis.model_version))
    images, labels, _ = make_squares(per_class=30)
    two = labels < 2
    _, ensembles = cross_fit(images[two], labels[two], 2, folds=2, epochs=8, seed=0, backbone="small_cnn",
                             class_names=["cat", "dog"])
    ModelSet([ensembles]).save(store.version_dir(analysis.model_version) / "model.pt")
    store.update_project_info(spec=SPEC.__dict__)
    store.set_current(analysis.model_version, 1)
    return store


def png_data_uri(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels[:, :, 0]).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def choice_of(answer: dict) -> str | None:
    return answer["result"][0]["value"]["choices"][0] if answer["result"] else None


def test_analysed_tasks_get_the_stored_suggestion_with_the_current_version(settings, store):
    answers = Predictor(settings)(PROJECT, [{"id": 2}, {"id": 4}], CONFIG)
    assert [choice_of(a) for a in answers] == ["dog", "cat"]
    assert answers[0]["score"] == pytest.approx(0.8) and answers[1]["score"] == pytest.approx(0.6)
    assert {a["model_version"] for a in answers} == {"deconfusion-test"}


def test_a_new_task_is_classified_by_the_saved_fold_models_with_class_names(settings, store):
    images, labels, _ = make_squares(per_class=3, seed=5)
    tasks = [{"id": 100 + n, "data": {"image": png_data_uri(images[n])}} for n in (0, 1, 3, 4)]
    answers = Predictor(settings)(PROJECT, tasks, CONFIG)
    assert [choice_of(a) for a in answers] == [["cat", "dog"][labels[n]] for n in (0, 1, 3, 4)]
    assert all(0.5 < a["score"] <= 1 for a in answers)


def test_an_unreadable_new_image_gets_an_empty_answer_not_an_error(settings, store):
    answer = Predictor(settings)(PROJECT, [{"id": 100, "data": {"image": "data:image/png;base64,bm90IGFuIGltYWdl"}}],
                                 CONFIG)[0]
    assert answer["result"] == [] and answer["score"] == 0.0


def test_a_project_without_analysis_answers_untrained(settings):
    answer = Predictor(settings)(99, [{"id": 1}], CONFIG)[0]
    assert answer == {"result": [], "score": 0.0, "model_version": UNTRAINED_VERSION}


def test_a_new_analysis_version_is_answered_at_once(settings, store):
    predictor = Predictor(settings)
    assert choice_of(predictor(PROJECT, [{"id": 1}], CONFIG)[0]) == "cat"
    newer = dataclasses.replace(tiny_analysis(), model_version="deconfusion-newer",
                                predicted=np.array([1, 1, 1, 0]))
    save(newer, store.version_dir(newer.model_version))
    store.set_current(newer.model_version, 2)
    answer = predictor(PROJECT, [{"id": 1}], CONFIG)[0]
    assert choice_of(answer) == "dog" and answer["model_version"] == "deconfusion-newer"


def test_projects_whose_versions_have_the_same_name_keep_their_own_models(settings, store):
    # two projects' first analyses versioned in the same second get the same name
    images, labels, _ = make_squares(per_class=30)
    two = labels < 2
    _, ensembles = cross_fit(images[two], labels[two], 2, folds=2, epochs=8, seed=0, backbone="small_cnn",
                             class_names=["car", "truck"])
    other = ProjectStore(settings.model_dir, PROJECT + 1)
    analysis = dataclasses.replace(tiny_analysis(), class_names=["car", "truck"])
    save(analysis, other.version_dir(analysis.model_version))
    ModelSet([ensembles]).save(other.version_dir(analysis.model_version) / "model.pt")
    other.update_project_info(spec=ClassSpec("image", "image", "label", ["car", "truck"]).__dict__)
    other.set_current(analysis.model_version, 1)
    new_task = [{"id": 100, "data": {"image": png_data_uri(images[0])}}]
    predictor = Predictor(settings)
    assert choice_of(predictor(PROJECT, new_task, CONFIG)[0]) == "cat"
    assert choice_of(predictor(PROJECT + 1, new_task, None)[0]) == "car"
    # a newer version replaces the project's models in the web process instead of joining them
    newer = dataclasses.replace(tiny_analysis(), model_version="deconfusion-newer")
    save(newer, store.version_dir(newer.model_version))
    ModelSet.load(store.version_dir("deconfusion-test") / "model.pt").save(store.version_dir(newer.model_version)
                                                                             / "model.pt")
    store.set_current(newer.model_version, 2)
    assert choice_of(predictor(PROJECT, new_task, CONFIG)[0]) == "cat"
    assert sorted((project, version) for project, (version, _) in predictor._models.items()) == [
        (PROJECT, "deconfusion-newer"), (PROJECT + 1, "deconfusion-test")]


def annotation(annotation_id, task, label, verdict=None, cancelled=False, saved="2026-12-05T10:00:00Z"):
    result = [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]
    if verdict is not None:
        result.append({"from_name": VERDICT_CONTROL, "to_name": "image", "type": "choices",
                       "value": {"choices": [verdict.choice]}})
    return {"id": annotation_id, "task": task, "result": result, "was_cancelled": cancelled, "updated_at": saved}


def test_verdicts_are_recorded_once_per_decision_and_name_what_the_reviewer_did(store):
    analysis = store.load_analysis()
    events = [annotation(11, 2, "dog"),   # task 2 labeled cat, model says dog: took the model's label
              annotation(12, 1, "cat"),   # kept
              annotation(13, 3, "dog", Verdict.REMOVED),
              annotation(14, 4, "cat", cancelled=True),
              annotation(15, 999, "cat")]  # not in the analysis
    assert record_verdicts(store, analysis, events) == [2, 1, 3]
    assert record_verdicts(store, analysis, events) == []  # the same webhook again changes nothing
    kinds = {t: v["verdict"] for t, v in store.verdicts().items()}
    assert kinds == {"2": Verdict.RELABELED_TO_MODEL, "1": Verdict.KEPT, "3": Verdict.REMOVED}
    assert record_verdicts(store, analysis, [annotation(16, 1, "dog")]) == [1]  # a changed mind is recorded
    assert store.verdicts()["1"]["verdict"] == Verdict.RELABELED_OTHER  # the model said cat too
    assert store.verdicts()["1"]["earlier_annotations"] == [12]  # a review too: never counted as a labeler's label
    assert record_verdicts(store, analysis, [annotation(13, 3, "dog")]) == [3]  # the removal taken back
    assert store.verdicts()["3"]["verdict"] == Verdict.KEPT


def test_deleted_annotations_take_their_verdicts_with_them(store):
    record_verdicts(store, store.load_analysis(), [annotation(11, 2, "dog"), annotation(12, 1, "cat")])
    assert forget_verdicts(store, {11, 404}, held=lambda ids: set()) == [2]
    assert list(store.verdicts()) == ["1"]


def test_an_older_annotation_whose_event_comes_late_does_not_replace_the_newer_verdict(store):
    analysis = store.load_analysis()
    later, earlier = annotation(21, 2, "dog", saved="2026-12-05T10:07:00Z"), annotation(11, 2, "cat",
                                                                                        saved="2026-12-05T10:01:00Z")
    assert record_verdicts(store, analysis, [later]) == [2]
    assert record_verdicts(store, analysis, [earlier]) == []  # its event was handled second
    assert store.verdicts()["2"]["annotation_id"] == 21 and store.verdicts()["2"]["label"] == "dog"
    assert record_verdicts(store, analysis, [{**earlier, "updated_at": "2026-12-05T10:09:00Z"}]) == [2]  # updated


def test_an_annotation_saved_again_unchanged_on_a_later_iteration_keeps_its_verdict(store):
    # Task 2 was relabeled dog on an older iteration; the next analysis read "dog". Saving that
    # annotation again (Update without a change) is no "kept" on the new iteration.
    older = {"verdict": "relabeled_to_model", "label": "dog", "given": "cat", "annotation_id": 11,
             "version": "deconfusion-older", "updated_at": "2026-12-05T10:00:00Z"}
    store.record_verdict(2, older)
    analysis = dataclasses.replace(store.load_analysis(), labels=np.array([0, 1, 1, 1]))
    assert record_verdicts(store, analysis, [annotation(11, 2, "dog", saved="2026-12-05T11:00:00Z")]) == []
    assert store.verdicts()["2"] == older
    assert record_verdicts(store, analysis, [annotation(11, 2, "cat", saved="2026-12-05T11:05:00Z")]) == [2]
    assert store.verdicts()["2"]["version"] == analysis.model_version  # a changed answer is a new verdict


class MergedFields:
    """Label Studio's side of marking reviewed tasks: the fields merged into each task."""

    def __init__(self):
        self.merged = {}

    def merge_task_fields(self, project_id, updates):
        self.merged.update(updates)


def test_a_removal_the_next_analysis_left_out_can_be_taken_back_and_given_again(store):
    # task 9 was removed on an older iteration, so the current analysis (tasks 1-4) left it out
    store.record_verdict(9, {"verdict": "removed", "label": "cat", "given": "cat", "annotation_id": 31,
                             "version": "deconfusion-older", "updated_at": "2026-12-05T10:00:00Z"})
    analysis = store.load_analysis()
    client = MergedFields()
    assert record_verdicts(store, analysis, [annotation(31, 9, "cat", saved="2026-12-05T11:00:00Z")]) == [9]
    assert "9" not in store.verdicts()  # taken back: the next analysis ranks the image
    _mark_reviewed(client, PROJECT, store, analysis, [9])
    assert client.merged[9]["dc_excluded"] == 0 and client.merged[9]["dc_unreviewed"] == 1
    assert record_verdicts(store, analysis, [annotation(31, 9, "cat", Verdict.REMOVED,
                                                        saved="2026-12-05T11:05:00Z")]) == [9]  # removed again
    assert store.verdicts()["9"]["verdict"] == Verdict.REMOVED
    _mark_reviewed(client, PROJECT, store, analysis, [9])
    assert client.merged[9]["dc_excluded"] == 1
    assert record_verdicts(store, analysis, [annotation(32, 8, "cat")]) == []  # no verdict on a task never analysed
    assert record_verdicts(store, analysis, [annotation(33, 8, "cat", Verdict.REMOVED)]) == [8]  # but a removal
    _mark_reviewed(client, PROJECT, store, analysis, [8])  # fields we can find and remove again: with our version
    assert client.merged[8]["dc_excluded"] == 1 and client.merged[8]["dc_version"] == analysis.model_version
    store.record_verdict(1, {"verdict": "kept", "label": "cat", "given": "cat", "annotation_id": 34,
                             "version": analysis.model_version, "updated_at": "2026-12-05T11:10:00Z"})
    _mark_reviewed(client, PROJECT, store, analysis, [1])  # an analysed task nothing flagged: our version too
    assert client.merged[1]["dc_reviewed"] == "kept" and client.merged[1]["dc_version"] == analysis.model_version


class TaskAnnotations:
    """Label Studio's side of reviews_left: a task and the annotations it holds."""

    def __init__(self, annotations):
        self.annotations = annotations

    def get_task(self, task_id):
        return {"id": task_id, "annotations": [a for a in self.annotations if a["task"] == task_id]}


def test_a_task_whose_second_reviewer_annotation_is_deleted_keeps_the_first_reviewers_verdict(store):
    analysis = dataclasses.replace(store.load_analysis(), summary={"labels_as_of": "2026-12-05T09:00:00Z"})
    labeler = annotation(5, 2, "cat", saved="2026-12-05T08:00:00Z")  # the label the analysis read
    first, second = annotation(11, 2, "dog", saved="2026-12-05T10:00:00Z"), annotation(12, 2, "cat",
                                                                                       saved="2026-12-05T10:30:00Z")
    record_verdicts(store, analysis, [first, second])
    assert forget_verdicts(store, {12}, held=lambda ids: {11} & set(ids)) == [2]
    record_verdicts(store, analysis, reviews_left(TaskAnnotations([labeler, first]), analysis, [2]))
    assert store.verdicts()["2"]["annotation_id"] == 11 and store.verdicts()["2"]["verdict"] == "relabeled_to_model"
    assert forget_verdicts(store, {11}, held=lambda ids: set()) == [2]
    assert reviews_left(TaskAnnotations([labeler]), analysis, [2]) == []  # only the labeler's: back in the queue


def test_deleting_a_second_review_gives_the_task_back_the_earlier_iterations_review(store):
    older = dataclasses.replace(store.load_analysis(), model_version="deconfusion-older",
                                summary={"labels_as_of": "2026-12-05T08:00:00Z"})
    record_verdicts(store, older, [annotation(11, 2, "dog", saved="2026-12-05T09:00:00Z")])  # relabeled on v1
    first = store.verdicts()["2"]
    # v2 read task 2 as dog (the relabel), and a second reviewer changed it to cat on v2
    analysis = dataclasses.replace(store.load_analysis(), labels=np.array([0, 1, 1, 1]),
                                   summary={"labels_as_of": "2026-12-05T09:30:00Z"})
    record_verdicts(store, analysis, [annotation(12, 2, "cat", saved="2026-12-05T10:00:00Z")])
    assert store.verdicts()["2"]["earlier_annotations"] == [11]
    assert forget_verdicts(store, {12}, held=lambda ids: {11} & set(ids)) == [2]  # annotation 12 deleted
    assert store.verdicts()["2"] == first  # the v1 review stands again
    record = Record("t2.png", b"", "dog", task_id=2, annotations=((5, 10, "cat"), (11, 30, "dog")))
    assert labelers_annotations([record], store.verdicts()) == {2: [(10, "cat")]}  # 11 stays a review
    assert forget_verdicts(store, {11}, held=lambda ids: set()) == [2] and "2" not in store.verdicts()
    # three reviews: each verdict keeps the ones before it, one level deep, newest first
    record_verdicts(store, older, [annotation(11, 2, "dog", saved="2026-12-05T09:00:00Z")])
    record_verdicts(store, analysis, [annotation(12, 2, "cat", saved="2026-12-05T10:00:00Z")])
    record_verdicts(store, analysis, [annotation(13, 2, "dog", saved="2026-12-05T10:30:00Z")])
    assert [v["annotation_id"] for v in store.verdicts()["2"]["replaced"]] == [12, 11]
    assert not any("replaced" in v for v in store.verdicts()["2"]["replaced"])
    assert forget_verdicts(store, {13, 12}, held=lambda ids: {11} & set(ids)) == [2]
    assert store.verdicts()["2"] == first


def test_a_review_given_back_that_no_longer_speaks_for_the_label_puts_its_task_back_in_the_queue(store):
    older = dataclasses.replace(store.load_analysis(), model_version="deconfusion-older",
                                summary={"labels_as_of": "2026-12-05T08:00:00Z"})
    record_verdicts(store, older, [annotation(11, 2, "dog", saved="2026-12-05T09:00:00Z")])  # relabeled on v1
    middle = dataclasses.replace(older, model_version="deconfusion-middle", labels=np.array([0, 1, 1, 1]),
                                 summary={"labels_as_of": "2026-12-05T09:30:00Z"})
    record_verdicts(store, middle, [annotation(12, 2, "cat", saved="2026-12-05T10:00:00Z")])  # back to cat on v2
    analysis = dataclasses.replace(store.load_analysis(), summary={"labels_as_of": "2026-12-05T10:30:00Z"})  # cat
    assert forget_verdicts(store, {12}, held=lambda ids: {11} & set(ids)) == [2]
    client = MergedFields()
    _mark_reviewed(client, PROJECT, store, analysis, [2])  # v1's "dog" is not this analysis' label
    assert client.merged[2]["dc_unreviewed"] == 1 and client.merged[2]["dc_reviewed"] == ""


def test_a_reviewer_who_edits_an_earlier_iterations_review_in_place_is_no_labeler(store):
    def by_30(label, saved):  # the review annotation, created at 09:00 and saved again in place later
        return {**annotation(11, 2, label, saved=saved), "created_at": "2026-12-05T09:00:00Z", "completed_by": 30}
    older = dataclasses.replace(store.load_analysis(), model_version="deconfusion-older",
                                summary={"labels_as_of": "2026-12-05T08:00:00Z"})
    record_verdicts(store, older, [by_30("dog", "2026-12-05T09:00:00Z")])
    analysis = dataclasses.replace(store.load_analysis(), labels=np.array([0, 1, 1, 1]),
                                   summary={"labels_as_of": "2026-12-05T09:30:00Z"})
    write_json(store.version_dir(analysis.model_version) / CROWD_FILE, crowd_summary(analysis, {2: [(10, "cat")]}))
    record_verdicts(store, analysis, [by_30("cat", "2026-12-05T10:00:00Z")])  # a change of mind, in place
    assert "read_labels" not in store.verdicts()["2"]
    record = Record("t2.png", b"", "cat", task_id=2, annotations=((5, 10, "cat"), (11, 30, "cat")))
    assert labelers_annotations([record], store.verdicts()) == {2: [(10, "cat")]}


def test_a_label_a_reviewer_changes_in_place_stays_its_labelers_in_the_annotator_table(store):
    analysis = dataclasses.replace(store.load_analysis(), summary={"labels_as_of": "2026-12-05T09:00:00Z"})
    # task 1: user 20 said dog, then user 10 cat (the label the analysis read); task 4: user 20 said dog
    write_json(store.version_dir(analysis.model_version) / CROWD_FILE,
               crowd_summary(analysis, {1: [(20, "dog"), (10, "cat")], 4: [(20, "dog")]}))

    def in_place(annotation_id, task, label):  # Label Studio keeps the annotation's id and author on Update
        return {**annotation(annotation_id, task, label), "created_at": "2026-12-05T08:00:00Z", "completed_by": 20}

    record_verdicts(store, analysis, [in_place(7, 4, "cat"), in_place(6, 1, "cat")])
    verdicts = store.verdicts()
    assert verdicts["4"]["verdict"] == Verdict.RELABELED_TO_MODEL  # the model said cat
    now = [Record("t1.png", b"", "cat", task_id=1, annotations=((6, 20, "cat"), (8, 10, "cat"))),
           Record("t4.png", b"", "cat", task_id=4, annotations=((7, 20, "cat"),))]
    labelers = labelers_annotations(now, verdicts)
    assert labelers == {1: [(20, "dog"), (10, "cat")], 4: [(20, "dog")]}  # what user 20 labeled, not the fix
    row = next(r for r in annotator_report(crowd_summary(analysis, labelers), verdicts, {}) if r["annotator"] == 20)
    assert row["labels"] == 2 and row["judged"] == row["wrong"] == 2  # dog on task 1 (cat kept), on task 4 (fixed)
    # a later review in an annotation of its own keeps what user 20 labeled
    record_verdicts(store, analysis, [annotation(9, 4, "dog", saved="2026-12-05T11:00:00Z")])
    later = [now[0], Record("t4.png", b"", "dog", task_id=4, annotations=((7, 20, "cat"), (9, 30, "dog")))]
    assert labelers_annotations(later, store.verdicts())[4] == [(20, "dog")]


def test_a_retraining_is_due_once_per_version_after_enough_verdicts(store):
    analysis = store.load_analysis()
    assert not retrain_due(store, 2)
    record_verdicts(store, analysis, [annotation(11, 2, "dog"), annotation(12, 1, "cat")])
    assert not retrain_due(store, 0) and not retrain_due(store, 3)
    assert retrain_due(store, 2)
    assert not retrain_due(store, 2)  # already requested for this version


def test_a_retraining_the_job_queue_could_not_take_is_asked_for_again(settings, store):
    record_verdicts(store, store.load_analysis(), [annotation(11, 2, "dog"), annotation(12, 1, "cat")])

    def queue_down(project_id):
        raise JobQueueUnavailable("Redis at redis://nowhere is unreachable")

    assert retrain_due(store, 2)
    VerdictHandler(settings, submit=queue_down)._submit_retraining(store, PROJECT)
    assert retrain_due(store, 2)  # the next verdict asks again
