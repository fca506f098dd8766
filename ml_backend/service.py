"""Assembly: the HTTP contract (server), the job runner (jobs) and the project workflow,
plus the routes reviewers' browsers call: evidence images and the manager's report.

    python -m ml_backend serve            # development server
    gunicorn 'ml_backend.service:app_from_env()'
    python -m ml_backend worker           # RQ worker, with REDIS_URL
"""

from __future__ import annotations

import logging
from functools import lru_cache

from flask import Blueprint, Flask, Response, abort, jsonify, request
from redis import Redis
from rq import Queue, Worker

from .analysis import Analysis
from .config import Settings, configure_logging
from .errors import ArtefactError
from .jobs import make_runner
from .ls.netpolicy import DownloadPolicy
from .server import create_app
from .store import ProjectStore
from .views.render import render_png
from .views.report import report_chart_png, report_html, report_json
from .workflow import Predictor, VerdictHandler, check_project_exists

log = logging.getLogger(__name__)
ANALYZE_FN = "ml_backend.workflow:analyze_project"
IMAGE_CACHE_SECONDS = 3600  # evidence images of a version never change


def build_app(settings: Settings) -> Flask:
    DownloadPolicy.parse(settings.download_allow)  # a bad DOWNLOAD_ALLOW stops the start, naming the entry
    runner = make_runner(settings, ANALYZE_FN)
    app = create_app(settings, runner=runner, predictor=Predictor(settings),
                     verdict_handler=VerdictHandler(settings, submit=runner.submit),
                     project_check=lambda project_id: check_project_exists(settings, project_id))
    app.register_blueprint(evidence_routes(settings))
    return app


def evidence_routes(settings: Settings) -> Blueprint:
    routes = Blueprint("evidence", __name__)

    @lru_cache(maxsize=8)
    def analysis_of(project_id: int, version: str) -> Analysis:
        return ProjectStore(settings.model_dir, project_id).load_analysis(version)

    @routes.get("/evidence/<int:project_id>/<version>/<kind>.png")
    def evidence(project_id: int, version: str, kind: str):
        try:
            png = render_png(analysis_of(project_id, version), kind, request.args.to_dict())
        except ArtefactError:
            abort(404, f"no analysis {version} for project {project_id}")
        except (ValueError, IndexError, KeyError) as exc:
            abort(400, str(exc))
        return Response(png, mimetype="image/png",
                        headers={"Cache-Control": f"public, max-age={IMAGE_CACHE_SECONDS}, immutable"})

    @routes.get("/report/<int:project_id>")
    def report(project_id: int):
        history = ProjectStore(settings.model_dir, project_id).history()
        if not history:
            abort(404, f"project {project_id} has no analysis yet: press Start Training in Label Studio")
        base = f"{settings.backend_url}/report/{project_id}"
        return Response(report_html(history, chart_url=lambda name: f"{base}/chart/{name}.png"),
                        mimetype="text/html")

    @routes.get("/report/<int:project_id>.json")
    def report_data(project_id: int):
        history = ProjectStore(settings.model_dir, project_id).history()
        if not history:
            abort(404, f"project {project_id} has no analysis yet: press Start Training in Label Studio")
        return jsonify(report_json(history))

    @routes.get("/report/<int:project_id>/chart/<name>.png")
    def chart(project_id: int, name: str):
        try:
            png = report_chart_png(ProjectStore(settings.model_dir, project_id).history(), name)
        except ValueError as exc:
            abort(404, str(exc))
        return Response(png, mimetype="image/png", headers={"Cache-Control": "no-cache"})

    return routes


def serve(settings: Settings) -> None:
    configure_logging(settings.log_level)
    build_app(settings).run(host=settings.host, port=settings.port, threaded=True)


def app_from_env() -> Flask:
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    return build_app(settings)


def run_worker(settings: Settings) -> None:
    if not settings.redis_url:
        raise ValueError("the worker needs REDIS_URL (e.g. redis://localhost:6379/0)")
    configure_logging(settings.log_level)
    connection = Redis.from_url(settings.redis_url)
    Worker([Queue(settings.queue_name, connection=connection)], connection=connection).work()
