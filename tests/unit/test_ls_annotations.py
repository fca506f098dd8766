"""Reading labels out of Label Studio's annotations: which one gives the task's label, and each
annotator's own label (pure functions of the exported JSON)."""

from ml_backend.ls.client import labeling_annotations, newest_label
from ml_backend.ls.schema import ClassSpec

SPEC = ClassSpec(image_key="img", image_name="picture", choices_name="shape", labels=["circle", "square"])


def choice(label: str, control: str = "shape") -> list[dict]:
    return [{"from_name": control, "to_name": "picture", "type": "choices", "value": {"choices": [label]}}]


def test_newest_label_ignores_other_controls_and_compares_timestamps_as_times():
    annotations = [
        {"id": 1, "updated_at": "2026-01-01T10:00:00Z", "result": choice("circle")},
        {"id": 2, "updated_at": "2026-01-01T10:00:00.5Z", "result": choice("square")},  # later, despite the text
        {"id": 3, "updated_at": "2026-01-02T00:00:00Z", "result": choice("Keep", control="dc_verdict")},
    ]
    assert newest_label(annotations, SPEC) == "square"
    assert newest_label([], SPEC) is None


def test_every_labeling_annotation_is_read_oldest_first_with_who_made_it():
    annotations = [
        {"id": 1, "completed_by": 7, "updated_at": "2026-01-01T10:00:00Z", "result": choice("circle")},
        {"id": 2, "completed_by": 7, "updated_at": "2026-01-01T11:00:00Z", "result": choice("square")},
        {"id": 3, "completed_by": {"id": 9, "email": "b@example.org"}, "created_at": "2026-01-01T09:00:00Z",
         "result": choice("circle")},
        {"id": 4, "completed_by": 9, "updated_at": "2026-01-03T00:00:00Z", "result": choice("square"),
         "was_cancelled": True},
        {"id": 5, "updated_at": "2026-01-02T00:00:00Z", "result": choice("Keep", control="dc_verdict")},
        {"id": 6, "updated_at": "2026-01-02T00:00:00Z", "result": choice("square")},  # author lost
    ]
    assert labeling_annotations(annotations, SPEC) == (
        (3, 9, "circle"), (1, 7, "circle"), (2, 7, "square"), (6, None, "square"))
    assert labeling_annotations([], SPEC) == ()
