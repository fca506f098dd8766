"""What a reviewer needs is published first: the flagged tasks' predictions, fields, tabs and the
overview; every other task's prediction and the removal of old versions follow. (The writes
themselves are exercised against a real Label Studio in tests/integration.)"""

from ml_backend.config import Settings
from ml_backend.ls.schema import ClassSpec
from ml_backend.publish import publish_analysis
from ml_backend.store import ProjectStore
from tests.unit.test_analysis import tiny_analysis

SPEC = ClassSpec(image_key="image", image_name="image", choices_name="label", labels=["cat", "dog"])


class RecordingClient:
    """Records the order of the writes publishing makes; answers like an empty Label Studio."""

    def __init__(self):
        self.calls = []

    def create_predictions(self, project_id, predictions):
        self.calls.append(("predictions", sorted(p["task"] for p in predictions)))

    def delete_predictions(self, project_id, keep_version=None):
        self.calls.append(("delete_old", keep_version))

    def sync_task_fields(self, project_id, wanted, prefix, progress):
        self.calls.append(("fields", sorted(wanted)))
        for done in range(1, len(wanted) + 1):
            progress(done, len(wanted))

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
    client, stages = RecordingClient(), []
    analysis = tiny_analysis()  # tasks 2, 3 and 4 are flagged (candidates, misclassified, duplicates)
    publish_analysis(client, 5, {"title": "Pets"}, SPEC, analysis, Settings(model_dir=str(tmp_path)),
                     ProjectStore(tmp_path, 5), lambda stage, done, total: stages.append((stage, done, total)))
    kinds = [kind for kind, _ in client.calls]
    assert client.calls[0] == ("predictions", [2, 3, 4]) and client.calls[1] == ("fields", [2, 3, 4])
    assert kinds.index("overview_tasks") < kinds.index("delete_old")
    assert client.calls[-2:] == [("predictions", [1]), ("delete_old", analysis.model_version)]
    assert ("publish fields", 3, 3) in stages and stages.index(("publish fields", 3, 3)) < stages.index(("publish", 2, 4))
    assert ("publish", 4, 4) in stages and stages[-1] == ("predictions", 2, 2)
