"""The ML-backend HTTP contract with the Flask test client; the work functions are stand-ins
(the Label Studio side is exercised against a real server in tests/integration)."""

import base64
import json
import threading

import pytest

from ml_backend.config import Settings
from ml_backend.jobs import LocalRunner, JobStatus, job_path, update_job
from ml_backend.server import create_app


class FakePredictor:
    def __init__(self):
        self.version = None

    def current_version(self, project_id):
        return self.version

    def __call__(self, project_id, tasks, label_config):
        return [{"result": [{"from_name": "label", "to_name": "image", "type": "choices",
                             "value": {"choices": ["cat"]}}], "score": 0.9, "model_version": self.version}
                for _ in tasks]


@pytest.fixture()
def setup(tmp_path):
    settings = Settings.from_env({}, model_dir=str(tmp_path))
    gate = threading.Event()
    calls = []

    def analyze(project_id, settings, progress):
        calls.append(project_id)
        progress("train", 1, 2)
        gate.wait(10)
        if project_id == 13:
            raise RuntimeError("images unreachable")
        return f"deconfusion-v{len(calls)}"

    predictor = FakePredictor()
    verdicts = []
    runner = LocalRunner(settings, analyze)
    app = create_app(settings, runner=runner, predictor=predictor,
                     verdict_handler=lambda action, payload: verdicts.append(action) or {"status": "ok"})
    return app.test_client(), runner, gate, calls, predictor, verdicts, settings


def test_health_setup_and_predict_follow_label_studios_contract(setup):
    client, _, _, _, predictor, _, _ = setup
    assert client.get("/health").get_json() == {"status": "UP", "model_class": "DeConfusion"}
    assert client.post("/setup", json={"project": "3.1700000000", "schema": "<View/>"}).get_json() == {
        "model_version": "deconfusion-untrained"}
    predictor.version = "deconfusion-v1"
    assert client.post("/setup", json={"project": "3.1700000000"}).get_json()["model_version"] == "deconfusion-v1"
    resp = client.post("/predict", json={"tasks": [{"id": 1}, {"id": 2}], "project": "3.1700000000"})
    body = resp.get_json()
    assert resp.status_code == 200 and len(body["results"]) == 2 and body["model_version"] == "deconfusion-v1"
    assert client.get("/metrics").get_json()["predict_latency_ms"]["count"] == 1


def test_start_training_answers_at_once_and_presses_during_a_run_coalesce(setup):
    client, runner, gate, calls, _, _, settings = setup
    first = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 5, "title": "p"}})
    assert first.status_code == 201 and first.get_json()["job"]["status"] == "queued"
    for _ in range(3):
        assert client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 5}}).status_code == 201
    assert client.get("/jobs/5").get_json()["requested_again"] is True
    gate.set()
    job = runner.wait(5, timeout=10)
    assert calls == [5, 5]  # one run, then exactly one follow-up
    assert job["status"] == JobStatus.DONE and job["model_version"] == "deconfusion-v2"
    assert client.post("/train", json={"project": "5.17"}).status_code == 201  # older Label Studio path


def test_failed_analysis_is_reported_and_service_stays_up(setup):
    client, runner, gate, _, _, _, _ = setup
    gate.set()
    client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 13}})
    job = runner.wait(13, timeout=10)
    assert job["status"] == "failed" and "images unreachable" in job["message"]
    assert client.get("/health").status_code == 200


def test_annotation_events_reach_the_verdict_handler_unknown_events_are_answered(setup):
    client, _, _, _, _, verdicts, _ = setup
    for action in ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"):
        assert client.post("/webhook", json={"action": action, "project": {"id": 1}}).status_code == 200
    assert verdicts == ["ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"]
    resp = client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 1}})
    assert resp.get_json() == {"status": "ignored", "action": "PROJECT_UPDATED"}


def test_malformed_requests_get_clear_400s(setup):
    client = setup[0]
    resp = client.post("/webhook", data="not json", content_type="application/json")
    assert resp.status_code == 400 and "JSON object" in resp.get_json()["error"]
    assert "project" in client.post("/setup", json={"project": "abc"}).get_json()["error"]
    assert client.post("/predict", json={"tasks": "x"}).status_code == 400
    assert client.get("/jobs/99").status_code == 404


def test_a_job_left_running_by_a_dead_process_is_reported_interrupted(tmp_path):
    settings = Settings.from_env({}, model_dir=str(tmp_path))
    update_job(settings, 8, status="running", stage="train")
    app = create_app(settings, runner=None, predictor=FakePredictor(), verdict_handler=None)
    job = app.test_client().get("/jobs/8").get_json()
    assert job["status"] == "interrupted" and "Start Training" in job["message"]
    assert json.loads(job_path(settings, 8).read_text())["status"] == "interrupted"


def test_basic_auth_is_enforced_when_configured(tmp_path):
    settings = Settings.from_env({}, model_dir=str(tmp_path), basic_auth_user="ls", basic_auth_pass="s3cret")
    client = create_app(settings, runner=None, predictor=FakePredictor(), verdict_handler=None).test_client()
    assert client.get("/health").status_code == 401
    good = base64.b64encode(b"ls:s3cret").decode()
    assert client.get("/health", headers={"Authorization": f"Basic {good}"}).status_code == 200
    bad = base64.b64encode(b"ls:nope").decode()
    assert client.get("/health", headers={"Authorization": f"Basic {bad}"}).status_code == 401
