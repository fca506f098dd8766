"""The ML-backend HTTP contract with Flask's test client. The analysis, predictor and verdict
handler are stand-ins; Label Studio's side is exercised for real in tests/integration."""

import base64
import json
import time
from pathlib import Path

import pytest

from ml_backend.errors import LabelStudioRejected, LabelStudioTokenRejected, LabelStudioUnavailable, UnknownProject
from ml_backend.service.app import create_app
from ml_backend.service.jobs import job_path, update_job
from ml_backend.service.requests import project_id_of
from ml_backend.service.runners import LocalRunner, RQRunner
from ml_backend.vocabulary import UNTRAINED_VERSION as UNTRAINED
from ml_backend.store import ProjectStore
from tests.service.conftest import free_port

PROJECT = "3.1700000000"  # how Label Studio names a project in /setup, /predict and /train


class FakePredictor:
    def __init__(self):
        self.calls = []

    def __call__(self, project_id, tasks, label_config):
        self.calls.append((project_id, [t["id"] for t in tasks], label_config))
        return [{"result": [{"from_name": "label", "to_name": "image", "type": "choices",
                             "value": {"choices": ["cat"]}}], "score": 0.9} for _ in tasks]


class Verdicts:
    def __init__(self):
        self.calls = []

    def __call__(self, action, project_id, annotation_ids):
        self.calls.append((action, project_id, annotation_ids))
        return {"status": "ok", "verdicts": 1}


@pytest.fixture()
def service(settings, slow):
    runner = LocalRunner(settings, slow)
    predictor, verdicts = FakePredictor(), Verdicts()
    app = create_app(settings, runner=runner, predictor=predictor, verdict_handler=verdicts)
    yield app.test_client(), runner, predictor, verdicts
    slow.release()
    runner.shutdown(timeout=5)


def start_training(client, project_id):
    return client.post("/webhook", json={"action": "START_TRAINING",
                                         "project": {"id": project_id, "title": "Shapes", "label_config": "<View/>"}})


def test_health_and_root_answer_up_at_once(service):
    client = service[0]
    for path in ("/", "/health"):
        started = time.perf_counter()
        resp = client.get(path)
        assert resp.status_code == 200 and resp.get_json() == {"status": "UP", "model_class": "DeConfusion"}
        assert time.perf_counter() - started < 0.5


def test_setup_reports_untrained_then_the_version_a_finished_job_recorded(service, slow):
    client, runner, _, _ = service
    body = {"project": PROJECT, "schema": "<View/>", "hostname": "http://ls:8080", "access_token": "t",
            "extra_params": None}
    resp = client.post("/setup", json=body)
    assert resp.status_code == 200 and resp.get_json() == {"model_version": UNTRAINED}
    start_training(client, 3)
    slow.release()
    job = runner.wait(3, timeout=5)
    assert client.post("/setup", json=body).get_json() == {"model_version": job["model_version"]}
    assert client.post("/setup", json={"project": 3}).get_json()["model_version"] == job["model_version"]


def test_setup_prefers_the_current_analysis_that_predictions_carry(service, settings):
    client = service[0]
    update_job(settings, 3, status="done", model_version="deconfusion-v1")
    ProjectStore(settings.model_dir, 3).set_current("deconfusion-v2", 2)
    assert client.post("/setup", json={"project": PROJECT}).get_json() == {"model_version": "deconfusion-v2"}


def test_predict_delegates_and_returns_one_result_per_task(service, settings):
    client, _, predictor, _ = service
    ProjectStore(settings.model_dir, 3).set_current("deconfusion-v4", 4)
    resp = client.post("/predict", json={"tasks": [{"id": 1, "data": {}}, {"id": 2, "data": {}}], "project": PROJECT,
                                         "label_config": "<View/>", "params": {"login": None, "context": None}})
    body = resp.get_json()
    assert resp.status_code == 200 and len(body["results"]) == 2 and body["model_version"] == "deconfusion-v4"
    assert all(r["model_version"] == "deconfusion-v4" and r["result"] for r in body["results"])
    assert predictor.calls == [(3, [1, 2], "<View/>")]
    assert client.post("/predict", json={"tasks": [], "project": PROJECT}).get_json()["results"] == []
    metrics = client.get("/metrics").get_json()
    assert metrics["predict"]["requests"] == 1 and metrics["predict"]["tasks"] == 2
    assert metrics["predict"]["latency_ms"]["p50"] is not None and metrics["predict"]["latency_ms"]["p95"] is not None


def test_metrics_report_this_process_peak_memory(service):
    client = service[0]
    resident_mb = int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) / 1024
    assert client.get("/metrics").get_json()["peak_memory_mb"] >= resident_mb - 1  # a real peak, not a made-up one


def test_predict_refuses_bad_bodies_with_clear_400s(service):
    client = service[0]
    cases = [
        (dict(data="{not json", content_type="application/json"), "not valid JSON"),
        (dict(json=[1, 2]), "JSON object"),
        (dict(json={"tasks": "x", "project": PROJECT}), "'tasks' must be a list"),
        (dict(json={"tasks": [1], "project": PROJECT}), "'tasks' must be a list"),
        (dict(json={"tasks": [{"id": 1}]}), "'project'"),
        (dict(json={"tasks": [{"id": 1}], "project": "abc"}), "'project'"),
        (dict(json={"tasks": [{"id": 1}], "project": PROJECT, "label_config": 5}), "label_config"),
    ]
    for kwargs, words in cases:
        resp = client.post("/predict", **kwargs)
        assert resp.status_code == 400 and words in resp.get_json()["error"], (kwargs, resp.get_json())


def test_predict_reports_a_predictor_that_breaks_the_contract(settings):
    app = create_app(settings, predictor=lambda project_id, tasks, config: [])
    resp = app.test_client().post("/predict", json={"tasks": [{"id": 1}], "project": PROJECT})
    assert resp.status_code == 500 and "one {'result': [...]} dict per task" in resp.get_json()["error"]
    resp = create_app(settings).test_client().post("/predict", json={"tasks": [{"id": 1}], "project": PROJECT})
    assert resp.status_code == 503 and "no predictor" in resp.get_json()["error"]


def test_start_training_answers_at_once_while_the_analysis_runs(service, slow):
    client, runner, _, _ = service
    started = time.perf_counter()
    resp = start_training(client, 5)
    assert time.perf_counter() - started < 0.5
    body = resp.get_json()
    assert resp.status_code == 201 and body["status"] == "ok" and body["project_id"] == 5
    assert body["job_state"]["status"] == "queued" and body["job_status_url"] == "/jobs/5"
    assert "job" not in body  # Label Studio would store it in a 128-character column
    assert slow.started.wait(5)
    state = client.get("/jobs/5").get_json()
    assert state["status"] == "running" and state["stage"] == "download" and state["total"] == 4
    slow.release()
    assert runner.wait(5, timeout=5)["status"] == "done"


def test_presses_during_a_run_coalesce_into_one_follow_up(service, slow):
    client, runner, _, _ = service
    start_training(client, 5)
    assert slow.started.wait(5)
    for _ in range(3):
        resp = start_training(client, 5)
        assert resp.status_code == 201 and resp.get_json()["job_state"]["requested_again"] is True
    assert client.get("/jobs/5").get_json()["requested_again"] is True
    slow.release()
    job = runner.wait(5, timeout=5)
    assert slow.calls == [5, 5] and job["model_version"] == "deconfusion-v2"
    assert client.get("/jobs/5").get_json()["requested_again"] is False


def test_the_older_train_route_starts_an_analysis_too(service, slow):
    client, runner, _, _ = service
    resp = client.post("/train", json={"annotations": [], "project": "7.1700000000", "label_config": "<View/>",
                                       "params": {"login": None, "password": None}})
    assert resp.status_code == 201 and resp.get_json()["job_state"]["status"] == "queued"
    slow.release()
    assert runner.wait(7, timeout=5)["status"] == "done"


def test_a_failing_analysis_is_reported_and_the_service_stays_up(settings):
    from tests.service.conftest import SlowAnalysis
    analysis = SlowAnalysis(fail={13: LabelStudioUnavailable("Label Studio did not answer at http://ls:8080")})
    analysis.release()
    runner = LocalRunner(settings, analysis)
    client = create_app(settings, runner=runner).test_client()
    assert start_training(client, 13).status_code == 201
    runner.wait(13, timeout=5)
    job = client.get("/jobs/13").get_json()
    assert job["status"] == "failed" and job["message"] == "Label Studio did not answer at http://ls:8080"
    assert client.get("/health").get_json()["status"] == "UP"


def test_annotation_events_reach_the_verdict_handler_as_project_and_annotation_ids(service):
    client, _, _, verdicts = service
    payloads = {
        "ANNOTATION_CREATED": {"annotation": {"id": 1, "task": 10, "result": []}, "task": {"id": 10}},
        "ANNOTATIONS_CREATED": {"annotation": [{"id": 1, "task": 10}, {"id": "2"}], "task": [{"id": 10}]},
        "ANNOTATION_UPDATED": {"annotation": {"id": 1, "task": 10, "result": []}, "task": {"id": 10}},
        "ANNOTATIONS_DELETED": {"annotations": [{"id": 1}]},
    }
    for action, payload in payloads.items():
        resp = client.post("/webhook", json={"action": action, "project": {"id": 3}, **payload})
        assert resp.status_code == 200 and resp.get_json() == {"status": "ok", "verdicts": 1}
    assert verdicts.calls == [("ANNOTATION_CREATED", 3, [1]), ("ANNOTATIONS_CREATED", 3, [1, 2]),
                              ("ANNOTATION_UPDATED", 3, [1]), ("ANNOTATIONS_DELETED", 3, [1])]
    resp = client.post("/webhook", json={"action": "ANNOTATION_CREATED"})  # webhook without payload
    assert resp.status_code == 400 and "Send payload" in resp.get_json()["error"]


def test_annotation_events_without_a_handler_are_answered(settings):
    client = create_app(settings).test_client()
    resp = client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 1},
                                         "annotation": {"id": 5}})
    assert resp.status_code == 200 and resp.get_json()["status"] == "ignored"
    resp = start_training(client, 1)
    assert resp.status_code == 503 and "no job runner" in resp.get_json()["error"]


def test_unknown_actions_are_answered_and_malformed_bodies_get_400(service):
    client = service[0]
    resp = client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 1}})
    assert resp.status_code == 200 and resp.get_json() == {"status": "ignored", "action": "PROJECT_UPDATED"}
    resp = client.post("/webhook", data="not json", content_type="application/json")
    assert resp.status_code == 400 and "not valid JSON" in resp.get_json()["error"]
    resp = client.post("/webhook", data=b"", content_type="application/json")
    assert resp.status_code == 400
    resp = client.post("/webhook", json={"project": {"id": 1}})
    assert resp.status_code == 400 and "'action'" in resp.get_json()["error"]
    resp = client.post("/webhook", json={"action": "START_TRAINING", "project": {"title": "no id"}})
    assert resp.status_code == 400 and "'project.id'" in resp.get_json()["error"]
    assert client.post("/setup", json={"schema": "<View/>"}).status_code == 400


def test_jobs_route_404_names_what_to_do(service):
    resp = service[0].get("/jobs/99")
    assert resp.status_code == 404 and "Start Training" in resp.get_json()["error"]


def test_a_job_left_running_is_reported_interrupted_when_the_service_starts(settings):
    update_job(settings, 8, status="running", stage="train", runner="local")
    client = create_app(settings).test_client()
    assert json.loads(job_path(settings, 8).read_text())["status"] == "interrupted"
    job = client.get("/jobs/8").get_json()
    assert job["status"] == "interrupted" and "Start Training" in job["message"]
    assert client.get("/metrics").get_json()["jobs"]["by_status"] == {"interrupted": 1}


def test_basic_auth_is_enforced_on_every_route_but_the_evidence_images_when_configured(settings):
    settings = settings.replace(basic_auth_user="ls", basic_auth_pass="s3cret")
    client = create_app(settings).test_client()
    good = {"Authorization": "Basic " + base64.b64encode(b"ls:s3cret").decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"ls:nope").decode()}
    for method, path in (("get", "/health"), ("get", "/"), ("post", "/setup"), ("post", "/predict"),
                         ("post", "/webhook"), ("get", "/metrics"), ("get", "/jobs/1"), ("get", "/report/1"),
                         ("get", "/report/1.json"), ("post", "/evidence/1/v/thumb.png")):
        for headers in ({}, bad):
            resp = getattr(client, method)(path, headers=headers, json={"project": PROJECT})
            assert resp.status_code == 401, (path, headers)
            assert resp.headers["WWW-Authenticate"].startswith("Basic") and "error" in resp.get_json()
    assert client.get("/health", headers=good).status_code == 200
    assert client.post("/setup", headers=good, json={"project": PROJECT}).status_code == 200
    # images embedded in Label Studio's pages: a browser sends no basic auth for them
    assert client.get("/evidence/1/deconfusion-v1/thumb.png?i=0").status_code == 404  # no such analysis, not 401
    with pytest.raises(ValueError, match="BASIC_AUTH_PASS"):
        create_app(settings.replace(basic_auth_pass=""))


def test_errors_are_json_without_tracebacks(settings):
    def broken(action, project_id, annotation_ids):
        raise RuntimeError("secret internals at /srv/x.py line 3")

    client = create_app(settings, verdict_handler=broken).test_client()
    resp = client.post("/webhook", json={"action": "ANNOTATION_UPDATED", "project": {"id": 1},
                                         "annotation": {"id": 5}})
    assert resp.status_code == 500 and resp.get_json() == {"error": "internal error (RuntimeError); see the "
                                                                     "backend's log"}
    resp = client.get("/nowhere")
    assert resp.status_code == 404 and "error" in resp.get_json()
    resp = client.get("/webhook")
    assert resp.status_code == 405 and "error" in resp.get_json()


def test_versions_without_a_project_let_label_studio_fall_back(service, settings):
    client = service[0]
    assert client.get("/versions").status_code == 404
    ProjectStore(settings.model_dir, 3).set_current("deconfusion-v1", 1)
    body = client.get("/versions?project=3.17").get_json()
    assert body == {"versions": [], "current": "deconfusion-v1"}


def test_metrics_report_jobs_and_counts(service, slow):
    client, runner, _, _ = service
    start_training(client, 2)
    slow.release()
    runner.wait(2, timeout=5)
    metrics = client.get("/metrics").get_json()
    assert metrics["jobs"]["by_status"] == {"done": 1} and metrics["jobs"]["active"] == 0
    assert metrics["jobs"]["last_duration_seconds"]["2"] >= 0
    assert metrics["counts"]["training_requests_webhook"] == 1 and metrics["counts"]["webhook_START_TRAINING"] == 1
    assert metrics["counts"]["POST /webhook 201"] == 1


def test_project_ids_in_every_shape_label_studio_sends():
    assert project_id_of("12.1700000000") == 12 and project_id_of(12) == 12 and project_id_of({"id": 12}) == 12
    assert project_id_of("12") == 12
    for bad in (None, "", "abc", True, 0, "-1.5", {"title": "x"}, 1.5, " 1", "1.abc", "1.", "01", "1 ", {"id": "x"}):
        with pytest.raises(ValueError, match="project"):
            project_id_of(bad)


def test_redis_down_answers_start_training_with_503_and_health_stays_up(settings):
    settings = settings.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    client = create_app(settings, runner=RQRunner(settings, "tests.service.conftest:analyze_ok",
                                                  retry_delays=(0.01,))).test_client()
    resp = start_training(client, 4)
    assert resp.status_code == 503 and "Redis did not answer" in resp.get_json()["error"]
    assert client.get("/health").status_code == 200


# --- hostile input and careless clients: 4xx with a message, never 500 ------------------------------
WRONG_TYPES = [
    ("post", "/predict", {"tasks": [{"id": None}], "project": PROJECT}, "'tasks[0].id'"),
    ("post", "/predict", {"tasks": [{"id": "abc"}], "project": PROJECT}, "'tasks[0].id'"),
    ("post", "/predict", {"tasks": [{"id": {}}], "project": PROJECT}, "'tasks[0].id'"),
    ("post", "/predict", {"tasks": [{"id": 1}, {"id": 1.5}], "project": PROJECT}, "'tasks[1].id'"),
    ("post", "/predict", {"tasks": [{"id": True}], "project": PROJECT}, "'tasks[0].id'"),
    ("post", "/predict", {"tasks": [{"data": {}}], "project": PROJECT}, "'tasks[0].id'"),
    ("post", "/webhook", {"action": "ANNOTATION_CREATED", "project": "x", "annotation": {"id": 1}}, "'project.id'"),
    ("post", "/webhook", {"action": "ANNOTATION_CREATED", "project": 3.5, "annotation": {"id": 1}}, "'project.id'"),
    ("post", "/webhook", {"action": "ANNOTATION_CREATED", "project": {"id": 3}, "annotation": "x"}, "'annotation'"),
    ("post", "/webhook", {"action": "ANNOTATION_CREATED", "project": {"id": 3}}, "'annotation'"),
    ("post", "/webhook", {"action": "ANNOTATION_UPDATED", "project": {"id": 3}, "annotation": {"task": 1}},
     "'annotation[0].id'"),
    ("post", "/webhook", {"action": "ANNOTATIONS_CREATED", "project": {"id": 3}, "annotation": [{"id": 1}, 7]},
     "'annotation[1]'"),
    ("post", "/webhook", {"action": "ANNOTATIONS_DELETED", "project": {"id": 3}, "annotations": [None]},
     "'annotations[0]'"),
    ("post", "/webhook", {"action": "ANNOTATIONS_DELETED", "project": {"id": 3}, "annotations": {"id": "1.5"}},
     "'annotations[0].id'"),
    ("post", "/webhook", {"action": 5, "project": {"id": 3}}, "'action'"),
    ("post", "/setup", {"project": " 1"}, "'project'"),
    ("post", "/setup", {"project": "1.abc"}, "'project'"),
    ("post", "/train", {"project": [1]}, "'project'"),
    ("get", "/jobs/0", None, "positive project id"),
    ("get", "/versions?project=1.x", None, "'project'"),
]


@pytest.mark.parametrize("method, path, body, words", WRONG_TYPES)
def test_wrong_types_get_a_400_naming_the_field(service, method, path, body, words):
    client, _, predictor, verdicts = service
    resp = getattr(client, method)(path, json=body)
    assert resp.status_code == 400 and words in resp.get_json()["error"], resp.get_json()
    assert predictor.calls == [] and verdicts.calls == []


def test_bodies_over_the_size_limit_and_too_many_tasks_get_413(settings, slow):
    settings = settings.replace(max_request_bytes=10_000, max_predict_tasks=50)
    predictor = FakePredictor()
    client = create_app(settings, predictor=predictor).test_client()
    big = {"tasks": [{"id": 1, "data": {"image": "x" * 20_000}}], "project": PROJECT}
    for path in ("/predict", "/webhook", "/setup"):
        resp = client.post(path, json=big)
        assert resp.status_code == 413 and "MAX_REQUEST_BYTES=10000" in resp.get_json()["error"]
    resp = client.post("/predict", json={"tasks": [{"id": n + 1} for n in range(51)], "project": PROJECT})
    assert resp.status_code == 413 and "MAX_PREDICT_TASKS=50" in resp.get_json()["error"]
    assert predictor.calls == []
    resp = client.post("/predict", json={"tasks": [{"id": n + 1} for n in range(50)], "project": PROJECT})
    assert resp.status_code == 200 and len(resp.get_json()["results"]) == 50


def test_annotation_events_need_the_webhook_secret_when_one_is_set(settings, slow):
    settings = settings.replace(webhook_secret="s3cret")
    verdicts = Verdicts()
    runner = LocalRunner(settings, slow)
    client = create_app(settings, runner=runner, verdict_handler=verdicts).test_client()
    event = {"action": "ANNOTATION_CREATED", "project": {"id": 3}, "annotation": {"id": 4}}
    for headers in ({}, {"X-DeConfusion-Secret": "wrong"}, {"X-DeConfusion-Secret": ""}):
        resp = client.post("/webhook", json=event, headers=headers)
        assert resp.status_code == 401 and "X-DeConfusion-Secret" in resp.get_json()["error"]
    assert verdicts.calls == []
    resp = client.post("/webhook", json=event, headers={"X-DeConfusion-Secret": "s3cret"})
    assert resp.status_code == 200 and verdicts.calls == [("ANNOTATION_CREATED", 3, [4])]
    # Label Studio's Start Training button cannot send custom headers: basic auth guards it.
    assert start_training(client, 3).status_code == 201
    slow.release()
    runner.shutdown(timeout=5)


def test_training_for_an_unknown_project_is_404_and_writes_nothing(settings, slow):
    def project_check(project_id):
        if project_id == 424242:
            raise UnknownProject(f"Label Studio at http://ls has no project {project_id}")

    runner = LocalRunner(settings, slow)
    client = create_app(settings, runner=runner, project_check=project_check).test_client()
    for resp in (start_training(client, 424242), client.post("/train", json={"project": "424242.17"})):
        assert resp.status_code == 404 and "no project 424242" in resp.get_json()["error"]
    assert not (Path(settings.model_dir) / "projects" / "424242").exists() and slow.calls == []
    assert start_training(client, 3).status_code == 201
    slow.release()
    runner.shutdown(timeout=5)


def test_unknown_projects_reports_and_unfinished_versions_are_not_listed(settings):
    client = create_app(settings).test_client()
    for path in ("/report/424242", "/report/424242.json"):
        resp = client.get(path)
        assert resp.status_code == 404 and "Start Training" in resp.get_json()["error"]
    store = ProjectStore(settings.model_dir, 3)
    for version in ("deconfusion-v1", "deconfusion-v2"):  # v2: a job killed while publishing
        store.version_dir(version).mkdir(parents=True)
        (store.version_dir(version) / "analysis.json").write_text("{}")
    store.append_history({"model_version": "deconfusion-v1", "iteration": 1})
    store.set_current("deconfusion-v2", 2)
    assert client.get("/versions?project=3").get_json()["versions"] == ["deconfusion-v1"]
    assert client.get("/report/3.json").status_code == 200


def test_a_bad_download_allow_entry_stops_the_start_naming_it(settings):
    from ml_backend.service.entrypoints import build_app
    with pytest.raises(ValueError, match="DOWNLOAD_ALLOW"):
        build_app(settings.replace(download_allow="10.0.0.0/33"))


@pytest.mark.parametrize("error, status", [
    (LabelStudioUnavailable("Label Studio did not answer"), 502),
    (LabelStudioTokenRejected("Label Studio refused LABEL_STUDIO_API_KEY"), 502),
    (LabelStudioRejected("Label Studio answered 400 to POST /api/predictions/", 400), 500),
    (UnknownProject("no project 9"), 404),
])
def test_label_studio_errors_reach_the_caller_with_the_status_it_expects(settings, error, status):
    def handler(action, project_id, annotation_ids):
        raise error

    client = create_app(settings, verdict_handler=handler).test_client()
    resp = client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 3}, "annotation": {"id": 1}})
    assert resp.status_code == status and resp.get_json()["error"] == str(error)
