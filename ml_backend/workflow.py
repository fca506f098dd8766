"""The project-level loop: Label Studio project -> dataset -> analysis -> published review;
reviewers' verdicts back in; the model's answer for /predict.

``analyze_project`` is the job function the runners execute (in-process or on RQ workers).
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable
from urllib.parse import urlencode

import numpy as np

from . import publish
from .analysis import Analysis, save, write_exports
from .config import Settings
from .errors import LabelStudioError, UnknownProject
from .dataset import ImageDataset, build_dataset, decode_image, fit_to_shape
from .ls.client import LabelStudioClient
from .ls.schema import ClassSpec, parse_label_config
from .model.ensemble import ModelSet
from .pipeline import new_model_version, run_analysis
from .reviews import Review, apply_reviews
from .store import ProjectStore
from .views.overview import all_clear_task_html, cell_task_html
from .views.review import evidence_html

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
OVERVIEW_SUFFIX = " · De-Confusion overview"
OVERVIEW_CONFIG = Path(__file__).resolve().parent.parent / "label_studio_config" / "overview.xml"
OVERVIEW_MARKER = 'name="dc_cell_status"'  # a control only our overview config has


def analyze_project(project_id: int, settings: Settings, progress: Progress) -> str:
    """Fetch, analyse and publish one project; returns the new model version."""
    with LabelStudioClient(settings) as client:
        return _analyze_and_publish(client, project_id, settings, progress)


def _analyze_and_publish(client: LabelStudioClient, project_id: int, settings: Settings, progress: Progress) -> str:
    store = ProjectStore(settings.model_dir, project_id)
    project = client.get_project(project_id)
    spec = parse_label_config(project["label_config"])
    store.update_project_info(title=project.get("title", ""), spec=spec.__dict__)
    records, skipped = client.labeled_records(
        project_id, spec, Path(settings.model_dir) / "cache",
        progress=lambda done, total: progress("download", done, total))
    dataset = build_dataset(records, class_names=spec.labels,
                            progress=lambda done, total: progress("decode", done, total))
    dataset.skipped[:0] = skipped
    dataset, outcome = apply_reviews(dataset, reviews_from_verdicts(store.verdicts(), dataset),
                                     settings.confirmed_weight)

    iteration = store.next_iteration()
    version = new_model_version(f"deconfusion-v{iteration}")
    analysis, ensemble = run_analysis(dataset, settings, model_version=version, progress=progress, reviews=outcome)
    folder = store.version_dir(version)
    save(analysis, folder)
    write_exports(analysis, folder)
    ensemble.save(folder / "model.pt")
    # /setup reports the current version; it must equal the published predictions' version.
    store.set_current(version, iteration)
    publish_analysis(client, project_id, project, spec, analysis, settings, store, progress)
    store.append_history(history_entry(analysis, iteration, store.verdicts()))
    log.info("project %s: published %s (%d candidates)", project_id, version, int(analysis.is_candidate.sum()))
    return version


def check_project_exists(settings: Settings, project_id: int) -> None:
    """Raise UnknownProject when Label Studio says it has no such project, so a training request
    for a made-up id writes nothing. An unreachable Label Studio or a refused token is left to the
    job, whose status then says what is wrong (one try: the caller is waiting)."""
    with LabelStudioClient(settings, retry_delays=()) as client:
        try:
            found = client.find_project(project_id)
        except LabelStudioError:
            return
    if found is None:
        raise UnknownProject(f"Label Studio at {settings.label_studio_url} has no project {project_id}: "
                             "press Start Training in the project's Settings → Model")


def reviews_from_verdicts(verdicts: dict[str, dict], dataset: ImageDataset) -> dict[str, Review]:
    """The verdicts the backend stored (by task id) as reviews of ``dataset``'s images: kept ->
    confirmed, relabeled_to_model / relabeled_other -> relabeled, removed and ambiguous as they
    are. A kept or relabeled verdict whose label is no longer the task's label (changed in Label
    Studio since) is stale and left out: the image is unreviewed again."""
    reviews = {}
    for item, task_id, label in zip(dataset.items, dataset.task_ids, dataset.labels):
        verdict = verdicts.get(str(int(task_id)))
        if verdict is None:
            continue
        if verdict["verdict"] in ("removed", "ambiguous"):
            reviews[item] = Review(verdict["verdict"])
        elif verdict.get("label") == dataset.class_names[label]:
            reviews[item] = Review("confirmed" if verdict["verdict"] == "kept" else "relabeled", verdict["label"])
    return reviews


def image_url(settings: Settings, project_id: int, version: str) -> Callable[[str, dict], str]:
    base = f"{settings.backend_url}/evidence/{project_id}/{version}"
    return lambda kind, params: f"{base}/{kind}.png?{urlencode(params)}"


def publish_analysis(client: LabelStudioClient, project_id: int, project: dict, spec: ClassSpec,
                     analysis: Analysis, settings: Settings, store: ProjectStore, progress: Progress) -> None:
    """Predictions, task fields, tabs and the overview project for ``analysis``; replaces older versions'."""
    labeled = np.flatnonzero(analysis.task_ids >= 0)
    progress("publish", 0, 4)
    client.create_predictions(project_id, [publish.prediction(analysis, i, spec) for i in labeled])
    client.delete_predictions(project_id, keep_version=analysis.model_version)
    progress("publish", 1, 4)

    urls = image_url(settings, project_id, analysis.model_version)
    verdicts = store.verdicts()
    wanted = publish.desired_fields(
        analysis, verdicts, lambda i: evidence_html(analysis, i, image_url=urls) if publish.is_flagged(analysis, i)
        else "")
    client.sync_task_fields(project_id, wanted, prefix=publish.FIELD_PREFIX)
    progress("publish", 2, 4)

    client.delete_views(project_id, publish.VIEW_PREFIX)
    tab_ids = {}
    for view in publish.views(analysis, max_tabs=settings.max_cell_tabs):
        tab_ids[view.get("cell", view["title"])] = client.create_view(
            project_id, view["title"], view["filters"], view["ordering"], numeric_fields=publish.NUMERIC_FIELDS)
    store.update_project_info(tabs={str(k): v for k, v in tab_ids.items()})
    progress("publish", 3, 4)

    publish_overview(client, project_id, project, analysis, settings, store, tab_ids, urls)
    progress("publish", 4, 4)


def unpublish_project(project_id: int, settings: Settings) -> dict:
    """Take everything the backend wrote out of Label Studio again: our predictions (every
    ``deconfusion`` model version), our ``dc_`` task fields, our tabs and the overview project.
    Annotations, the user's task data and other models' predictions stay; the analyses stay on
    disk under MODEL_DIR. Returns what was removed."""
    with LabelStudioClient(settings) as client:
        return _unpublish(client, project_id, ProjectStore(settings.model_dir, project_id))


def _unpublish(client: LabelStudioClient, project_id: int, store: ProjectStore) -> dict:
    client.get_project(project_id)  # a clear error for a wrong id before anything changes
    # Fields first: each field write re-reads its task, and Label Studio answers a read of a task
    # without predictions by asking the connected backend for one, which would come back.
    fields = client.sync_task_fields(project_id, {}, prefix=publish.FIELD_PREFIX)
    versions = client.delete_predictions(project_id)
    tabs = client.delete_views(project_id, publish.VIEW_PREFIX)
    overview_id = store.project_info().get("overview_project")
    if _is_our_overview(client, overview_id):
        client.delete_project(overview_id)
    else:
        overview_id = None
    store.update_project_info(overview_project=None, tabs={})
    removed = {"prediction_versions": versions, "tasks_cleaned": fields, "tabs": tabs,
               "overview_project": overview_id}
    log.info("project %s: unpublished %s", project_id, removed)
    return removed


def _is_our_overview(client: LabelStudioClient, project_id: int | None) -> bool:
    """Whether ``project_id`` is still the overview project the backend made. Its tasks get
    replaced and unpublish deletes it, so a stale id (a Label Studio database restored or
    reset, ids reused) must never reach a user's project: the config must be ours."""
    project = None if project_id is None else client.find_project(project_id)
    return project is not None and OVERVIEW_MARKER in (project.get("label_config") or "")


def publish_overview(client, project_id, project, analysis, settings, store, tab_ids, urls) -> int:
    """The companion project: one task per overview cell, in the paper's reading order."""
    info = store.project_info()
    overview_id = info.get("overview_project")
    if not _is_our_overview(client, overview_id):
        overview_id = client.create_project(project.get("title", f"Project {project_id}") + OVERVIEW_SUFFIX,
                                            OVERVIEW_CONFIG.read_text())
        # The paper's reading order, with the cell's HTML only in the labeling view, not as a column.
        client.create_view(overview_id, f"{publish.VIEW_PREFIX}: overview", ordering="dc_order",
                           hidden_columns={"explore": ["tasks:data.html"], "labeling": []},
                           numeric_fields=("dc_order", "dc_count"))
        store.update_project_info(overview_project=overview_id)
    queue = f"{settings.label_studio_url.rstrip('/')}/projects/{project_id}/data?tab={tab_ids[publish.REVIEW_QUEUE]}"

    def tab_url(cell: dict) -> str:
        view_id = tab_ids.get((cell["label"], cell["predicted"]))
        return queue if view_id is None else queue.rsplit("=", 1)[0] + f"={view_id}"

    report = f"{settings.backend_url}/report/{project_id}"
    tasks = [{"html": cell_task_html(analysis, cell, image_url=urls, tab_url=tab_url),
              "dc_order": order, "dc_cell": analysis.cell_name_of(cell["label"], cell["predicted"]),
              "dc_count": cell["count"], "dc_version": analysis.model_version, "dc_report": report}
             for order, cell in enumerate(analysis.cells)]
    if not tasks:
        tasks = [{"html": all_clear_task_html(analysis), "dc_order": 0, "dc_cell": "No disagreements",
                  "dc_count": 0, "dc_version": analysis.model_version, "dc_report": report}]
    # The overview project belongs to the backend: its cell tasks are replaced on every analysis.
    client.replace_tasks(overview_id, tasks)
    return overview_id


def history_entry(analysis: Analysis, iteration: int, verdicts: dict[str, dict]) -> dict:
    counts = {kind: 0 for kind in publish.VERDICT_LABELS}
    for v in verdicts.values():
        counts[v["verdict"]] = counts.get(v["verdict"], 0) + 1
    s = analysis.summary
    return {
        "iteration": iteration,
        "model_version": analysis.model_version,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "images": s["images"],
        "candidates": int(publish.unreviewed_candidates(analysis, verdicts).sum()),
        "verdicts": counts,
        "estimated_error_rate": s["estimated_error_rate"],
        "model_accuracy": s["model_accuracy_estimate"],
        "per_class_error_rate": publish.per_class_error_rate(analysis),
        "confused_pairs": publish.confused_pairs(analysis),
        "duplicates_found": s["duplicate_pairs"],
        "leakage_found": s["leakage_pairs"],
        "duplicates_resolved": _resolved_duplicates(analysis, verdicts),
    }


def _resolved_duplicates(analysis: Analysis, verdicts: dict[str, dict]) -> int:
    removed = {int(t) for t, v in verdicts.items() if v["verdict"] == "removed"}
    return sum(1 for p in analysis.duplicates
               if {int(analysis.task_ids[p["a"]]), int(analysis.task_ids[p["b"]])} & removed)


# --- verdicts --------------------------------------------------------------------------

def classify_verdict(result: list[dict], spec: ClassSpec, human_label: str, suggested: str) -> tuple[str, str] | None:
    """(verdict, label now) from an annotation's result, or None if it carries no label."""
    label, explicit = None, None
    for item in result or []:
        choices = (item.get("value") or {}).get("choices") or []
        if item.get("from_name") == spec.choices_name and choices:
            label = choices[0]
        elif item.get("from_name") == "dc_verdict" and choices:
            explicit = choices[0]
    by_text = {text: kind for kind, text in publish.VERDICT_LABELS.items()}
    if by_text.get(explicit) in ("removed", "ambiguous"):
        return by_text[explicit], label or human_label
    if label is None:
        return None
    if label == human_label:
        return "kept", label
    return ("relabeled_to_model" if label == suggested else "relabeled_other"), label


class VerdictHandler:
    """Turns annotation events into verdicts; idempotent; may trigger a new analysis.

    An event only names annotations: each is read from Label Studio and must belong to the
    event's project, so a made-up event cannot record a verdict or drop a task from training.
    """

    def __init__(self, settings: Settings, submit: Callable[[int], object] | None = None) -> None:
        self.settings = settings
        self.submit = submit

    def __call__(self, action: str, project_id: int, annotation_ids: list[int]) -> dict:
        store = ProjectStore(self.settings.model_dir, project_id)
        analysis = store.load_analysis()
        if analysis is None:
            return {"status": "ignored", "reason": "no analysis for this project yet"}
        with LabelStudioClient(self.settings) as client:
            found = client.find_annotations(annotation_ids)
            if action == "ANNOTATIONS_DELETED":
                return self._forget(store, {a for a, annotation in found.items() if annotation is None})
            genuine = [a for a in found.values() if a is not None and self._in_project(client, a, project_id)]
            index, spec = analysis.index_of_task(), ClassSpec(**store.project_info()["spec"])
            changed = [t for t in (self._record(store, analysis, index, spec, a) for a in genuine) if t is not None]
            if changed:
                self._mark_reviewed(client, project_id, store, changed)
                self._maybe_retrain(project_id, store)
        unknown = len(found) - len(genuine)
        if unknown:
            log.warning("project %s: %s for %d annotation(s) Label Studio does not hold in this project: ignored",
                        project_id, action, unknown)
        return {"status": "ok", "verdicts": len(changed), "ignored": unknown}

    @staticmethod
    def _in_project(client: LabelStudioClient, annotation: dict, project_id: int) -> bool:
        project = annotation.get("project")
        if project is None:  # annotations made before Label Studio stored their project
            project = client.get_task(int(annotation["task"])).get("project")
        return project == project_id

    @staticmethod
    def _record(store: ProjectStore, analysis: Analysis, index: dict[int, int], spec: ClassSpec,
                annotation: dict) -> int | None:
        """Store the verdict an annotation gives; the task id if the verdict changed."""
        task_id = int(annotation["task"])
        i = index.get(task_id)
        if i is None or annotation.get("was_cancelled"):
            return None
        names = analysis.class_names
        found = classify_verdict(annotation.get("result"), spec, names[analysis.labels[i]],
                                 names[analysis.predicted[i]])
        if found is None:
            return None
        verdict = {"verdict": found[0], "label": found[1], "annotation_id": annotation["id"],
                   "version": analysis.model_version}
        return task_id if store.record_verdict(task_id, verdict) else None

    @staticmethod
    def _forget(store: ProjectStore, deleted: set[int]) -> dict:
        """Verdicts of annotations Label Studio no longer holds are forgotten."""
        forgotten = [int(t) for t, v in store.verdicts().items() if v.get("annotation_id") in deleted]
        for task_id in forgotten:
            store.forget_verdict(task_id)
        return {"status": "ok", "forgotten": len(forgotten)}

    def _mark_reviewed(self, client: LabelStudioClient, project_id: int, store: ProjectStore,
                       task_ids: list[int]) -> None:
        """Reviewed tasks leave the review queue at once; removed ones go to the excluded tab."""
        verdicts = store.verdicts()
        updates = {t: {"dc_candidate": 0, "dc_unreviewed": 0, "dc_reviewed": verdicts[str(t)]["verdict"],
                       "dc_excluded": int(verdicts[str(t)]["verdict"] == "removed")} for t in task_ids}
        try:
            client.merge_task_fields(project_id, updates)
        except Exception as exc:  # the verdict is stored; the next analysis republishes the fields
            log.warning("project %s: could not update reviewed tasks yet: %s", project_id, exc)

    def _maybe_retrain(self, project_id: int, store: ProjectStore) -> None:
        threshold = self.settings.retrain_after_verdicts
        if not threshold or self.submit is None:
            return
        version = store.current_version()
        fresh = sum(1 for v in store.verdicts().values() if v.get("version") == version)
        if fresh >= threshold and not store.project_info().get("retrain_requested_for") == version:
            store.update_project_info(retrain_requested_for=version)
            self.submit(project_id)


# --- /predict ----------------------------------------------------------------------------

class Predictor:
    """Answers /predict: stored analysis for analysed tasks, the current model for new ones."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._cache: dict[int, tuple[str, dict[int, tuple[str, float]], list[str]]] = {}
        self._models: dict[str, ModelSet] = {}

    def current_version(self, project_id: int) -> str | None:
        return ProjectStore(self.settings.model_dir, project_id).current_version()

    def _answers(self, project_id: int) -> tuple[str, dict[int, tuple[str, float]]] | None:
        store = ProjectStore(self.settings.model_dir, project_id)
        version = store.current_version()
        if version is None:
            return None
        cached = self._cache.get(project_id)
        if cached is None or cached[0] != version:
            analysis = store.load_analysis(version)
            best = analysis.pred_probs.max(axis=1)
            by_task = {int(t): (analysis.class_names[analysis.predicted[i]], float(best[i]))
                       for i, t in enumerate(analysis.task_ids) if t >= 0}
            self._cache[project_id] = cached = (version, by_task, analysis.class_names)
        return cached[0], cached[1]

    def __call__(self, project_id: int, tasks: list[dict], label_config: str | None) -> list[dict]:
        answers = self._answers(project_id)
        if answers is None:
            return [{"result": [], "score": 0.0, "model_version": "deconfusion-untrained"} for _ in tasks]
        version, by_task = answers
        spec = parse_label_config(label_config) if label_config else ClassSpec(
            **ProjectStore(self.settings.model_dir, project_id).project_info()["spec"])
        results = []
        for task in tasks:
            known = by_task.get(int(task.get("id", -1)))
            label, score = known if known else self._classify(project_id, version, task, spec)
            results.append({"result": [publish.choice_result(spec, label)] if label else [],
                            "score": round(score, 6), "model_version": version})
        return results

    def _classify(self, project_id: int, version: str, task: dict, spec: ClassSpec) -> tuple[str | None, float]:
        """A task the analysis did not see: download its image and ask the fold models."""
        store = ProjectStore(self.settings.model_dir, project_id)
        model = self._models.get(version)
        if model is None:
            model = self._models[version] = ModelSet.load(store.version_dir(version) / "model.pt")
        try:
            with LabelStudioClient(self.settings) as client:
                data = client.fetch_image(task, spec)
            pixels, _ = decode_image(data, name=f"task {task.get('id')}")
        except Exception as exc:  # an unreadable new image gets an empty answer, not a failed request
            log.warning("predict: task %s: %s", task.get("id"), exc)
            return None, 0.0
        probs = model.predict_proba(fit_to_shape(pixels, model.input_shape)[None])[0]
        k = int(probs.argmax())
        return model.class_names[k], float(probs[k])
