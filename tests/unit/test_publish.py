"""What an analysis turns into in Label Studio: predictions, dc_ fields and tabs."""

import dataclasses

import numpy as np
import pytest

from ml_backend import publish
from ml_backend.errors import LabelConfigError
from ml_backend.ls.schema import ClassSpec
from ml_backend.vocabulary import REVIEW_QUEUE_TAB, TAB_PREFIX, TASK_FIELDS
from tests.unit.test_analysis import tiny_analysis

SPEC = ClassSpec(image_name="image", image_key="image", choices_name="label", labels=["cat", "dog"])


def with_duplicates(analysis, pairs, groups):
    return dataclasses.replace(analysis, duplicates=pairs, duplicate_group=np.array(groups))


def config(*choices: str, choices_name: str = "label") -> str:
    return (f'<View><Image name="image" value="$image"/><Choices name="{choices_name}" toName="image" '
            'choice="single">' + "".join(f'<Choice value="{c}"/>' for c in choices) + "</Choices></View>")


def test_a_class_renamed_while_the_analysis_ran_stops_publishing_with_what_to_do():
    spec = ClassSpec(image_key="image", image_name="image", choices_name="label", labels=["cat", "dog"])
    publish.check_config_unchanged({"id": 5, "label_config": config("cat", "dog", "bird")}, spec, tiny_analysis())
    with pytest.raises(LabelConfigError, match=r"project 5: .* no longer offers 'dog'.*Press Start Training again"):
        publish.check_config_unchanged({"id": 5, "label_config": config("cat", "hound")}, spec, tiny_analysis())
    with pytest.raises(LabelConfigError, match=r"no longer offers <Choices name> 'label'"):
        publish.check_config_unchanged({"id": 5, "label_config": config("cat", "dog", choices_name="class")}, spec,
                                       tiny_analysis())


def test_duplicate_groups_are_numbered_closest_copies_first():
    analysis = with_duplicates(tiny_analysis(), [
        {"a": 0, "b": 1, "kind": "near", "ssim": 0.96, "cross_split": False},
        {"a": 2, "b": 3, "kind": "exact", "ssim": 1.0, "cross_split": True}], [0, 0, 2, 2])
    assert publish.duplicate_groups(analysis) == {2: (1, 1.0), 3: (1, 1.0), 0: (2, 0.96), 1: (2, 0.96)}
    fields = publish.desired_fields(analysis, {}, lambda i: "")
    assert [fields[t]["dc_duplicate_group"] for t in (1, 2, 3, 4)] == [2, 2, 1, 1]
    assert [fields[t]["dc_leakage"] for t in (1, 2, 3, 4)] == [0, 0, 1, 1]
    tabs = {v["title"]: v for v in publish.data_manager_tabs(analysis, max_tabs=5)}
    assert tabs["De-Confusion: duplicates"]["ordering"] == "dc_duplicate_group"
    assert "dc_duplicate_group" in publish.NUMERIC_FIELDS  # else Label Studio sorts 10 before 2


def test_fields_go_only_to_flagged_or_reviewed_tasks_and_never_clash_with_user_keys():
    analysis = tiny_analysis()  # image 0: correct, no copy, not a candidate
    fields = publish.desired_fields(analysis, {"1": {"verdict": "kept", "label": "cat"}}, lambda i: f"<p>{i}</p>")
    assert set(fields) == {1, 2, 3, 4}
    assert fields[1]["dc_reviewed"] == "kept" and fields[1]["dc_candidate"] == fields[1]["dc_unreviewed"] == 0
    assert fields[2]["dc_unreviewed"] == 1 and fields[1]["dc_evidence"] == "<p>0</p>"
    assert fields[2]["dc_candidate"] == 1 and fields[2]["dc_suggested"] == "dog" and fields[2]["dc_cell"] == "cat → dog"
    assert fields[3]["dc_duplicate_group"] == 1 and fields[1]["dc_duplicate_group"] == 0
    assert all(key in TASK_FIELDS for f in fields.values() for key in f)  # the only keys the client may write
    assert set(publish.NUMERIC_FIELDS) <= TASK_FIELDS
    assert {f["dc_version"] for f in fields.values()} == {analysis.model_version}
    assert publish.desired_fields(analysis, {}, lambda i: "").keys() == {2, 3, 4}


def test_a_verdict_on_a_label_changed_since_leaves_the_task_in_the_queue():
    analysis = tiny_analysis()  # task 2: labeled cat, a candidate
    stale = {"2": {"verdict": "kept", "label": "dog", "version": "deconfusion-old"}}  # it was a dog then
    assert publish.desired_fields(analysis, stale, lambda i: "")[2]["dc_candidate"] == 1
    now = {"2": {"verdict": "relabeled_to_model", "label": "dog", "version": analysis.model_version}}
    assert publish.desired_fields(analysis, now, lambda i: "")[2]["dc_reviewed"] == "relabeled_to_model"
    gone = {"2": {"verdict": "removed", "label": "dog", "version": "deconfusion-old"}}
    assert publish.desired_fields(analysis, gone, lambda i: "")[2]["dc_excluded"] == 1


def test_an_image_removed_and_so_left_out_of_the_next_analysis_stays_excluded():
    analysis = tiny_analysis()  # tasks 1-4; task 9 was removed on an older iteration, so it is not analysed
    removed = {"9": {"verdict": "removed", "label": "cat", "given": "cat", "version": "deconfusion-old"}}
    fields = publish.desired_fields(analysis, removed, lambda i: "")
    assert fields[9] == {"dc_candidate": 0, "dc_unreviewed": 0, "dc_reviewed": "removed", "dc_excluded": 1,
                         "dc_version": analysis.model_version}  # an export filtered on dc_excluded still leaves it out
    assert 9 not in publish.desired_fields(analysis, removed, lambda i: "", tasks={2})
    undone = {"9": {**removed["9"], "verdict": "kept"}}  # its removal undone: back until the next analysis ranks it
    assert 9 not in publish.desired_fields(analysis, undone, lambda i: "")
    assert publish.review_fields(analysis, None, undone["9"])["dc_excluded"] == 0


def test_a_relabel_given_while_the_next_analysis_trained_keeps_its_task_out_of_the_queue():
    # the analysis read task 2 labeled cat at 10:00; a reviewer relabeled it dog on the version before, at 10:05
    analysis = tiny_analysis()
    analysis.summary["labels_as_of"] = "2026-12-05T10:00:00.000000+00:00"
    meanwhile = {"2": {"verdict": "relabeled_to_model", "label": "dog", "given": "cat", "version": "deconfusion-old",
                       "updated_at": "2026-12-05T10:05:00.123456Z"}}
    fields = publish.desired_fields(analysis, meanwhile, lambda i: "")[2]
    assert fields["dc_candidate"] == 0 and fields["dc_unreviewed"] == 0 and fields["dc_reviewed"] == "relabeled_to_model"
    before = {"2": {**meanwhile["2"], "updated_at": "2026-12-05T09:55:00Z"}}  # the analysis saw it, then a relabel back
    assert publish.desired_fields(analysis, before, lambda i: "")[2]["dc_candidate"] == 1
    del analysis.summary["labels_as_of"]  # an analysis that does not know when it read the labels
    assert publish.desired_fields(analysis, meanwhile, lambda i: "")[2]["dc_candidate"] == 1


def test_a_flagged_cells_tab_lists_the_part_to_relabel_together():
    analysis = tiny_analysis()
    analysis.cells[0].update(interpretation_error=True, together=1)  # task 2: labeled cat, the model says dog
    tab = publish.cell_tabs(analysis, max_tabs=5)[0]
    assert tab["title"] == f"{TAB_PREFIX}: cat → dog (1 of 1, relabel together)"
    assert ("dc_together", "equal", "Number", 1) in tab["filters"] and "dc_together" in publish.NUMERIC_FIELDS
    fields = publish.desired_fields(analysis, {}, lambda i: "")
    assert fields[2]["dc_together"] == 1 and fields[4]["dc_together"] == 0
    analysis.cells[0].update(interpretation_error=False, together=0)
    tab = publish.cell_tabs(analysis, max_tabs=5)[0]
    assert tab["title"] == f"{TAB_PREFIX}: cat → dog (1)" and all(f[0] != "dc_together" for f in tab["filters"])


def test_review_queue_comes_first_and_sorts_by_error_score():
    tabs = publish.data_manager_tabs(tiny_analysis(), max_tabs=5)
    assert tabs[0]["title"] == REVIEW_QUEUE_TAB and tabs[0]["ordering"] == "-dc_error_score"
    assert tabs[1]["title"] == "De-Confusion: cat → dog (1)" and tabs[1]["cell"] == (0, 1)
    assert ("dc_unreviewed", "equal", "Number", 1) in tabs[1]["filters"]  # reviewed images leave the cell
    assert all(t["title"].startswith(TAB_PREFIX) for t in tabs)


def test_prediction_is_the_model_label_on_the_projects_own_controls():
    analysis = tiny_analysis()
    prediction = publish.prediction(analysis, 1, SPEC)
    assert prediction["task"] == 2 and prediction["model_version"] == analysis.model_version
    assert prediction["result"] == [{"from_name": "label", "to_name": "image", "type": "choices",
                                     "value": {"choices": ["dog"]}}]
    assert abs(prediction["score"] - 0.8) < 1e-6


def queue_tab(fields_by_task):
    """The review queue tab as Label Studio shows it: candidates, highest error score first."""
    rows = [(f["dc_error_score"], t) for t, f in fields_by_task.items() if f.get("dc_candidate") == 1]
    return [t for _, t in sorted(rows, key=lambda row: (-row[0], row[1]))]


def test_after_the_first_batch_the_queue_tabs_leading_rows_are_final():
    rng = np.random.default_rng(3)
    tasks = range(60)
    # an older version's fields on some tasks, the new analysis' on others: overlapping queues
    now = {t: {"dc_candidate": int(rng.random() < 0.5), "dc_error_score": float(rng.random())}
           for t in tasks if rng.random() < 0.6}
    wanted = {t: {"dc_candidate": int(rng.random() < 0.5), "dc_error_score": float(rng.random())}
              for t in tasks if rng.random() < 0.6}
    stale = {t: now.get(t, {}) for t in set(now) | set(wanted) if now.get(t, {}) != wanted.get(t, {})}
    first, queue, rest = publish.review_order(stale, wanted, lead=5)

    assert set(first) | set(queue) | set(rest) == set(stale) and len(first) + len(queue) + len(rest) == len(stale)
    final = queue_tab(wanted)
    midway = queue_tab({t: first.get(t, now.get(t, {})) for t in tasks})
    assert midway[:5] == final[:5] and len(first) < len(stale) / 2
    # the rest of the queue goes top of the tab first; tasks never in the tab come last
    place = [max(now.get(t, {}).get("dc_error_score", -1) * now.get(t, {}).get("dc_candidate", 0),
                 wanted.get(t, {}).get("dc_error_score", -1) * wanted.get(t, {}).get("dc_candidate", 0))
             for t in queue]
    assert place == sorted(place, reverse=True)
    assert all(f.get("dc_candidate") != 1 and now.get(t, {}).get("dc_candidate") != 1 for t, f in rest.items())
    # with a queue shorter than the lead, every write that touches the tab comes first
    first, queue, _ = publish.review_order(stale, wanted, lead=100)
    assert not queue and queue_tab({t: first.get(t, now.get(t, {})) for t in tasks}) == final
