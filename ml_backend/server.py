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

Ours: ``GET /jobs/<project_id>`` (job state: stage, counts, ETA, message), ``POST /validate``.
Errors are ``{"error": "..."}`` with a 4xx/5xx status, never a traceback (that goes to the log).
"""

from __future__ import annotations

import hmac
import logging
import re
import threading
import time
from collections import Counter, deque
from typing import Any, Callable, Mapping

from flask import Flask, jsonify, request
from werkzeug.exceptions import BadRequest, HTTPException, RequestEntityTooLarge

from .config import Settings
from .errors import (ArtefactError, DatasetError, DeConfusionError, LabelConfigError, LabelStudioUnavailable,
                     UnknownProject, UnreadableImage)
from .jobs import (ACTIVE, JobQueueUnavailable, JobRunner, JobState, list_jobs, local_status,
                   read_job, recover_interrupted)
from .ls.schema import parse_label_config
from .store import ProjectStore

log = logging.getLogger(__name__)

MODEL_CLASS = "DeConfusion"
UNTRAINED = "deconfusion-untrained"
"""The model version /setup reports before a project's first finished analysis."""
START_TRAINING = "START_TRAINING"
VERDICT_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")
LATENCY_WINDOW = 1000
"""Predict latencies kept for the /metrics percentiles (most recent requests)."""


SECRET_HEADER = "X-DeConfusion-Secret"
"""Header carrying WEBHOOK_SECRET; add it to the project's webhook in Label Studio."""


Predictor = Callable[[int, list, "str | None"], list]
"""predictor(project_id, tasks, label_config) -> one prediction dict per task, same order;
every task has a valid integer ``id``."""
VerdictHandler = Callable[[str, int, list], "Mapping[str, Any] | None"]
"""verdict_handler(action, project_id, annotation_ids) -> JSON-able answer. The ids are only
hints: the handler reads the annotations themselves from Label Studio."""
ProjectCheck = Callable[[int], None]
"""project_check(project_id) raises UnknownProject when Label Studio has no such project."""

_STATUS_FOR_ERROR = ((JobQueueUnavailable, 503), (UnknownProject, 404), (LabelStudioUnavailable, 502),
                     (LabelConfigError, 422), (DatasetError, 422), (UnreadableImage, 422), (ArtefactError, 500),
                     (DeConfusionError, 500))
_PROJECT_NAME = re.compile(r"[1-9][0-9]*(\.[0-9]+)?")  # "12" or "12.1700000000"
_ID_TEXT = re.compile(r"[1-9][0-9]*")


class InvalidRequest(Exception):
    """A request the route cannot use; answered 400 with the message."""


def project_id_of(value: Any) -> int:
    """Label Studio names a project as ``"<id>.<created timestamp>"``, an id, or a dict with ``id``."""
    if isinstance(value, Mapping):
        value = value.get("id")
    found = _positive_id(value.split(".", 1)[0] if isinstance(value, str) and _PROJECT_NAME.fullmatch(value)
                         else value)
    if found is None:
        raise ValueError(f"'project' must be a positive project id like 12 or '12.1700000000', got {value!r}")
    return found


def object_id_of(value: Any, what: str) -> int:
    """A task or annotation id: a positive integer (or its digits as text); 1.5, "1.5", True raise."""
    found = _positive_id(value)
    if found is None:
        raise ValueError(f"{what} must be a positive integer id, got {value!r}")
    return found


def _positive_id(value: Any) -> int | None:
    """``value`` as a positive integer id when it is one (an int, not a bool, or its digits as text)."""
    if isinstance(value, str) and _ID_TEXT.fullmatch(value):
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def annotation_ids_of(action: str, data: Mapping[str, Any]) -> list[int]:
    """Ids of the annotations an event names: ``annotation`` (one, or a list for
    ANNOTATIONS_CREATED) or ``annotations`` (ANNOTATIONS_DELETED)."""
    key = "annotations" if action == "ANNOTATIONS_DELETED" else "annotation"
    found = data.get(key)
    items = [found] if isinstance(found, Mapping) else found
    if not isinstance(items, list) or not items:
        raise ValueError(f"{action} needs '{key}': an annotation object or a list of them, got {found!r}")
    ids = []
    for n, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ValueError(f"'{key}[{n}]' must be an annotation object with an 'id', got {item!r}")
        ids.append(object_id_of(item.get("id"), f"'{key}[{n}].id'"))
    return ids


def current_model_version(settings: Settings, project_id: int) -> str:
    """The version /setup reports: the project's current analysis (``current.json``, which the
    predictions carry), else the last finished job's, else :data:`UNTRAINED`. Reads two small files."""
    try:
        version = ProjectStore(settings.model_dir, project_id).current_version()
    except (ValueError, OSError) as exc:
        log.warning("project %s: unreadable current version (%s)", project_id, exc)
        version = None
    if not version:
        version = (read_job(settings, project_id) or {}).get("model_version")
    return version or UNTRAINED


def _percentile_ms(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def create_app(settings: Settings, *, runner: JobRunner | None = None, predictor: Predictor | None = None,
               verdict_handler: VerdictHandler | None = None, project_check: ProjectCheck | None = None) -> Flask:
    """The backend's Flask app. Heavy work lives in ``runner`` (analysis jobs) and ``predictor``.

    Creating it is cheap: it marks jobs a dead process left running as interrupted (a few small
    files) and nothing else. Without ``runner``, training requests get 503; without ``predictor``,
    /predict gets 503; without ``verdict_handler``, annotation events are answered ``ignored``;
    ``project_check`` runs before an analysis is queued (nothing is written for unknown projects).
    """
    if bool(settings.basic_auth_user) != bool(settings.basic_auth_pass):
        raise ValueError("BASIC_AUTH_USER and BASIC_AUTH_PASS must be set together (Label Studio sends basic "
                         "auth only when both are filled in), got only "
                         + ("BASIC_AUTH_USER" if settings.basic_auth_user else "BASIC_AUTH_PASS"))
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes  # werkzeug answers 413 beyond it
    app.extensions["deconfusion"] = {"settings": settings, "runner": runner, "predictor": predictor,
                                     "verdict_handler": verdict_handler}
    started = time.monotonic()
    stats_lock = threading.Lock()
    latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
    counts: Counter[str] = Counter()
    interrupted = recover_interrupted(settings)
    if interrupted:
        log.warning("analyses of projects %s were interrupted by a restart; press Start Training to rerun",
                    interrupted)

    def count(key: str, n: int = 1) -> None:
        with stats_lock:
            counts[key] += n

    def body() -> dict:
        try:
            data = request.get_json(force=True)
        except BadRequest:
            raise InvalidRequest("request body is not valid JSON; send a JSON object") from None
        if not isinstance(data, dict):
            raise InvalidRequest(f"request body must be a JSON object, got {type(data).__name__}")
        return data

    def project_from(value: Any, where: str = "'project'") -> int:
        try:
            return project_id_of(value)
        except ValueError as exc:
            raise InvalidRequest(str(exc).replace("'project'", where, 1)) from None

    def checked(parse: Callable[..., Any], *args: Any) -> Any:
        try:
            return parse(*args)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None

    def secret_ok() -> bool:
        if not settings.webhook_secret:
            return True
        sent = request.headers.get(SECRET_HEADER, "")
        return hmac.compare_digest(sent.encode(), settings.webhook_secret.encode())

    # --- auth and errors ---------------------------------------------------------------------
    @app.before_request
    def basic_auth():
        if not settings.basic_auth_user:
            return None
        auth = request.authorization
        if auth is not None and auth.type == "basic":
            # Both compared every time (no short cut), in constant time.
            user_ok = hmac.compare_digest((auth.username or "").encode(), settings.basic_auth_user.encode())
            pass_ok = hmac.compare_digest((auth.password or "").encode(), settings.basic_auth_pass.encode())
            if user_ok and pass_ok:
                return None
        count("auth_rejected")
        return (jsonify({"error": "authentication required: set Basic Auth user and password for this ML "
                                  "backend in Label Studio (BASIC_AUTH_USER / BASIC_AUTH_PASS)"}), 401,
                {"WWW-Authenticate": 'Basic realm="De-Confusion ML backend", charset="UTF-8"'})

    @app.after_request
    def tally(response):
        count(f"{request.method} {request.url_rule.rule if request.url_rule else '<unknown>'} {response.status_code}")
        return response

    @app.errorhandler(InvalidRequest)
    def invalid(exc: InvalidRequest):
        log.info("%s %s: 400 %s", request.method, request.path, exc)
        return jsonify({"error": str(exc)}), 400

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge):
        count("too_large")
        return jsonify({"error": f"request body larger than MAX_REQUEST_BYTES={settings.max_request_bytes}; "
                                 "send fewer tasks per request"}), 413

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return jsonify({"error": exc.description or exc.name}), exc.code or 500

    @app.errorhandler(DeConfusionError)
    def known_error(exc: DeConfusionError):
        code = next(code for kind, code in _STATUS_FOR_ERROR if isinstance(exc, kind))
        log.error("%s %s: %d %s", request.method, request.path, code, exc)
        return jsonify({"error": str(exc)}), code

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("%s %s: unexpected error", request.method, request.path)
        return jsonify({"error": f"internal error ({type(exc).__name__}); see the backend's log"}), 500

    # --- Label Studio's routes --------------------------------------------------------------------
    @app.get("/")
    @app.get("/health")
    def health():
        return jsonify({"status": "UP", "model_class": MODEL_CLASS})

    @app.post("/setup")
    def setup():
        project_id = project_from(body().get("project"))
        return jsonify({"model_version": current_model_version(settings, project_id)})

    @app.post("/predict")
    def predict():
        data = body()
        tasks = data.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise InvalidRequest("'tasks' must be a list of task objects ({'id': ..., 'data': {...}})")
        if len(tasks) > settings.max_predict_tasks:
            return jsonify({"error": f"{len(tasks)} tasks in one /predict call; at most MAX_PREDICT_TASKS="
                                     f"{settings.max_predict_tasks}: select fewer tasks"}), 413
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
        if predictor is None:
            return jsonify({"error": "this backend has no predictor configured"}), 503
        version = current_model_version(settings, project_id)
        if not tasks:
            return jsonify({"results": [], "model_version": version})
        start = time.perf_counter()
        results = predictor(project_id, tasks, label_config)
        elapsed = time.perf_counter() - start
        if not isinstance(results, list) or len(results) != len(tasks) or \
                not all(isinstance(r, dict) and isinstance(r.get("result"), list) for r in results):
            got = f"{len(results)} items" if isinstance(results, list) else type(results).__name__
            message = f"the predictor must return one {{'result': [...]}} dict per task: {len(tasks)} tasks, got {got}"
            log.error("project %s: %s", project_id, message)
            return jsonify({"error": message}), 500
        results = [r if r.get("model_version") else {**r, "model_version": version} for r in results]
        with stats_lock:
            latencies.append(elapsed)
            counts["predict_requests"] += 1
            counts["predict_tasks"] += len(tasks)
        return jsonify({"results": results, "model_version": version})

    def start_analysis(project_id: int, via: str):
        if runner is None:
            return jsonify({"error": "this backend has no job runner configured; analyses cannot start"}), 503
        if project_check is not None:
            project_check(project_id)  # UnknownProject -> 404, before any file is written
        try:
            state = runner.submit(project_id)
        except JobQueueUnavailable as exc:
            log.error("project %s: analysis not queued: %s", project_id, exc)
            return jsonify({"error": str(exc)}), 503
        count(f"training_requests_{via}")
        log.info("project %s: analysis requested via %s: %s", project_id, via, state.get("status"))
        return jsonify({"status": "ok", "project_id": project_id, "job_state": state,
                        "job_status_url": f"/jobs/{project_id}"}), 201

    @app.post("/webhook")
    def webhook():
        data = body()
        action = data.get("action")
        if not isinstance(action, str) or not action:
            raise InvalidRequest("'action' is missing; Label Studio webhooks send {'action': ..., 'project': {...}}")
        count(f"webhook_{action}" if action == START_TRAINING or action in VERDICT_ACTIONS else "webhook_other")
        if action == START_TRAINING:
            return start_analysis(project_from(data.get("project"), "'project.id'"), "webhook")
        if action in VERDICT_ACTIONS:
            if not secret_ok():
                count("webhook_secret_rejected")
                return jsonify({"error": f"annotation events need the {SECRET_HEADER} header with WEBHOOK_SECRET: "
                                         "add it to this webhook in Label Studio (Project Settings → Webhooks)"}), 401
            try:
                project_id = project_from(data.get("project"), "'project.id'")
            except InvalidRequest as exc:
                raise InvalidRequest(f"{exc}; annotation events need the webhook payload "
                                     "(keep 'Send payload' on for this webhook in Label Studio)") from None
            annotation_ids = checked(annotation_ids_of, action, data)
            if verdict_handler is None:
                return jsonify({"status": "ignored", "action": action, "reason": "no verdict handler configured"})
            answer = verdict_handler(action, project_id, annotation_ids)
            return jsonify(dict(answer) if isinstance(answer, Mapping) else {"status": "ok", "action": action})
        return jsonify({"status": "ignored", "action": action})

    @app.post("/train")
    def train():
        return start_analysis(project_from(body().get("project")), "train")

    @app.get("/versions")
    def versions():
        project = request.args.get("project")
        if project is None and request.content_length:
            data = request.get_json(silent=True, force=True)
            project = data.get("project") if isinstance(data, dict) else None
        if project is None:  # Label Studio 1.23 sends none; on 404 it lists its current version
            return jsonify({"error": "give ?project=<id>: versions are per project"}), 404
        project_id = project_from(project)
        return jsonify({"versions": ProjectStore(settings.model_dir, project_id).versions(),
                        "current": current_model_version(settings, project_id)})

    @app.post("/validate")
    def validate():
        parse_label_config(body().get("config", ""))  # LabelConfigError -> 422 with what to change
        return jsonify({"status": "ok"})

    # --- ours --------------------------------------------------------------------------------------
    @app.get("/jobs/<int:project_id>")
    def job(project_id: int):
        project_id = project_from(project_id)
        state: JobState | None = runner.status(project_id) if runner is not None \
            else local_status(settings, project_id)
        if state is None:
            return jsonify({"error": f"project {project_id} has no analysis job yet; press Start Training "
                                     "in the project's Settings → Model"}), 404
        return jsonify(state)

    @app.get("/metrics")
    def metrics():
        jobs = list_jobs(settings)
        by_status = Counter(str(j.get("status")) for j in jobs.values())
        durations = {str(pid): j.get("duration_seconds") for pid, j in jobs.items()
                     if j.get("duration_seconds") is not None}
        with stats_lock:
            ordered = sorted(latencies)
            snapshot = dict(counts)
        return jsonify({
            "model_class": MODEL_CLASS,
            "uptime_seconds": round(time.monotonic() - started, 1),
            "jobs": {"by_status": dict(by_status), "active": sum(by_status[s] for s in ACTIVE),
                     "last_duration_seconds": durations},
            "predict": {"requests": snapshot.get("predict_requests", 0),
                        "tasks": snapshot.get("predict_tasks", 0),
                        "latency_ms": {"p50": _percentile_ms(ordered, 0.5), "p95": _percentile_ms(ordered, 0.95),
                                       "window": len(ordered)}},
            "counts": snapshot,
        })

    return app
