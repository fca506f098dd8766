"""What a reviewer needs is published first: the flagged tasks' predictions, the review queue's
fields, the tabs and the overview; the other flagged tasks' fields, every other task's prediction
and the removal of old versions follow. (The writes
themselves are exercised against a real Label Studio in tests/integration.)"""

from ml_backend.config import Settings
from ml_backend.errors import LabelStudioUnavailable
from ml_backend.ls.schema import ClassSpec
from ml_backend.publish import publish_analysis
from ml_backend.store import ProjectStore
from tests.unit.test_analysis import tiny_analysis

SPEC = ClassSpec(image_key="image", image_name="image", choices_name="label", labels=["cat", "dog"])


class RecordingClient:
    """Records the order of the writes publishing makes; answers like an empty Label Studio."""

    def __init__(self, fields_now=None):
        self.calls = []
        self.fields_now = fields_now or {}  # task id -> our fields it carries before publishing
        self.written = {}  # task id -> the fields its last write gave it
        self.batches = []  # each write's fields
        self.refused_writes = {}  # as LabelStudioClient: task id -> why a write was refused
        self.deleted = set()  # tasks deleted in Label Studio: a write finds them gone
        self.deleted_tasks = set()  # as LabelStudioClient: the deleted tasks its writes found

    def create_predictions(self, project_id, predictions):
        self.calls.append(("predictions", sorted(p["task"] for p in predictions)))

    def delete_predictions(self, project_id, keep_version=None):
        self.calls.append(("delete_old", keep_version))

    def stale_task_fields(self, project_id, wanted):
        tasks = set(self.fields_now) | set(wanted)
        return {t: self.fields_now.get(t, {}) for t in tasks if self.fields_now.get(t, {}) != wanted.get(t, {})}

    def write_task_fields(self, project_id, fields, progress=None):
        self.deleted_tasks |= self.deleted & set(fields)
        self.calls.append(("fields", sorted(fields)))
        self.written.update(fields)
        self.batches.append(dict(fields))
        for done in range(1, len(fields) + 1):
            if progress:
                progress(done, len(fields))

    def delete_views(self, project_id, prefix):
        self.calls.append(("delete_tabs", prefix))

    def create_view(self, project_id, title, *args, **kwargs):
        self.calls.append(("tab", title))
        return len(self.calls)

    def find_project(self, project_id):
        return None

    def create_project(self, title, config):
        self.calls.append(("overview_project", title))
        return 99

    def replace_tasks(self, project_id, tasks):
        self.calls.append(("overview_tasks", len(tasks)))


def test_the_review_is_ready_before_the_other_predictions_and_the_old_version_go(tmp_path):
    # Task 1 is in the queue of an older version; tasks 2 and 4 are candidates now, task 3 only
    # a duplicate (tiny_analysis).
    client, stages = RecordingClient({1: {"dc_candidate": 1, "dc_version": "old"}}), []
    analysis = tiny_analysis()
    publish_analysis(client, 5, {"title": "Pets"}, SPEC, analysis, Settings(model_dir=str(tmp_path)),
                     ProjectStore(tmp_path, 5), lambda stage, done, total: stages.append((stage, done, total)))
    kinds = [kind for kind, _ in client.calls]
    # the queue's tasks (entering or leaving it) get their fields before the tabs exist
    assert client.calls[0] == ("predictions", [2, 3, 4]) and client.calls[1] == ("fields", [1, 2, 4])
    assert kinds.index("tab") > 1
    # the duplicate's fields follow the overview, then the other predictions and the old version go
    assert client.calls[-3:] == [("fields", [3]), ("predictions", [1]), ("delete_old", analysis.model_version)]
    assert kinds.index("overview_tasks") < len(kinds) - 3
    assert ("publish fields", 3, 3) in stages and stages.index(("publish fields", 3, 3)) < stages.index(("publish", 2, 4))
    assert stages.index(("publish", 4, 4)) < stages.index(("more fields", 1, 1)) < stages.index(("predictions", 0, 1))
    # every task has this version's prediction before the old version's are removed
    assert stages.index(("predictions", 1, 1)) < stages.index(("old predictions", 0, 1))


def test_old_predictions_label_studio_does_not_remove_in_time_do_not_fail_the_live_version(tmp_path):
    class SlowToDelete(RecordingClient):
        def delete_predictions(self, project_id, keep_version=None):
            raise LabelStudioUnavailable("Label Studio did not answer DELETE /api/projects/5/model-versions/ in 600 s")

    left = publish_analysis(SlowToDelete(), 5, {"title": "Pets"}, SPEC, tiny_analysis(),
                            Settings(model_dir=str(tmp_path)), ProjectStore(tmp_path, 5), lambda *args: None)
    assert "did not answer DELETE" in left
    assert publish_analysis(RecordingClient(), 5, {"title": "Pets"}, SPEC, tiny_analysis(),
                            Settings(model_dir=str(tmp_path)), ProjectStore(tmp_path, 5), lambda *args: None) == ""


def test_the_rest_of_a_long_queue_follows_the_tabs_in_rank_order(tmp_path, monkeypatch):
    # A first batch of one task: task 2 (the higher score) comes before the tabs, task 4 after.
    monkeypatch.setattr("ml_backend.publish.REVIEW_LEAD", 1)
    client, stages = RecordingClient(), []
    analysis = tiny_analysis()
    publish_analysis(client, 5, {"title": "Pets"}, SPEC, analysis, Settings(model_dir=str(tmp_path)),
                     ProjectStore(tmp_path, 5), lambda stage, done, total: stages.append((stage, done, total)))
    assert analysis.error_score[analysis.task_ids == 2] > analysis.error_score[analysis.task_ids == 4]
    kinds = [kind for kind, _ in client.calls]
    assert client.calls[1] == ("fields", [2]) and kinds.index("tab") > 1
    assert client.calls[kinds.index("overview_tasks") + 1] == ("fields", [4])
    assert stages.index(("publish", 4, 4)) < stages.index(("queue", 1, 1)) < stages.index(("more fields", 1, 1))
    assert stages[-1] == ("old predictions", 1, 1)


def test_a_verdict_given_while_publishing_is_not_undone(tmp_path):
    # Task 4 is a candidate; a reviewer keeps its label once the tabs are up, after its fields
    # were written from the verdicts publishing started with.
    client, store, analysis = RecordingClient(), ProjectStore(tmp_path, 5), tiny_analysis()
    i = int((analysis.task_ids == 4).argmax())
    kept = {"verdict": "kept", "label": analysis.class_names[analysis.labels[i]], "version": analysis.model_version}

    def reviewer_acts(stage, done, total):
        if (stage, done) == ("publish", 4):  # the tabs are up
            store.record_verdict(4, kept)
            store.record_verdict(3, {"verdict": "removed", "label": "dog", "version": analysis.model_version})

    publish_analysis(client, 5, {"title": "Pets"}, SPEC, analysis, Settings(model_dir=str(tmp_path)), store,
                     reviewer_acts)
    assert client.calls[1] == ("fields", [2, 4])  # written before the verdict, as a candidate
    final = client.written[4]
    assert final["dc_reviewed"] == "kept" and final["dc_candidate"] == 0 and final["dc_unreviewed"] == 0
    assert final["dc_version"] == analysis.model_version  # all its fields, not only the review marks
    # task 3 (a duplicate) is written after the verdict: with it, not from the verdicts publishing began with
    assert all(batch[3]["dc_excluded"] == 1 for batch in client.batches if 3 in batch)


def test_a_removed_task_deleted_in_label_studio_is_not_written_again_and_again(tmp_path):
    store, removed = ProjectStore(tmp_path, 5), {"verdict": "removed", "label": "cat", "given": "cat",
                                                 "version": "deconfusion-old"}
    store.record_verdict(9, removed)  # removed, so not analysed; then the user deleted the task
    store.record_verdict(2, {**removed, "version": tiny_analysis().model_version})  # removed, task still there
    client = RecordingClient()
    client.deleted = {9}
    publish_analysis(client, 5, {"title": "Pets"}, SPEC, tiny_analysis(), Settings(model_dir=str(tmp_path)), store,
                     lambda *args: None)
    assert 9 in client.written and set(store.verdicts()) == {"2"}  # tried once, found gone: forgotten
    again = RecordingClient()
    publish_analysis(again, 5, {"title": "Pets"}, SPEC, tiny_analysis(), Settings(model_dir=str(tmp_path)), store,
                     lambda *args: None)
    assert 9 not in again.written and again.written[2]["dc_excluded"] == 1
