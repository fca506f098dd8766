"""Who made the labels: annotations by user -> consensus, disagreement fields and tab, and the
report's per-annotator table."""

from ml_backend import publish
from ml_backend.dataset import Record
from ml_backend.service.analyze import labelers_annotations
from ml_backend.service.crowd import annotator_report, crowd_summary
from ml_backend.views.report import report_html
from tests.unit.test_analysis import tiny_analysis

# tiny_analysis: tasks 1-4 labeled cat, cat, dog, dog; the model says cat, dog, dog, cat;
# tasks 2 and 4 are review candidates.
ANNOTATIONS = {1: [(10, "cat"), (20, "cat")],
               2: [(10, "cat"), (20, "dog")],   # the two disagree; the model sides with user 20
               3: [(10, "dog")],
               4: [(10, "dog"), (None, "cat")]}  # an annotation whose author Label Studio lost


def test_disagreements_get_a_consensus_and_a_rank_and_agreements_do_not():
    crowd = crowd_summary(tiny_analysis(), ANNOTATIONS)
    assert crowd["annotators"] == [-1, 10, 20] and crowd["multi_annotated"] == 3
    assert set(crowd["disagreements"]) == {"2", "4"}
    assert sorted(d["rank"] for d in crowd["disagreements"].values()) == [1, 2]
    assert crowd["disagreements"]["2"]["consensus"] == "dog"
    fields = publish.desired_fields(tiny_analysis(), {}, lambda i: "", crowd)
    assert fields[2]["dc_consensus"] == "dog" and fields[2]["dc_disagreement_rank"] in (1, 2)
    assert "dc_consensus" not in fields.get(1, {})
    tabs = publish.data_manager_tabs(tiny_analysis(), max_tabs=5, crowd=crowd)
    assert tabs[-1]["title"] == publish.DISAGREEMENT_TAB and tabs[-1]["ordering"] == "dc_disagreement_rank"
    assert publish.DISAGREEMENT_TAB not in {t["title"] for t in publish.data_manager_tabs(tiny_analysis(), max_tabs=5)}


def test_one_annotator_per_task_means_nothing_to_reconcile():
    crowd = crowd_summary(tiny_analysis(), {t: labels[:1] for t, labels in ANNOTATIONS.items()})
    assert crowd["multi_annotated"] == 0 and crowd["disagreements"] == {}


def test_the_report_names_who_labeled_what_was_flagged_and_found_wrong():
    crowd = crowd_summary(tiny_analysis(), ANNOTATIONS)
    verdicts = {"2": {"verdict": "relabeled_to_model", "label": "dog", "given": "cat"},
                "4": {"verdict": "kept", "label": "dog", "given": "dog"}}
    table = {row["name"]: row for row in annotator_report(crowd, verdicts, {"10": "ann@example.org"})}
    ann, other = table["ann@example.org"], table["user 20"]
    assert ann["labels"] == 4 and ann["flagged"] == 2  # her cat on task 2 and dog on task 4 are the labels doubted
    assert ann["judged"] == 2 and ann["wrong"] == 1    # cat on task 2 was wrong, dog on task 4 right
    assert other["labels"] == 2 and other["wrong"] == 0
    assert table["unknown"]["wrong"] == 1              # said cat on task 4, whose dog was confirmed
    assert annotator_report({}, verdicts, {}) == []
    page = report_html([{"iteration": 1, "model_version": "v"}], chart_url=str, annotators=list(table.values()))
    assert "ann@example.org" in page and "1 (50.0%)" in page


def test_annotations_of_deleted_users_each_count_and_make_one_unknown_row():
    # task 1: a deleted user said cat, another deleted user dog, user 10 cat (Label Studio exports no author)
    record = Record("t1.png", b"", "cat", task_id=1, annotations=((5, None, "cat"), (6, None, "dog"), (7, 10, "cat")))
    labelers = labelers_annotations([record], {})
    assert labelers == {1: [(None, "cat"), (None, "dog"), (10, "cat")]}
    crowd = crowd_summary(tiny_analysis(), labelers)
    assert crowd["annotators"] == [-1, 10] and crowd["multi_annotated"] == 1
    assert crowd["disagreements"]["1"]["agreement"] == round(2 / 3, 4)
    table = {row["name"]: row for row in annotator_report(crowd, {}, {})}
    assert table["unknown"]["labels"] == 2 and table["user 10"]["labels"] == 1


def test_removing_a_copy_does_not_count_against_who_labeled_it():
    crowd = crowd_summary(tiny_analysis(), ANNOTATIONS)
    removed = {"3": {"verdict": "removed", "label": "dog", "given": "dog"}}  # user 10's dog on task 3: a copy
    table = {row["annotator"]: row for row in annotator_report(crowd, removed, {})}
    assert table[10]["judged"] == 0 and table[10]["wrong"] == 0


def test_a_labeler_who_later_reviews_the_task_keeps_the_label_they_gave():
    # user 10 labeled cat, user 20 cat; user 10, reviewing later, relabeled it dog in a new annotation
    record = Record("t1.png", b"", "dog", task_id=1, annotations=((5, 10, "cat"), (6, 20, "cat"), (9, 10, "dog")))
    review = {"1": {"verdict": "relabeled_other", "label": "dog", "given": "cat", "annotation_id": 9}}
    assert labelers_annotations([record], review) == {1: [(10, "cat"), (20, "cat")]}
    assert labelers_annotations([record], {}) == {1: [(10, "dog"), (20, "cat")]}  # each one's newest
    # user 30 reviewed twice, in two annotations: the first, replaced, is a review too
    record = Record("t1.png", b"", "cat", task_id=1, annotations=((5, 10, "cat"), (7, 30, "dog"), (8, 30, "cat")))
    twice = {"1": {"verdict": "kept", "label": "cat", "given": "cat", "annotation_id": 8, "earlier_annotations": [7]}}
    assert labelers_annotations([record], twice) == {1: [(10, "cat")]}
