"""The analysis job: a Label Studio project -> data set (with the reviewers' verdicts) ->
analysis saved under MODEL_DIR -> published back (:mod:`ml_backend.publish`) -> a line in the
project's history for the report. ``analyze_project`` is what the runners execute.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__, publish
from ..analysis import Analysis, save, write_exports
from ..config import Settings
from ..dataset import ImageDataset, Record, build_dataset
from ..errors import LabelStudioError, UnknownProject
from ..ls.client import LabelStudioClient
from ..ls.schema import parse_label_config
from ..pipeline import ANALYSIS_PARAMS, new_model_version, run_analysis
from ..reviews import apply_reviews
from ..store import ProjectStore, write_json
from ..vocabulary import VERSION_PREFIX, Progress, Verdict
from .crowd import CROWD_FILE, crowd_summary
from .jobs import update_job
from .verdicts import rerank_after_publishing, review_annotations, reviews_from_verdicts

log = logging.getLogger(__name__)


def analyze_project(project_id: int, settings: Settings, progress: Progress) -> str:
    """Fetch, analyse and publish one project; returns the new model version, or the current one
    when its images, labels, verdicts and settings are unchanged and it is still published."""
    with LabelStudioClient(settings) as client:
        return _analyze_and_publish(client, project_id, settings, progress)


def _analyze_and_publish(client: LabelStudioClient, project_id: int, settings: Settings, progress: Progress) -> str:
    store = ProjectStore(settings.model_dir, project_id)
    project = client.get_project(project_id)
    spec = parse_label_config(project["label_config"])
    store.update_project_info(title=project.get("title", ""), spec=spec.__dict__)
    downloads = client.labeled_records(
        project_id, spec, Path(settings.model_dir) / "cache",
        progress=lambda done, total: progress("download", done, total))
    log.info("project %s: %d images downloaded, %d unchanged since the last analysis, %d skipped", project_id,
             downloads.fetched, downloads.unchanged, len(downloads.skipped))
    records = downloads.records
    dataset = build_dataset(records, class_names=spec.labels, scratch_dir=Path(settings.model_dir) / "tmp",
                            progress=lambda done, total: progress("decode", done, total))
    dataset.skipped[:0] = downloads.skipped
    verdicts = store.verdicts()  # as the analysis starts; publishing and the history read them again, later
    dataset, outcome = apply_reviews(dataset, reviews_from_verdicts(verdicts, dataset), settings.confirmed_weight)
    fingerprint = input_fingerprint(dataset, verdicts, settings)
    if _still_published(client, project_id, store, fingerprint, len(dataset)):
        current = str(store.current_version())
        log.info("project %s: nothing changed since %s; it stays published", project_id, current)
        _say_if_left(settings, project_id, publish.remove_older_predictions(client, project_id, current))
        return current

    iteration = store.next_iteration()
    version = new_model_version(f"{VERSION_PREFIX}-v{iteration}")
    analysis, ensemble = run_analysis(dataset, settings, model_version=version, progress=progress, reviews=outcome)
    analysis.summary["downloads"] = {"fetched": downloads.fetched, "unchanged": downloads.unchanged}
    analysis.summary["labels_as_of"] = downloads.labels_as_of  # a verdict saved later is newer than its labels
    crowd = crowd_summary(analysis, labelers_annotations(records, verdicts))
    crowd["user_names"] = client.user_names()
    publish.check_config_unchanged(client.get_project(project_id), spec, analysis)  # as the config is now
    with store.new_version(version) as folder:
        save(analysis, folder)
        write_exports(analysis, folder)
        write_json(folder / CROWD_FILE, crowd)
        ensemble.save(folder / "model.pt")
    # /setup reports the current version; it must equal the published predictions' version.
    store.set_current(version, iteration)
    left = publish.publish_analysis(client, project_id, project, spec, analysis, settings, store, progress,
                                    crowd=crowd)
    rerank_after_publishing(store, analysis, lambda updates: client.merge_task_fields(project_id, updates),
                            after_verdicts=settings.rerank_every, seed=settings.seed)
    store.append_history(history_entry(analysis, iteration, store.verdicts(), crowd, refused=client.refused_writes))
    store.mark_published(fingerprint)
    _say_if_left(settings, project_id, left)
    log.info("project %s: published %s (%d candidates)", project_id, version, int(analysis.is_candidate.sum()))
    return version


def _say_if_left(settings: Settings, project_id: int, error: str) -> None:
    """The job's status says when older versions' predictions are still in Label Studio."""
    if error:
        update_job(settings, project_id, warning=f"older versions' predictions are not all removed yet ({error}); "
                                                 "the next Start Training removes them")


def input_fingerprint(dataset: ImageDataset, verdicts: dict[str, dict], settings: Settings) -> str:
    """SHA-256 of everything an analysis depends on: each image's task, pixels, label, split and
    weight, the verdicts, the analysis settings and the code version, and the images it had to
    skip (so a new broken image is reported). Equal fingerprints give the same analysis (every
    random choice is seeded)."""
    digest = hashlib.sha256(json.dumps({
        "code": __version__, "classes": dataset.class_names, "verdicts": verdicts,
        "skipped": sorted((s.item, s.reason) for s in dataset.skipped),
        "settings": {name: getattr(settings, name) for name in ANALYSIS_PARAMS}}, sort_keys=True).encode())
    for row in zip(dataset.task_ids.tolist(), dataset.pixel_hashes, dataset.labels.tolist(), dataset.splits.tolist(),
                   dataset.weights.tolist()):
        digest.update(repr(row).encode())
    return digest.hexdigest()


def _still_published(client: LabelStudioClient, project_id: int, store: ProjectStore, fingerprint: str,
                     images: int) -> bool:
    """The current version came from the same inputs and all its predictions are still in Label
    Studio (the last step of publishing: a job killed earlier leaves fewer)."""
    current = store.current()
    if current.get("input_fingerprint") != fingerprint:
        return False
    return client.model_versions(project_id).get(current["model_version"], 0) >= images


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


def labelers_annotations(records: list[Record], verdicts: dict[str, dict]) -> dict[int, list[tuple[int | None, str]]]:
    """task id -> (annotator, label) of each annotator's newest labeling annotation. Reviewers'
    verdict annotations are left out first, so a labeler who later reviews the task keeps the label
    they gave as a labeler; a labeler's annotation a reviewer changed in place counts with the
    label an analysis read from it (the verdict's ``read_labels``)."""
    reviews = {a for v in verdicts.values() for a in review_annotations(v)}
    read = {int(a): tuple(made) for v in verdicts.values() for a, made in v.get("read_labels", {}).items()}
    labelers = {}
    for record in records:
        newest: dict[int | str, tuple[int | None, str]] = {}
        for annotation_id, annotator, label in record.annotations:  # oldest first: the last one stays
            if annotation_id in read:
                annotator, label = read[annotation_id]
            elif annotation_id in reviews:
                continue
            # deleted users' annotations have no author: each is someone's label
            newest[annotator if annotator is not None else f"unknown {annotation_id}"] = (annotator, label)
        labelers[record.task_id] = list(newest.values())
    return labelers


def history_entry(analysis: Analysis, iteration: int, verdicts: dict[str, dict], crowd: dict | None = None, *,
                  refused: dict[int, str] | None = None) -> dict:
    """The report's line for this analysis. ``refused``: task id -> why Label Studio refused
    its fields when they were published (the report lists them beside the unreadable images)."""
    s = analysis.summary
    return {
        "iteration": iteration,
        "model_version": analysis.model_version,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "images": s["images"],
        **review_progress(analysis, verdicts),
        "estimated_error_rate": s["estimated_error_rate"],
        "model_accuracy": s["model_accuracy_estimate"],
        "per_class_error_rate": publish.per_class_error_rate(analysis),
        "confused_pairs": publish.confused_pairs(analysis),
        "duplicates_found": s["duplicate_pairs"],
        "leakage_found": s["leakage_pairs"],
        "annotators": len((crowd or {}).get("annotators", [])),
        "multi_annotated": (crowd or {}).get("multi_annotated", 0),
        "annotator_disagreements": len((crowd or {}).get("disagreements", {})),
        "not_analysed": s.get("skipped", []),
        "fields_refused": [{"task": task, "reason": why} for task, why in sorted((refused or {}).items())],
    }


def review_progress(analysis: Analysis, verdicts: dict[str, dict]) -> dict:
    """What reviewers have done on ``analysis`` under ``verdicts``: candidates still to review,
    verdicts by kind (cumulative), duplicate and leakage pairs resolved (a member removed). The
    report recomputes it for the latest iteration from the live verdicts."""
    counts = {kind.value: 0 for kind in Verdict}
    for v in verdicts.values():
        counts[v["verdict"]] = counts.get(v["verdict"], 0) + 1
    removed = {int(t) for t, v in verdicts.items() if v["verdict"] == Verdict.REMOVED}
    resolved = [p for p in analysis.duplicates
                if {int(analysis.task_ids[p["a"]]), int(analysis.task_ids[p["b"]])} & removed]
    return {"candidates": int(publish.unreviewed_candidates(analysis, verdicts).sum()), "verdicts": counts,
            "duplicates_resolved": len(resolved), "leakage_resolved": sum(1 for p in resolved if p["cross_split"])}
