"""Routes reviewers' and managers' browsers call: the evidence images embedded in flagged tasks
and the overview project, and the project manager's report (HTML, JSON, charts)."""

from __future__ import annotations

from functools import lru_cache

from flask import Blueprint, Response, abort, jsonify, request

from ..analysis import Analysis
from ..errors import ArtefactError
from ..store import ProjectStore, read_json
from ..views.render import render_png
from ..views.report import report_chart_png, report_html, report_json, with_review_outcomes
from .analyze import review_progress
from .backend import backend
from .crowd import CROWD_FILE, annotator_report

IMAGE_CACHE_SECONDS = 3600  # evidence images of a version never change
EVIDENCE_PATH = "/evidence/"

pages = Blueprint("pages", __name__)


@lru_cache(maxsize=8)
def _analysis(model_dir: str, project_id: int, version: str) -> Analysis:
    return ProjectStore(model_dir, project_id).load_analysis(version)


def _report_data(project_id: int) -> tuple[list[dict], list[dict]]:
    """The report's iterations (with what reviewers found on each) and its annotators' table,
    from one read of the project's verdicts."""
    store = ProjectStore(backend().settings.model_dir, project_id)
    history, verdicts = _report_history(store, project_id)
    crowd = read_json(store.version_dir(history[-1]["model_version"]) / CROWD_FILE, {})
    return history, annotator_report(crowd, verdicts, crowd.get("user_names") or {})


def _report_history(store: ProjectStore, project_id: int) -> tuple[list[dict], dict[str, dict]]:
    """The report's iterations, with what reviewers found on each, and the verdicts they were read from."""
    history = store.history()
    if not history:
        abort(404, f"project {project_id} has no analysis yet: press Start Training in Label Studio")
    verdicts = store.verdicts()
    latest = history[-1]
    try:  # the latest iteration as reviewers have left it now, not as it was when its analysis ended
        analysis = _analysis(str(backend().settings.model_dir), project_id, latest["model_version"])
        history[-1] = {**latest, **review_progress(analysis, verdicts)}
    except ArtefactError:
        pass  # its files were removed: the counts as recorded stand
    return with_review_outcomes(history, verdicts, store.reranks()), verdicts


@pages.get(EVIDENCE_PATH + "<int:project_id>/<version>/<kind>.png")
def evidence(project_id: int, version: str, kind: str):
    try:
        png = render_png(_analysis(str(backend().settings.model_dir), project_id, version), kind,
                         request.args.to_dict())
    except ArtefactError:
        abort(404, f"no analysis {version} for project {project_id}")
    except (ValueError, IndexError, KeyError) as exc:
        abort(400, str(exc))
    return Response(png, mimetype="image/png",
                    headers={"Cache-Control": f"public, max-age={IMAGE_CACHE_SECONDS}, immutable"})


@pages.get("/report/<int:project_id>")
def report(project_id: int):
    base = f"{backend().settings.backend_url}/report/{project_id}"
    history, annotators = _report_data(project_id)
    return Response(report_html(history, chart_url=lambda name: f"{base}/chart/{name}.png", annotators=annotators),
                    mimetype="text/html")


@pages.get("/report/<int:project_id>.json")
def report_data(project_id: int):
    return jsonify(report_json(*_report_data(project_id)))


@pages.get("/report/<int:project_id>/chart/<name>.png")
def chart(project_id: int, name: str):
    try:
        history, _ = _report_history(ProjectStore(backend().settings.model_dir, project_id), project_id)
        png = report_chart_png(history, name)  # the page's own figures, verdicts since included
    except ValueError as exc:
        abort(404, str(exc))
    return Response(png, mimetype="image/png", headers={"Cache-Control": "no-cache"})
