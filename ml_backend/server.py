"""Label Studio's ML-backend HTTP contract on Flask 3.

Routes and JSON as Label Studio 1.23 calls them (``label_studio/ml/api_connector.py``):
``GET /health`` (1 s budget), ``POST /setup`` (3 s) -> ``{"model_version"}``,
``POST /predict`` -> ``{"results": [one per task]}``, ``POST /webhook`` (START_TRAINING
from the "Start Training" button, annotation events from the project webhook Label Studio
adds when the backend connects), ``POST /train`` (older Label Studio versions),
``GET /versions``, ``POST /validate``, ``GET /metrics``; plus ``GET /jobs/<project>``.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections import Counter, deque
from typing import Any, Callable

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from .config import Settings
from .errors import DeConfusionError
from .jobs import JobQueueUnavailable, mark_interrupted, read_job
from .ls.schema import parse_label_config
from .store import ProjectStore

log = logging.getLogger(__name__)

UNTRAINED = "deconfusion-untrained"
VERDICT_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")
LATENCY_WINDOW = 1000


def project_id_of(value: Any) -> int:
    """Label Studio sends a project as ``"<id>.<created timestamp>"``, an id, or a dict with ``id``."""
    if isinstance(value, dict):
        value = value.get("id")
    try:
        return int(str(value).split(".")[0])
    except (TypeError, ValueError):
        raise ValueError(f"'project' must be a project id like '12' or '12.1700000000', got {value!r}") from None


def _bad(message: str, status: int = 400):
    return jsonify({"error": message}), status


def create_app(settings: Settings, *, runner, predictor: Callable, verdict_handler: Callable) -> Flask:
    """The backend's Flask app; heavy work lives in ``runner`` (jobs) and ``predictor``."""
    app = Flask("ml_backend")
    latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
    counts: Counter[str] = Counter()
    mark_interrupted(settings)

    def body() -> dict:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            raise ValueError("request body must be a JSON object")
        return data

    @app.before_request
    def basic_auth():
        if not settings.basic_auth_user:
            return None
        auth = request.authorization
        ok = auth is not None and hmac.compare_digest(auth.username or "", settings.basic_auth_user) \
            and hmac.compare_digest(auth.password or "", settings.basic_auth_pass)
        if ok:
            return None
        return jsonify({"error": "authentication required"}), 401, {"WWW-Authenticate": 'Basic realm="De-Confusion"'}

    @app.errorhandler(ValueError)
    def bad_request(exc):
        return _bad(str(exc))

    @app.errorhandler(HTTPException)
    def http_error(exc):
        return _bad(exc.description or exc.name, exc.code or 500)

    @app.errorhandler(Exception)
    def unexpected(exc):
        log.exception("unexpected error on %s", request.path)
        return _bad(f"internal error ({type(exc).__name__}); see the backend's log", 500)

    @app.get("/")
    @app.get("/health")
    def health():
        return jsonify({"status": "UP", "model_class": "DeConfusion"})

    @app.post("/setup")
    def setup():
        project_id = project_id_of(body().get("project"))
        return jsonify({"model_version": predictor.current_version(project_id) or UNTRAINED})

    @app.post("/validate")
    def validate():
        try:
            parse_label_config(body().get("config", ""))
        except DeConfusionError as exc:
            return _bad(str(exc), 422)
        return jsonify({"status": "ok"})

    @app.post("/predict")
    def predict():
        start = time.perf_counter()
        data = body()
        tasks = data.get("tasks")
        if not isinstance(tasks, list):
            raise ValueError("'tasks' must be a list of task objects")
        project_id = project_id_of(data.get("project") or (tasks[0].get("project") if tasks else None))
        results = predictor(project_id, tasks, data.get("label_config"))
        latencies.append(time.perf_counter() - start)
        counts["predict_tasks"] += len(tasks)
        return jsonify({"results": results, "model_version": predictor.current_version(project_id) or UNTRAINED})

    def start(project_id: int):
        try:
            job = runner.submit(project_id)
        except JobQueueUnavailable as exc:
            return _bad(str(exc), 503)
        counts["trainings_requested"] += 1
        return jsonify({"status": "ok", "job": job}), 201

    @app.post("/train")
    def train():
        return start(project_id_of(body().get("project")))

    @app.post("/webhook")
    def webhook():
        data = body()
        action = data.get("action")
        if action == "START_TRAINING":
            return start(project_id_of(data.get("project")))
        if action in VERDICT_ACTIONS:
            counts[f"webhook_{action}"] += 1
            return jsonify(verdict_handler(action, data))
        return jsonify({"status": "ignored", "action": action})

    @app.get("/versions")
    def versions():
        project_id = project_id_of(request.args.get("project"))
        return jsonify({"versions": ProjectStore(settings.model_dir, project_id).versions()})

    @app.get("/jobs/<int:project_id>")
    def job(project_id: int):
        state = read_job(settings, project_id)
        if state is None:
            return _bad(f"project {project_id} has no analysis job; press Start Training in Label Studio", 404)
        return jsonify(state)

    @app.get("/metrics")
    def metrics():
        ordered = sorted(latencies)
        pick = lambda q: round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2) if ordered else None  # noqa: E731
        return jsonify({"predict_latency_ms": {"p50": pick(0.5), "p95": pick(0.95), "count": len(ordered)},
                        "counters": dict(counts)})

    return app
