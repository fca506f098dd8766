"""The backend's Flask app: what every route shares (settings, the job runner, the predictor,
the verdict handler, request counters: :mod:`.backend`), basic auth, and errors as ``{"error": ...}`` with the
status a caller expects, never a traceback (that goes to the log).

Routes live in blueprints: :mod:`.contract` (Label Studio's ML-backend contract),
:mod:`.status` (job state and metrics) and :mod:`.pages` (evidence images and the report).
"""

from __future__ import annotations

import hmac
import logging

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from ..config import Settings
from ..errors import (ArtefactError, DatasetError, DeConfusionError, LabelConfigError, LabelStudioError,
                      LabelStudioRejected, UnknownProject, UnreadableImage)
from .backend import EXTENSION, Backend, Predictor, ProjectCheck, VerdictHandler, backend
from .contract import contract
from .jobs import JobQueueUnavailable, JobRunner, recover_interrupted
from .pages import EVIDENCE_PATH, pages
from .requests import InvalidRequest
from .status import status

log = logging.getLogger(__name__)

# First match wins. Label Studio down or refusing the backend's token: 502 (the gateway's
# upstream failed, the caller can only retry or tell the admin); Label Studio refusing a request
# the backend made (a 4xx): 500, the backend's own fault, never "unavailable".
_STATUS_FOR_ERROR = ((JobQueueUnavailable, 503), (UnknownProject, 404), (LabelStudioRejected, 500),
                     (LabelStudioError, 502), (LabelConfigError, 422), (DatasetError, 422), (UnreadableImage, 422),
                     (ArtefactError, 500), (DeConfusionError, 500))


def create_app(settings: Settings, *, runner: JobRunner | None = None, predictor: Predictor | None = None,
               verdict_handler: VerdictHandler | None = None, project_check: ProjectCheck | None = None) -> Flask:
    """The backend's Flask app.

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
    app.extensions[EXTENSION] = Backend(settings, runner, predictor, verdict_handler, project_check)
    interrupted = recover_interrupted(settings)
    if interrupted:
        log.warning("analyses of projects %s were interrupted by a restart; press Start Training to rerun",
                    interrupted)
    app.before_request(_basic_auth)
    app.after_request(_tally)
    _register_error_handlers(app)
    for blueprint in (contract, status, pages):
        app.register_blueprint(blueprint)
    return app


def _basic_auth():
    settings = backend().settings
    # Evidence images are embedded in Label Studio's pages, and browsers send no basic auth for
    # another site's images: guarded, a reviewer would see every one broken. They show the
    # project's own images, under URLs that name the project and the analysis' version.
    if not settings.basic_auth_user or (request.method == "GET" and request.path.startswith(EVIDENCE_PATH)):
        return None
    auth = request.authorization
    if auth is not None and auth.type == "basic":
        # Both compared every time (no short cut), in constant time.
        user_ok = hmac.compare_digest((auth.username or "").encode(), settings.basic_auth_user.encode())
        pass_ok = hmac.compare_digest((auth.password or "").encode(), settings.basic_auth_pass.encode())
        if user_ok and pass_ok:
            return None
    backend().stats.count("auth_rejected")
    return (jsonify({"error": "authentication required: set Basic Auth user and password for this ML "
                              "backend in Label Studio (BASIC_AUTH_USER / BASIC_AUTH_PASS)"}), 401,
            {"WWW-Authenticate": 'Basic realm="De-Confusion ML backend", charset="UTF-8"'})


def _tally(response):
    rule = request.url_rule.rule if request.url_rule else "<unknown>"
    backend().stats.count(f"{request.method} {rule} {response.status_code}")
    return response


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(InvalidRequest)
    def invalid(exc: InvalidRequest):
        log.info("%s %s: 400 %s", request.method, request.path, exc)
        return jsonify({"error": str(exc)}), 400

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge):
        backend().stats.count("too_large")
        return jsonify({"error": f"request body larger than MAX_REQUEST_BYTES={backend().settings.max_request_bytes}; "
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
