"""Entry points: the backend assembled from its parts, as a development server, for gunicorn,
and as an RQ worker.

    python -m ml_backend serve            # development server
    gunicorn 'ml_backend.service:app_from_env()'
    python -m ml_backend worker           # RQ worker, with REDIS_URL
"""

from __future__ import annotations

from flask import Flask
from redis import Redis
from rq import Queue, Worker

from ..config import Settings, configure_logging
from ..ls.netpolicy import DownloadPolicy
from .analyze import check_project_exists
from .app import create_app
from .predictions import Predictor
from .runners import make_runner
from .verdicts import VerdictHandler

ANALYZE_FN = "ml_backend.service.analyze:analyze_project"


def build_app(settings: Settings) -> Flask:
    DownloadPolicy.parse(settings.download_allow)  # a bad DOWNLOAD_ALLOW stops the start, naming the entry
    runner = make_runner(settings, ANALYZE_FN)
    return create_app(settings, runner=runner, predictor=Predictor(settings),
                      verdict_handler=VerdictHandler(settings, submit=runner.submit),
                      project_check=lambda project_id: check_project_exists(settings, project_id))


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
