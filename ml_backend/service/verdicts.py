"""Reviewers' verdicts: what an annotation in Label Studio says about a flagged label
(:func:`classify_verdict`), recorded from annotation events (:class:`VerdictHandler`), and handed
to the next analysis as reviews (:func:`reviews_from_verdicts`).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from datetime import datetime, timezone
from typing import Callable, Mapping

import numpy as np

from ..analysis import Analysis
from ..config import Settings
from ..dataset import ImageDataset
from ..detectors.verifier import reordered_within
from ..errors import LabelStudioRejected
from ..ls.client import LabelStudioClient, annotation_author, annotation_time, timestamp
from ..ls.schema import ClassSpec
from ..pipeline import rerank
from ..publish import holding, is_flagged, saved_after_labels, verdict_fields
from ..reviews import Review
from ..store import ProjectStore, read_json
from ..vocabulary import VERDICT_CONTROL, Verdict
from .crowd import CROWD_FILE, UNKNOWN_ANNOTATOR

log = logging.getLogger(__name__)


def reviews_from_verdicts(verdicts: dict[str, dict], dataset: ImageDataset) -> dict[str, Review]:
    """The verdicts the backend stored (by task id) as reviews of ``dataset``'s images: kept ->
    confirmed, relabeled_to_model / relabeled_other -> relabeled, removed and ambiguous as they
    are; each with the label the reviewer judged (``given``: the data set already carries the
    reviewer's label), so a relabel teaches the verifier what a wrong label looks like, as
    ``analyze --verdicts`` does. A kept or relabeled verdict whose label is no longer the task's
    label (changed in Label Studio since) is stale and left out: the image is unreviewed again."""
    reviews = {}
    for item, task_id, label in zip(dataset.items, dataset.task_ids, dataset.labels):
        verdict = verdicts.get(str(int(task_id)))
        if verdict is None:
            continue
        if verdict["verdict"] in (Verdict.REMOVED, Verdict.AMBIGUOUS):
            reviews[item] = Review(verdict["verdict"])
        elif verdict.get("label") == dataset.class_names[label]:
            reviews[item] = Review("confirmed" if verdict["verdict"] == Verdict.KEPT else "relabeled", verdict["label"],
                                   verdict.get("given", ""))
    return reviews


def classify_verdict(result: list[dict], spec: ClassSpec, human_label: str, suggested: str) -> tuple[str, str] | None:
    """(verdict, label now) from an annotation's result, or None if it carries no label."""
    label, explicit = None, None
    for item in result or []:
        choices = (item.get("value") or {}).get("choices") or []
        if item.get("from_name") == spec.choices_name and choices:
            label = choices[0]
        elif item.get("from_name") == VERDICT_CONTROL and choices:
            explicit = Verdict.from_choice(choices[0])
    if explicit in (Verdict.REMOVED, Verdict.AMBIGUOUS):
        return explicit.value, label or human_label
    if label is None:
        return None
    if label == human_label:
        return Verdict.KEPT.value, label
    return (Verdict.RELABELED_TO_MODEL if label == suggested else Verdict.RELABELED_OTHER).value, label


class VerdictHandler:
    """Turns annotation events into verdicts; idempotent; may trigger a new analysis.

    An event only names annotations: each is read from Label Studio and must belong to the
    event's project, so a made-up event cannot record a verdict or drop a task from training.
    """

    def __init__(self, settings: Settings, submit: Callable[[int], object] | None = None) -> None:
        self.settings = settings
        self.submit = submit
        self.reranks = Coalescing()

    def __call__(self, action: str, project_id: int, annotation_ids: list[int]) -> dict:
        store = ProjectStore(self.settings.model_dir, project_id)
        analysis = store.load_analysis()
        if analysis is None:
            return {"status": "ignored", "reason": "no analysis for this project yet"}
        with LabelStudioClient(self.settings) as client:
            found = client.find_annotations(annotation_ids)
            if action == "ANNOTATIONS_DELETED":
                gone = {a for a, annotation in found.items() if annotation is None}
                forgotten = forget_verdicts(store, gone, held=lambda ids: {
                    a for a, annotation in client.find_annotations(ids).items() if annotation is not None})
                # another reviewer's annotation still speaks for the task; else it is back in the queue
                record_verdicts(store, analysis, reviews_left(client, analysis, forgotten))
                _mark_reviewed(client, project_id, store, analysis, forgotten)
                return {"status": "ok", "forgotten": len(forgotten)}
            genuine = [a for a in found.values() if a is not None and _in_project(client, a, project_id)]
            changed = record_verdicts(store, analysis, genuine)
            # every reviewed task of the event, not only changed ones: a repeated event retries a failed mark
            reviewed = ({int(a["task"]) for a in genuine} & {int(t) for t in store.verdicts()}) | set(changed)
            _mark_reviewed(client, project_id, store, analysis, sorted(reviewed))
            if changed:
                if self.submit is not None and retrain_due(store, self.settings.retrain_after_verdicts):
                    self._submit_retraining(store, project_id)
                elif rerank_due(store, self.settings.rerank_every):
                    self.reranks.run(project_id, lambda: self.rerank(project_id))
        unknown = len(found) - len(genuine)
        if unknown:
            log.warning("project %s: %s for %d annotation(s) Label Studio does not hold in this project: ignored",
                        project_id, action, unknown)
        return {"status": "ok", "verdicts": len(changed), "ignored": unknown}

    def _submit_retraining(self, store: ProjectStore, project_id: int) -> None:
        """Ask for the new analysis the verdicts call for; if the job queue is down, the next verdict asks again."""
        try:
            self.submit(project_id)
        except Exception as exc:
            store.update_project_info(retrain_requested_for=None)
            log.error("project %s: could not request the retraining the verdicts call for (%s); the next verdict "
                      "asks again", project_id, exc)

    def rerank(self, project_id: int) -> dict:
        """Re-rank the project's published scores from its stored analysis and verdicts."""
        store = ProjectStore(self.settings.model_dir, project_id)
        analysis = store.load_analysis()
        if analysis is None:
            return {}
        try:
            with LabelStudioClient(self.settings) as client:
                return rerank_published(store, analysis, lambda updates: client.merge_task_fields(project_id, updates),
                                        seed=self.settings.seed)
        except Exception:  # not re-ranked after all: the next verdict asks again, not RERANK_AFTER more
            store.update_project_info(reranked_at={})
            raise


class Coalescing:
    """Runs one background job per key at a time; requests during a run coalesce into one more run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set = set()
        self._again: set = set()
        self._threads: list[threading.Thread] = []

    def run(self, key, job: Callable[[], object]) -> None:
        with self._lock:
            if key in self._running:
                self._again.add(key)
                return
            self._running.add(key)
            thread = threading.Thread(target=self._loop, args=(key, job), name=f"deconfusion-rerank-{key}", daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def wait(self, timeout: float) -> None:
        """Wait for the runs started so far."""
        for thread in list(self._threads):
            thread.join(timeout)

    def _loop(self, key, job: Callable[[], object]) -> None:
        while True:
            try:
                job()
            except Exception:  # a failed re-rank leaves the last published order; the next verdicts retry
                log.exception("re-rank of %s failed", key)
            with self._lock:
                if key not in self._again:
                    self._running.discard(key)
                    return
                self._again.discard(key)


def verdicts_on_labels(analysis: Analysis, verdicts: Mapping[str, dict]) -> np.ndarray:
    """(N,) int8 verdicts on the labels ``analysis`` scored: 1 = found wrong, 0 = right, -1 = none.
    A verdict counts when it was made on this analysis (the reviewer saw its label), or is an
    older "kept" of the same label; removals and ambiguities say nothing about the label."""
    known = np.full(len(analysis.items), -1, dtype=np.int8)
    index, names = analysis.index_of_task(), analysis.class_names
    for task, verdict in verdicts.items():
        i = index.get(int(task))
        kind = Verdict(verdict["verdict"])
        if i is None or not kind.judges_label:
            continue
        if verdict.get("version") == analysis.model_version:
            known[i] = int(kind.found_wrong)
        elif kind == Verdict.KEPT and verdict.get("label") == names[analysis.labels[i]]:
            known[i] = 0
    return known


def rerank_published(store: ProjectStore, analysis: Analysis,
                     write_fields: Callable[[dict[int, dict]], object], *, seed: int = 0) -> dict:
    """Re-rank ``analysis``' unreviewed flagged tasks with its verdicts and write the ``dc_error_score``
    of those whose score changed since the last write, highest first (the top of the queue is right
    first). The queue keeps its tasks until the next analysis: its scores, and those of the other
    flagged tasks, are handed out again within each group in the verifier's order, so every queue
    task still shows a score that made it a candidate. Idempotent: the same verdicts write nothing
    the second time. Returns the log entry it appends to the project's re-rank log."""
    started = time.perf_counter()
    verdicts = store.verdicts()
    known = verdicts_on_labels(analysis, verdicts)
    verified, weight = rerank(analysis, known, seed=seed)
    # the queue as publishing left it: a stale verdict (the label changed since) put its task back
    reviewed = np.array([holding(analysis, i, verdicts.get(str(int(t)))) is not None
                         for i, t in enumerate(analysis.task_ids)], dtype=bool)
    flagged = np.array([is_flagged(analysis, i) for i in range(len(analysis))], dtype=bool) & ~reviewed
    scores = analysis.error_score.copy()
    for group in (flagged & analysis.is_candidate, flagged & ~analysis.is_candidate):
        scores = reordered_within(scores, verified, group)
    published_path = store.version_dir(analysis.model_version) / "published_scores.npy"
    published = np.load(published_path) if published_path.exists() else analysis.error_score
    changed = [i for i in np.argsort(-scores, kind="stable")
               if flagged[i] and round(float(scores[i]), 6) != round(float(published[i]), 6)]
    write_fields({int(analysis.task_ids[i]): {"dc_error_score": round(float(scores[i]), 6)} for i in changed})
    np.save(published_path, scores.astype(np.float32))
    entry = {"model_version": analysis.model_version, "verdicts": int((known >= 0).sum()),
             "found_wrong": int((known == 1).sum()), "verifier_weight": round(weight, 4),
             "tasks_rewritten": len(changed),
             "seconds": round(time.perf_counter() - started, 2),
             "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    store.append_rerank(entry)
    log.info("project %s: re-ranked from %d verdicts (verifier weight %.2f), %d tasks rewritten in %.1f s",
             store.project_id, entry["verdicts"], weight, len(changed), entry["seconds"])
    return entry


def rerank_after_publishing(store: ProjectStore, analysis: Analysis, write_fields: Callable[[dict[int, dict]], object],
                            *, after_verdicts: int, seed: int = 0) -> dict | None:
    """Publishing writes ``analysis``' own scores over any re-rank made while it ran (verdicts come
    in as soon as the queue is up): forget what such a re-rank wrote and re-rank once more when the
    verdicts on this version call for it (``after_verdicts``, 0 = never). Returns the re-rank's log
    entry, or None."""
    (store.version_dir(analysis.model_version) / "published_scores.npy").unlink(missing_ok=True)
    if store.current_version() != analysis.model_version:
        return None
    store.update_project_info(reranked_at={})  # nothing of this version's re-ranks is left in Label Studio
    return rerank_published(store, analysis, write_fields, seed=seed) if rerank_due(store, after_verdicts) else None


def rerank_due(store: ProjectStore, after_verdicts: int) -> bool:
    """Whether ``after_verdicts`` (0 = never) verdicts on the current version came in since the last
    re-rank; marks the count re-ranked when so (a repeated webhook adds no verdict, so no re-rank)."""
    version, fresh = _verdicts_on_current(store)
    done = (store.project_info().get("reranked_at") or {}).get(version, 0)
    if not after_verdicts or fresh - done < after_verdicts:
        return False
    store.update_project_info(reranked_at={version: fresh})
    return True


def record_verdicts(store: ProjectStore, analysis: Analysis, annotations: list[dict]) -> list[int]:
    """Store the verdict each annotation gives on a task of ``analysis``; returns the ids of the
    tasks whose verdict changed (the same annotation twice changes nothing). Cancelled
    annotations and annotations without a label are skipped, and so are tasks the analysis did
    not see, but for removals: a removal counts on any task (an image the analysis left out
    because it was removed stays out), and one the task's newer annotation no longer makes is
    taken back (its verdict forgotten: the next analysis ranks the image)."""
    index, spec = analysis.index_of_task(), ClassSpec(**store.project_info()["spec"])
    names, stored = analysis.class_names, store.verdicts()
    crowd_labels = functools.cache(lambda: _crowd_labels(store, analysis))  # read once, if a label was edited
    decided: dict[int, dict] = {}
    for annotation in annotations:
        task_id = int(annotation["task"])
        i = index.get(task_id)
        judged = (names[analysis.labels[i]], names[analysis.predicted[i]]) if i is not None else ("", "")
        found = None if annotation.get("was_cancelled") else classify_verdict(annotation.get("result"), spec, *judged)
        if found is None:
            continue
        verdict = {"verdict": found[0], "label": found[1], "given": judged[0] or found[1],
                   "annotation_id": annotation["id"], "version": analysis.model_version,
                   "updated_at": annotation.get("updated_at") or annotation.get("created_at") or "",
                   **_earlier_reviews(stored.get(str(task_id)), annotation["id"], _label_read(
                       crowd_labels, analysis, annotation, judged[0], stored.get(str(task_id))))}
        if task_id not in decided or _replaces(decided[task_id], verdict):
            decided[task_id] = verdict
    taken_back = []
    for task_id in [t for t, v in decided.items() if t not in index and v["verdict"] != Verdict.REMOVED]:
        new, old = decided.pop(task_id), stored.get(str(task_id))
        if old is not None and old["verdict"] == Verdict.REMOVED and _replaces(old, new) \
                and store.forget_verdict(task_id):
            taken_back.append(task_id)
    return store.record_verdicts(decided, replaces=_replaces) + taken_back


def _earlier_reviews(stored: dict | None, annotation_id: int, read: dict) -> dict:
    """The ids of the annotations whose verdicts a new one on the task replaces (reviews, never a
    labeler's label: ``service.analyze.labelers_annotations``), the labels an analysis read from
    annotations reviewers edited in place (``read``, see :func:`_label_read`), and the verdict
    other annotations gave before, newest first (``replaced``, one per annotation: the first whose
    annotation Label Studio still holds speaks again if this one is deleted, :func:`forget_verdicts`),
    as the verdict's own fields."""
    stored = stored or {}
    earlier, replaced = set(stored.get("earlier_annotations", [])), stored.get("replaced", [])
    if stored and stored.get("annotation_id") != annotation_id:
        earlier.add(stored["annotation_id"])
        replaced = [{k: v for k, v in stored.items() if k != "replaced"},
                    *(v for v in replaced if v["annotation_id"] != stored["annotation_id"])]
    read = {**read, **stored.get("read_labels", {})}  # the first reading is the labeler's
    fields = {"earlier_annotations": sorted(earlier), "read_labels": read, "replaced": replaced}
    return {key: value for key, value in fields.items() if value}


def _label_read(crowd_labels: Callable[[], dict | None], analysis: Analysis, annotation: dict, label: str,
                stored: dict | None) -> dict:
    """{annotation id: [author, label]} when ``annotation`` was a labeler's label ``analysis``
    read: it existed before the analysis read the labels, was no review (``stored``: the task's
    verdict), and a reviewer (or its labeler) changed it in place, the annotation keeping its
    author. The label is that author's in the analysis' ``crowd.json`` (``crowd_labels``, see
    :func:`_crowd_labels`; the task's label ``label`` for an analysis without one), which the
    annotator table judges; else {}."""
    labels_as_of = analysis.summary.get("labels_as_of")
    created = annotation.get("created_at")
    if not (label and labels_as_of and created) or timestamp(created) > timestamp(labels_as_of) \
            or annotation["id"] in review_annotations(stored or {}):
        return {}
    author, counted = annotation_author(annotation), crowd_labels()
    if counted is not None:  # the labels it counted; none of this author's: a review of an older iteration
        label = counted.get((int(annotation["task"]), UNKNOWN_ANNOTATOR if author is None else author))
    return {str(annotation["id"]): [author, label]} if label else {}


def _crowd_labels(store: ProjectStore, analysis: Analysis) -> dict[tuple[int, int], str] | None:
    """(task, annotator) -> the label ``analysis`` counted as that annotator's (its ``crowd.json``);
    None for an analysis without one."""
    crowd = read_json(store.version_dir(analysis.model_version) / CROWD_FILE, None)
    return None if crowd is None else {(row[0], row[1]): row[2] for row in crowd.get("annotations") or []}


def review_annotations(verdict: Mapping) -> set[int]:
    """The annotations that gave ``verdict`` or a verdict it replaced: reviews, never a labeler's label."""
    return {verdict.get("annotation_id"), *verdict.get("earlier_annotations", [])} - {None}


def _replaces(stored: dict, new: dict) -> bool:
    """Events come out of order: a verdict replaces another annotation's only if saved later
    (the task's label is its newest annotation's). The same annotation saved again with the same
    answer decides nothing new: its verdict keeps the iteration it was given on (else a relabel
    re-saved later would count as a "kept" of the next iteration). A removal or an ambiguity taken
    back in the same annotation is a new answer."""
    if stored.get("annotation_id") == new["annotation_id"]:
        resaved_relabel = new["verdict"] == Verdict.KEPT and Verdict(stored["verdict"]).found_wrong
        return not (stored.get("label") == new["label"] and (new["verdict"] == stored["verdict"] or resaved_relabel))
    return annotation_time(new) >= annotation_time(stored)


def reviews_left(client: LabelStudioClient, analysis: Analysis, task_ids: list[int]) -> list[dict]:
    """For each task, its newest annotation saved after ``analysis`` read the labels (another
    reviewer's, once the one that gave its verdict was deleted); none where there is none."""
    left = []
    for task_id in task_ids:
        saved = [a for a in client.get_task(task_id).get("annotations") or []
                 if not a.get("was_cancelled") and saved_after_labels(analysis, a)]
        if saved:
            left.append({**max(saved, key=lambda a: (annotation_time(a), int(a.get("id") or 0))), "task": task_id})
    return left


def forget_verdicts(store: ProjectStore, deleted_annotations: set[int],
                    held: Callable[[list[int]], set[int]]) -> list[int]:
    """Forget the verdicts of annotations Label Studio no longer holds; where such a verdict
    replaced one whose annotation Label Studio still holds (``held``: the ids of those it holds;
    an earlier iteration's review, which no later analysis' labels count as new), that one speaks
    for the task again. Returns the ids of the tasks whose verdict went or came back."""
    touched = [int(t) for t, v in store.verdicts().items() if v.get("annotation_id") in deleted_annotations]
    for task_id in touched:
        earlier = store.verdicts()[str(task_id)].get("replaced", [])
        candidates = [v["annotation_id"] for v in earlier if v["annotation_id"] not in deleted_annotations]
        alive = held(candidates) if candidates else set()
        standing = next((n for n, v in enumerate(earlier) if v["annotation_id"] in alive), None)
        if standing is None:
            store.forget_verdict(task_id)
        else:
            older = earlier[standing + 1:]
            store.record_verdict(task_id, {**earlier[standing], **({"replaced": older} if older else {})})
    return touched


def retrain_due(store: ProjectStore, after_verdicts: int) -> bool:
    """Whether ``after_verdicts`` (0 = never) verdicts on the current version call for a new analysis
    that was not requested yet; marks it requested when so."""
    version, fresh = _verdicts_on_current(store)
    if not after_verdicts or fresh < after_verdicts or store.project_info().get("retrain_requested_for") == version:
        return False
    store.update_project_info(retrain_requested_for=version)
    return True


def _verdicts_on_current(store: ProjectStore) -> tuple[str | None, int]:
    """The project's current version and how many verdicts were given on it."""
    version = store.current_version()
    return version, sum(1 for v in store.verdicts().values() if v.get("version") == version)


def _in_project(client: LabelStudioClient, annotation: dict, project_id: int) -> bool:
    project = annotation.get("project")
    if project is None:  # annotations made before Label Studio stored their project
        try:
            project = client.get_task(int(annotation["task"])).get("project")
        except LabelStudioRejected as exc:  # the task was deleted since
            if exc.status != 404:
                raise
    return project == project_id


def _mark_reviewed(client: LabelStudioClient, project_id: int, store: ProjectStore, analysis: Analysis,
                   task_ids: list[int]) -> None:
    """Reviewed tasks leave the review queue at once, removed ones go to the excluded tab; a task
    whose verdict was forgotten comes back (``publish.verdict_fields`` as the verdicts stand now),
    and so does a removed image the analysis left out whose removal was taken back, unranked until
    the next analysis. Tasks that already carry those fields are not written again."""
    verdicts, index = store.verdicts(), analysis.index_of_task()
    # as publishing reads them: an analysed task's verdict only where it still speaks for its label
    updates = {t: verdict_fields(analysis, index.get(t), verdicts.get(str(t)) if t not in index
                                 else holding(analysis, index[t], verdicts.get(str(t)))) for t in task_ids}
    try:
        client.merge_task_fields(project_id, updates)
    except Exception as exc:  # the verdict is stored; a repeated event or the next analysis writes the fields
        log.warning("project %s: could not update reviewed tasks yet: %s", project_id, exc)
