"""Label Studio's ML-backend HTTP contract on Flask 3.

What Label Studio 1.23 sends and expects (``label_studio/ml/api_connector.py``, ``ml/models.py``,
``webhooks/``); each call goes through ``requests`` with a 1 s connect timeout and the read
timeout named here, plus HTTP basic auth when the ML backend has both user and password set:

- ``GET /health`` (1 s): any 2xx JSON means connected. Answered from memory.
- ``POST /setup`` (3 s) ``{project: "<id>.<created ts>", schema, hostname, access_token,
  extra_params}`` -> ``{"model_version": ...}``. Label Studio stores it as the backend's version
  and skips tasks that already hold a prediction of that version, so it must equal the
  ``model_version`` of the predictions. Called again on every ML-backends listing and before
  every batch prediction: read from two small files, never from the analysis arrays.
- ``POST /predict`` (100 s) ``{tasks, project, label_config, params: {login, password, context}}``
  -> ``{"results": [one {result: [...], score, model_version} per task]}``, same order.
- ``POST /webhook`` ``{"action": "START_TRAINING", "project": {<all project fields>}}`` from the
  "Start Training" button (100 s): queue the analysis and answer at once (201). Label Studio
  reads only ``job`` from the answer and stores it in a 128-character column, so no ``job`` key
  is sent; the job state goes under ``job_state``.
- ``POST /webhook`` project events from the webhook Label Studio adds when the backend is
  connected (all actions, with payload, **1 s** timeout, answer ignored, *no* basic auth unless
  an ``Authorization`` header is added to that webhook): ``ANNOTATION_CREATED`` /
  ``ANNOTATION_UPDATED`` ``{annotation: {...}, task: {...}, project: {...}}``,
  ``ANNOTATIONS_CREATED`` ``{annotation: [...], task: [...], project}``, ``ANNOTATIONS_DELETED``
  ``{annotations: [{id}], project}``; other actions are answered ``ignored``.
- ``POST /train`` ``{annotations, project: "<id>.<ts>", label_config, params}``: the older
  training call (when Label Studio's START_TRAINING webhook flag is off); same as START_TRAINING.
- ``GET /versions`` (3 s) is sent without a project: 404 makes Label Studio list the current version.
- ``GET /metrics`` is not called by Label Studio; ours reports jobs, predict latency and counts.

Ours: ``POST /validate`` (a labeling config's fitness); job state and metrics are in :mod:`.status`.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Mapping

from flask import Blueprint, jsonify, request

from ..config import Settings
from ..ls.schema import parse_label_config
from ..store import ProjectStore
from ..vocabulary import ANNOTATION_ACTIONS, START_TRAINING, UNTRAINED_VERSION
from .backend import backend
from .jobs import JobQueueUnavailable, read_job
from .requests import InvalidRequest, annotation_ids_of, checked, json_body, object_id_of, project_from

log = logging.getLogger(__name__)

MODEL_CLASS = "DeConfusion"
SECRET_HEADER = "X-DeConfusion-Secret"
"""Header carrying WEBHOOK_SECRET; add it to the project's webhook in Label Studio."""

contract = Blueprint("contract", __name__)


def current_model_version(settings: Settings, project_id: int) -> str:
    """The version /setup reports: the project's current analysis (``current.json``, which the
    predictions carry), else the last finished job's, else the untrained version. Reads two small files."""
    try:
        version = ProjectStore(settings.model_dir, project_id).current_version()
    except (ValueError, OSError) as exc:
        log.warning("project %s: unreadable current version (%s)", project_id, exc)
        version = None
    if not version:
        version = (read_job(settings, project_id) or {}).get("model_version")
    return version or UNTRAINED_VERSION


@contract.get("/")
@contract.get("/health")
def health():
    return jsonify({"status": "UP", "model_class": MODEL_CLASS})


@contract.post("/setup")
def setup():
    project_id = project_from(json_body().get("project"))
    return jsonify({"model_version": current_model_version(backend().settings, project_id)})


@contract.post("/predict")
def predict():
    service = backend()
    data = json_body()
    tasks = data.get("tasks")
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise InvalidRequest("'tasks' must be a list of task objects ({'id': ..., 'data': {...}})")
    if len(tasks) > service.settings.max_predict_tasks:
        return jsonify({"error": f"{len(tasks)} tasks in one /predict call; at most MAX_PREDICT_TASKS="
                                 f"{service.settings.max_predict_tasks}: select fewer tasks"}), 413
    for n, task in enumerate(tasks):
        checked(object_id_of, task.get("id"), f"'tasks[{n}].id'")
    project = data.get("project")
    if project is None and tasks:
        project = tasks[0].get("project")
    project_id = project_from(project)
    label_config = data.get("label_config")
    if label_config is not None and not isinstance(label_config, str):
        raise InvalidRequest(f"'label_config' must be the labeling config XML string, "
                             f"got {type(label_config).__name__}")
    if service.predictor is None:
        return jsonify({"error": "this backend has no predictor configured"}), 503
    version = current_model_version(service.settings, project_id)
    if not tasks:
        return jsonify({"results": [], "model_version": version})
    start = time.perf_counter()
    results = service.predictor(project_id, tasks, label_config)
    elapsed = time.perf_counter() - start
    if not isinstance(results, list) or len(results) != len(tasks) or \
            not all(isinstance(r, dict) and isinstance(r.get("result"), list) for r in results):
        got = f"{len(results)} items" if isinstance(results, list) else type(results).__name__
        message = f"the predictor must return one {{'result': [...]}} dict per task: {len(tasks)} tasks, got {got}"
        log.error("project %s: %s", project_id, message)
        return jsonify({"error": message}), 500
    results = [r if r.get("model_version") else {**r, "model_version": version} for r in results]
    service.stats.predicted(elapsed, len(tasks))
    return jsonify({"results": results, "model_version": version})


@contract.post("/webhook")
def webhook():
    service = backend()
    data = json_body()
    action = data.get("action")
    if not isinstance(action, str) or not action:
        raise InvalidRequest("'action' is missing; Label Studio webhooks send {'action': ..., 'project': {...}}")
    known = action == START_TRAINING or action in ANNOTATION_ACTIONS
    service.stats.count(f"webhook_{action}" if known else "webhook_other")
    if action == START_TRAINING:
        return _start_analysis(project_from(data.get("project"), "'project.id'"), "webhook")
    if action not in ANNOTATION_ACTIONS:
        return jsonify({"status": "ignored", "action": action})
    if not _secret_ok(service.settings.webhook_secret):
        service.stats.count("webhook_secret_rejected")
        return jsonify({"error": f"annotation events need the {SECRET_HEADER} header with WEBHOOK_SECRET: "
                                 "add it to this webhook in Label Studio (Project Settings → Webhooks)"}), 401
    try:
        project_id = project_from(data.get("project"), "'project.id'")
    except InvalidRequest as exc:
        raise InvalidRequest(f"{exc}; annotation events need the webhook payload "
                             "(keep 'Send payload' on for this webhook in Label Studio)") from None
    annotation_ids = checked(annotation_ids_of, action, data)
    if service.verdict_handler is None:
        return jsonify({"status": "ignored", "action": action, "reason": "no verdict handler configured"})
    answer = service.verdict_handler(action, project_id, annotation_ids)
    return jsonify(dict(answer) if isinstance(answer, Mapping) else {"status": "ok", "action": action})


@contract.post("/train")
def train():
    return _start_analysis(project_from(json_body().get("project")), "train")


@contract.get("/versions")
def versions():
    project = request.args.get("project")
    if project is None and request.content_length:
        data = request.get_json(silent=True, force=True)
        project = data.get("project") if isinstance(data, dict) else None
    if project is None:  # Label Studio 1.23 sends none; on 404 it lists its current version
        return jsonify({"error": "give ?project=<id>: versions are per project"}), 404
    project_id = project_from(project)
    settings = backend().settings
    return jsonify({"versions": ProjectStore(settings.model_dir, project_id).versions(),
                    "current": current_model_version(settings, project_id)})


@contract.post("/validate")
def validate():
    parse_label_config(json_body().get("config", ""))  # LabelConfigError -> 422 with what to change
    return jsonify({"status": "ok"})


def _start_analysis(project_id: int, via: str):
    service = backend()
    if service.runner is None:
        return jsonify({"error": "this backend has no job runner configured; analyses cannot start"}), 503
    if service.project_check is not None:
        service.project_check(project_id)  # UnknownProject -> 404, before any file is written
    try:
        state = service.runner.submit(project_id)
    except JobQueueUnavailable as exc:
        log.error("project %s: analysis not queued: %s", project_id, exc)
        return jsonify({"error": str(exc)}), 503
    service.stats.count(f"training_requests_{via}")
    log.info("project %s: analysis requested via %s: %s", project_id, via, state.get("status"))
    return jsonify({"status": "ok", "project_id": project_id, "job_state": state,
                    "job_status_url": f"/jobs/{project_id}"}), 201


def _secret_ok(secret: str) -> bool:
    if not secret:
        return True
    sent = request.headers.get(SECRET_HEADER, "")
    return hmac.compare_digest(sent.encode(), secret.encode())
