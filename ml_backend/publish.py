"""Publish an Analysis to Label Studio: predictions, our ``dc_`` task fields, Data Manager tabs
and the overview project (:func:`publish_analysis`), and take it all out again
(:func:`unpublish_project`). The mapping from an analysis to those objects is pure functions
(:func:`prediction`, :func:`task_fields`, :func:`data_manager_tabs`, ...); the writes go through
``ls.client``.

Everything written carries the analysis' model version and can be removed again:
predictions by model version, task fields by name (``vocabulary.TASK_FIELDS``), tabs by title prefix.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable
from urllib.parse import urlencode

import numpy as np

from .analysis import Analysis
from .config import Settings
from .errors import LabelConfigError, LabelStudioError
from .ls.client import LabelStudioClient, annotation_time, timestamp
from .ls.schema import ClassSpec, parse_label_config
from .store import ProjectStore
from .views.overview import all_clear_task_html, cell_task_html
from .views.review import evidence_html
from .vocabulary import OUR_TABS, REVIEW_QUEUE_TAB, TAB_PREFIX, VERSION_FIELD, Progress, Verdict

log = logging.getLogger(__name__)

OVERVIEW_SUFFIX = " · De-Confusion overview"
OVERVIEW_CONFIG = Path(__file__).resolve().parent.parent / "label_studio_config" / "overview.xml"
OVERVIEW_MARKER = 'name="dc_cell_status"'  # a control only our overview config has

NUMERIC_FIELDS = ("dc_error_score", "dc_candidate", "dc_unreviewed", "dc_duplicate", "dc_duplicate_group",
                  "dc_similarity", "dc_leakage", "dc_excluded", "dc_p_suggested", "dc_disagreement_rank",
                  "dc_consensus_quality", "dc_together")
DISAGREEMENT_TAB = f"{TAB_PREFIX}: annotators disagree"
DUPLICATE_ORDER = "dc_duplicate_group"  # groups numbered closest copies first (see duplicate_groups)
REVIEW_LEAD = 100
"""The review queue's leading tasks whose fields are written before the tabs appear; the rest of
the queue follows in rank order at 5-8 tasks a second, faster than anyone reviews them."""


def prediction(analysis: Analysis, i: int, spec: ClassSpec) -> dict:
    """The model's label for image ``i`` as a Choices result on the project's own controls."""
    return {
        "task": int(analysis.task_ids[i]),
        "result": [choice_result(spec, analysis.class_names[analysis.predicted[i]])],
        "score": round(float(analysis.pred_probs[i, analysis.predicted[i]]), 6),
        "model_version": analysis.model_version,
    }


def choice_result(spec: ClassSpec, label: str) -> dict:
    return {"from_name": spec.choices_name, "to_name": spec.image_name, "type": "choices",
            "value": {"choices": [label]}}


def is_flagged(analysis: Analysis, i: int) -> bool:
    """Images that get fields and evidence: review candidates, misclassified ones and duplicates."""
    return bool(analysis.is_candidate[i] or analysis.labels[i] != analysis.predicted[i]
                or analysis.duplicate_group[i] >= 0)


def task_fields(analysis: Analysis, i: int, *, leakage: set[int], groups: dict[int, tuple[int, float]],
                together: set[int], evidence: str, verdict: dict | None) -> dict:
    """Our ``dc_`` fields for image ``i``; the Data Manager tabs filter and sort on them.
    ``groups``: image index -> (duplicate group number, its highest SSIM with a copy), see
    :func:`duplicate_groups`; 0 and 0.0 for images without a copy. ``together``: the images of
    flagged cells' parts to relabel at once (:func:`together_members`)."""
    group, similarity = groups.get(i, (0, 0.0))
    return {
        "dc_error_score": round(float(analysis.error_score[i]), 6),
        "dc_suggested": analysis.class_names[analysis.predicted[i]],
        "dc_p_suggested": round(float(analysis.pred_probs[i, analysis.predicted[i]]), 6),
        "dc_cell": analysis.cell_name(i),
        "dc_together": int(i in together),
        **review_fields(analysis, i, verdict),
        "dc_duplicate": int(group > 0),
        "dc_duplicate_group": group,
        "dc_similarity": round(similarity, 4),
        "dc_leakage": int(i in leakage),
        VERSION_FIELD: analysis.model_version,
        "dc_evidence": evidence,
    }


def review_fields(analysis: Analysis, i: int | None, verdict: dict | None) -> dict:
    """The fields that put image ``i``'s task in the review queue and the cell tabs, or, once
    reviewed (``verdict``), out of them and into the reviewed (and excluded) ones. ``i`` None: a
    task the analysis left out (an image a reviewer removed), never a candidate."""
    reviewed = verdict["verdict"] if verdict else ""
    candidate = i is not None and bool(analysis.is_candidate[i])
    return {"dc_candidate": int(candidate and not reviewed), "dc_unreviewed": int(not reviewed),
            "dc_reviewed": reviewed, "dc_excluded": int(reviewed == Verdict.REMOVED)}


def verdict_fields(analysis: Analysis, i: int | None, verdict: dict | None) -> dict:
    """:func:`review_fields` with this version, as every field we write carries it: a verdict's
    own write (on any task, flagged or not) and a task the analysis left out (``i`` None: an
    image a reviewer removed, or whose removal was taken back since)."""
    return {**review_fields(analysis, i, verdict), VERSION_FIELD: analysis.model_version}


def leakage_members(analysis: Analysis) -> set[int]:
    return {idx for pair in analysis.duplicates if pair["cross_split"] for idx in (pair["a"], pair["b"])}


def together_members(analysis: Analysis) -> set[int]:
    """Every image in the part of a flagged cell offered to relabel at once."""
    return {int(i) for cell in analysis.cells for i in analysis.together_members(cell)}


def duplicate_groups(analysis: Analysis) -> dict[int, tuple[int, float]]:
    """image index -> (group number, highest SSIM with a copy) for every image with a duplicate.

    Groups are numbered 1, 2, ... from the most similar copies down (exact copies first, then
    by the group's id), so sorting a tab by ``dc_duplicate_group`` (Label Studio sorts on one
    field) puts copies side by side, closest first."""
    best: dict[int, float] = {}
    for pair in analysis.duplicates:
        for idx in (pair["a"], pair["b"]):
            best[idx] = max(best.get(idx, 0.0), float(pair["ssim"]))
    group_best: dict[int, float] = {}
    for idx, value in best.items():
        group = int(analysis.duplicate_group[idx])
        group_best[group] = max(group_best.get(group, 0.0), value)
    number = {g: n for n, g in enumerate(sorted(group_best, key=lambda g: (-group_best[g], g)), 1)}
    return {idx: (number[int(analysis.duplicate_group[idx])], value) for idx, value in best.items()}


def desired_fields(
    analysis: Analysis, verdicts: dict[str, dict], evidence: Callable[[int], str], crowd: dict | None = None,
    *, tasks: set[int] | None = None,
) -> dict[int, dict]:
    """task id -> the ``dc_`` fields it should carry now: flagged tasks, reviewed ones, and tasks
    whose annotators disagree (``crowd``, see ``service.crowd``: consensus label, its quality
    and the rank in the disagreement tab). ``tasks``: only these task ids (all when None).
    Images a reviewer removed, which the analysis left out, keep their mark (``dc_excluded``)."""
    leakage, groups, together = leakage_members(analysis), duplicate_groups(analysis), together_members(analysis)
    disagreements = (crowd or {}).get("disagreements", {})
    wanted = {}
    for i in range(len(analysis)):
        task_id = int(analysis.task_ids[i])
        if tasks is not None and task_id not in tasks:
            continue
        verdict = holding(analysis, i, verdicts.get(str(task_id)))
        disagreement = disagreements.get(str(task_id))
        if task_id >= 0 and (is_flagged(analysis, i) or verdict or disagreement):
            wanted[task_id] = task_fields(analysis, i, leakage=leakage, groups=groups, together=together,
                                          evidence=evidence(i), verdict=verdict)
            if disagreement:
                wanted[task_id].update(dc_consensus=disagreement["consensus"],
                                       dc_consensus_quality=disagreement["quality"],
                                       dc_disagreement_rank=disagreement["rank"])
    analysed = set(analysis.index_of_task())
    for task, verdict in verdicts.items():
        task_id = int(task)
        if verdict["verdict"] == Verdict.REMOVED and task_id not in analysed and (tasks is None or task_id in tasks):
            wanted[task_id] = verdict_fields(analysis, None, verdict)
    return wanted


def holding(analysis: Analysis, i: int, verdict: dict | None) -> dict | None:
    """``verdict`` if it still speaks for image ``i``'s label: made on this analysis, a removal or
    an ambiguity, a kept or relabeled label the image still has, or one saved after the analysis
    read the labels (a reviewer at work while it trained). Else None: the label changed since (an
    annotation the backend never heard of), the analysis ranked the image as unreviewed, so its
    task belongs in the queue again."""
    if verdict is None or verdict.get("version") == analysis.model_version \
            or verdict["verdict"] in (Verdict.REMOVED, Verdict.AMBIGUOUS):
        return verdict
    if verdict.get("label") == analysis.class_names[analysis.labels[i]] or saved_after_labels(analysis, verdict):
        return verdict
    return None


def saved_after_labels(analysis: Analysis, annotation: dict) -> bool:
    """Whether ``annotation`` (or a verdict, which keeps its annotation's times) was saved after
    the labels the analysis read from Label Studio; False where that time is not known."""
    labels_as_of = analysis.summary.get("labels_as_of")
    return bool(labels_as_of) and annotation_time(annotation) > timestamp(labels_as_of)


def cell_tabs(analysis: Analysis, *, max_tabs: int) -> list[dict]:
    """Tabs for the leading cells, in the overview's reading order weighted by count. A flagged
    cell's tab lists the part of it to relabel at once (its ``together`` images, each label
    likelier wrong than right): "select all" there breaks few correct labels, and the rest of
    the cell goes through the review queue."""
    leading = sorted(analysis.cells, key=lambda c: -c["count"])[:max_tabs]
    tabs = []
    for c in leading:
        together = c.get("together", 0)
        # Reviewed images leave the cell too (the paper's decluttering), so "select all" in a
        # cell tab never overrides a reviewer's verdict. A number, not "dc_reviewed is empty":
        # Label Studio's "empty" filter guesses the field's type from the first task it finds.
        filters = [("dc_cell", "equal", "String", analysis.cell_name_of(c["label"], c["predicted"])),
                   ("dc_unreviewed", "equal", "Number", 1)]
        if together:
            filters.append(("dc_together", "equal", "Number", 1))
        size = f"{together} of {c['count']}, relabel together" if together else str(c["count"])
        tabs.append({
            "title": f"{TAB_PREFIX}: {analysis.class_names[c['label']]} → {analysis.class_names[c['predicted']]} "
                     f"({size})",
            "filters": filters, "ordering": "-dc_error_score", "cell": (c["label"], c["predicted"])})
    return tabs


def data_manager_tabs(analysis: Analysis, *, max_tabs: int, crowd: dict | None = None) -> list[dict]:
    """Every Data Manager tab an analysis publishes, review queue first; the annotators'
    disagreements (most doubtful consensus first) when ``crowd`` found any."""
    disagreement = [{"title": DISAGREEMENT_TAB, "filters": [("dc_disagreement_rank", "greater", "Number", 0)],
                     "ordering": "dc_disagreement_rank"}] if (crowd or {}).get("disagreements") else []
    return [
        {"title": REVIEW_QUEUE_TAB, "filters": [("dc_candidate", "equal", "Number", 1)], "ordering": "-dc_error_score"},
        *cell_tabs(analysis, max_tabs=max_tabs),
        {"title": f"{TAB_PREFIX}: duplicates", "filters": [("dc_duplicate", "equal", "Number", 1)],
         "ordering": DUPLICATE_ORDER},
        {"title": f"{TAB_PREFIX}: train/val leakage", "filters": [("dc_leakage", "equal", "Number", 1)],
         "ordering": DUPLICATE_ORDER},
        {"title": f"{TAB_PREFIX}: excluded", "filters": [("dc_excluded", "equal", "Number", 1)],
         "ordering": "-dc_error_score"},
        *disagreement,
    ]


def confused_pairs(analysis: Analysis, top: int = 5) -> list[dict]:
    return [{"label": analysis.class_names[c["label"]], "predicted": analysis.class_names[c["predicted"]],
             "count": c["count"]} for c in sorted(analysis.cells, key=lambda c: -c["count"])[:top]]


def per_class_error_rate(analysis: Analysis) -> dict[str, float]:
    rates = {}
    for k, name in enumerate(analysis.class_names):
        members = analysis.labels == k
        rates[name] = round(float(analysis.is_candidate[members].mean()), 6) if members.any() else 0.0
    return rates


def unreviewed_candidates(analysis: Analysis, verdicts: dict[str, dict]) -> np.ndarray:
    reviewed = np.array([str(int(t)) in verdicts for t in analysis.task_ids], dtype=bool)
    return analysis.is_candidate & ~reviewed


# --- writes to Label Studio ---------------------------------------------------------------

def image_url(settings: Settings, project_id: int, version: str) -> Callable[[str, dict], str]:
    base = f"{settings.backend_url}/evidence/{project_id}/{version}"
    return lambda kind, params: f"{base}/{kind}.png?{urlencode(params)}"


def check_config_unchanged(project: dict, spec: ClassSpec, analysis: Analysis) -> None:
    """LabelConfigError when ``project``'s labeling config (as Label Studio holds it now) no
    longer takes the predictions of ``analysis``, made for ``spec`` (the config when it began): a
    class, the Choices or the Image renamed or removed while it ran. Label Studio would drop those
    predictions without a word, and the tabs would still list their tasks."""
    now = parse_label_config(project.get("label_config", ""))
    gone = [repr(name) for name in analysis.class_names if name not in now.labels]
    gone += [f"{tag} {old!r}" for tag, old, new in (("<Choices name>", spec.choices_name, now.choices_name),
                                                     ("<Image name>", spec.image_name, now.image_name)) if old != new]
    if gone:
        raise LabelConfigError(
            f"project {project.get('id', '')}: the labeling config no longer offers {', '.join(gone)}, which "
            "this analysis' predictions name: it changed while the analysis ran; nothing was published. Press "
            "Start Training again to analyse the project as it is now")


def publish_analysis(client: LabelStudioClient, project_id: int, project: dict, spec: ClassSpec,
                     analysis: Analysis, settings: Settings, store: ProjectStore, progress: Progress, *,
                     crowd: dict | None = None) -> str:
    """Predictions, task fields, tabs and the overview project for ``analysis``; replaces older versions'
    (returns what kept them from being removed, '' when they were: :func:`remove_older_predictions`).
    ``crowd``: the annotators' disagreements (``service.crowd``), published as fields and a tab.

    What a reviewer needs comes first (stage ``publish``): predictions of the tasks that get
    fields (a task read without a prediction makes Label Studio ask the backend for one), the
    fields of the review queue's leading tasks (:func:`review_order`), the tabs and the overview.
    Then, while review can already start, the rest of the queue's fields in rank order (stage
    ``queue``), the other flagged tasks' fields (``more fields``), every other task's prediction
    (``predictions``) and the removal of older versions' predictions (``old predictions``)."""
    urls = image_url(settings, project_id, analysis.model_version)

    def evidence(i: int) -> str:
        return evidence_html(analysis, i, image_url=urls) if is_flagged(analysis, i) else ""
    verdicts = store.verdicts()
    wanted = desired_fields(analysis, verdicts, evidence, crowd)

    def since(seen: dict[str, dict]) -> dict[int, dict]:
        return fields_since(analysis, store.verdicts(), seen, evidence, crowd)
    index = analysis.index_of_task()
    progress("publish", 0, 4)
    client.create_predictions(project_id, [prediction(analysis, index[t], spec) for t in wanted if t in index])
    progress("publish", 1, 4)
    stale = client.stale_task_fields(project_id, wanted)
    lead, queue, rest = review_order(stale, wanted, lead=REVIEW_LEAD)
    client.write_task_fields(project_id, lead,
                             progress=lambda done, total: progress("publish fields", done, total))
    progress("publish", 2, 4)

    client.delete_views(project_id, OUR_TABS)
    tab_ids = {}
    for view in data_manager_tabs(analysis, max_tabs=settings.max_cell_tabs, crowd=crowd):
        tab_ids[view.get("cell", view["title"])] = client.create_view(
            project_id, view["title"], view["filters"], view["ordering"], numeric_fields=NUMERIC_FIELDS)
    store.update_project_info(tabs={str(k): v for k, v in tab_ids.items()})
    progress("publish", 3, 4)

    publish_overview(client, project_id, project, analysis, settings, store, tab_ids, urls)
    progress("publish", 4, 4)

    # Reviewers work while a big project publishes (minutes): a verdict marks its task reviewed at
    # once, and a write made from the verdicts publishing started with would put it back in the
    # queue, where "select all" in a cell tab could override the reviewer. Each batch and a last
    # pass follow the verdicts as they are then.
    for stage, fields in (("queue", queue), ("more fields", rest)):
        fields = {**fields, **{t: f for t, f in since(verdicts).items() if t in fields}}
        client.write_task_fields(project_id, fields,
                                 progress=lambda done, total, stage=stage: progress(stage, done, total))
    if changed := since(verdicts):
        log.info("project %s: %d verdict(s) came in while publishing; their tasks' fields follow them", project_id,
                 len(changed))
        client.write_task_fields(project_id, changed)
    others = [i for i in np.flatnonzero(analysis.task_ids >= 0) if int(analysis.task_ids[i]) not in wanted]
    progress("predictions", 0, 1)
    client.create_predictions(project_id, [prediction(analysis, i, spec) for i in others])
    progress("predictions", 1, 1)
    progress("old predictions", 0, 1)  # Label Studio takes minutes to delete 70,000 (BULK_TIMEOUT)
    left = remove_older_predictions(client, project_id, analysis.model_version)
    progress("old predictions", 1, 1)
    # a removed task deleted since keeps no verdict: its image is gone, and its fields would be asked for again
    forgotten = [t for t in sorted(client.deleted_tasks) if store.forget_verdict(t)]
    if forgotten:
        log.info("project %s: forgot the verdicts of %d task(s) deleted in Label Studio", project_id, len(forgotten))
    if client.refused_writes:
        log.warning("project %s: Label Studio refused the fields of %d task(s) (e.g. task %s); the report lists them",
                    project_id, len(client.refused_writes), next(iter(client.refused_writes)))
    return left


def remove_older_predictions(client: LabelStudioClient, project_id: int, keep_version: str) -> str:
    """Remove our older versions' predictions, the last step of publishing. The new version is
    live by then, so a failure (Label Studio not done deleting 70,000 within BULK_TIMEOUT) does
    not fail the job: returns what went wrong ('' when done); the next Start Training removes them."""
    try:
        client.delete_predictions(project_id, keep_version=keep_version)
        return ""
    except LabelStudioError as exc:
        log.warning("project %s: older versions' predictions not removed (%s); the next Start Training removes "
                    "them", project_id, exc)
        return str(exc)


def fields_since(analysis: Analysis, now: dict[str, dict], seen: dict[str, dict], evidence: Callable[[int], str],
                 crowd: dict | None) -> dict[int, dict]:
    """task id -> the fields it should carry with the verdicts ``now``, for every task whose verdict
    changed since ``seen`` (none when it should carry none)."""
    moved = {int(t) for t in {*now, *seen} if now.get(t) != seen.get(t)}
    fresh = desired_fields(analysis, now, evidence, crowd, tasks=moved) if moved else {}
    return {t: fresh.get(t, {}) for t in moved}


def review_order(stale: dict[int, dict], wanted: dict[int, dict], *, lead: int = REVIEW_LEAD
                 ) -> tuple[dict[int, dict], dict[int, dict], dict[int, dict]]:
    """The field writes ``stale`` needs (task id -> the fields it carries now), each mapped to the
    fields it should carry (``wanted``, none when absent), split into three batches, in order:

    - first: the new review queue's ``lead`` highest-scored tasks, and every task the queue
      tab shows above the lowest of them now (an older version's score). Once these are
      written, the tab's first ``lead`` rows are final, so the tabs appear and review starts;
    - queue: the rest of the queue (tasks entering, staying in or leaving it), top of the tab first,
      so the rows a reviewer reaches are already final;
    - rest: everything else (cells, duplicates, older versions' fields on other tasks).

    Label Studio takes 0.12-0.2 s per task write: at 70,000 images the queue is 1,400-1,700 tasks."""
    def score(fields: dict) -> float:
        if fields.get("dc_candidate") != 1:
            return -np.inf  # not in the queue tab
        try:
            return float(fields["dc_error_score"])
        except (KeyError, TypeError, ValueError):
            return np.inf  # in the tab at a place we cannot tell (a score edited into text): write first
    new_scores = sorted((s for s in map(score, wanted.values()) if s > -np.inf), reverse=True)
    boundary = new_scores[lead - 1] if len(new_scores) > lead else -np.inf
    # where the task sits in the queue tab now, or will: the higher of its current and new score
    place = {task_id: max(score(now), score(wanted.get(task_id, {}))) for task_id, now in stale.items()}
    first: dict[int, dict] = {}
    queue: dict[int, dict] = {}
    rest: dict[int, dict] = {}
    for task_id in sorted(stale, key=lambda t: -place[t]):
        batch = rest if place[task_id] == -np.inf else first if place[task_id] >= boundary else queue
        batch[task_id] = wanted.get(task_id, {})
    return first, queue, rest


def unpublish_project(project_id: int, settings: Settings) -> dict:
    """Take everything the backend wrote out of Label Studio again: our predictions (every
    ``deconfusion`` model version), our task fields, our tabs and the overview project.
    Annotations, the user's task data and other models' predictions stay; the analyses stay on
    disk under MODEL_DIR. Returns what was removed."""
    with LabelStudioClient(settings) as client:
        return _unpublish(client, project_id, ProjectStore(settings.model_dir, project_id))


def _unpublish(client: LabelStudioClient, project_id: int, store: ProjectStore) -> dict:
    client.get_project(project_id)  # a clear error for a wrong id before anything changes
    # Fields first: each field write re-reads its task, and Label Studio answers a read of a task
    # without predictions by asking the connected backend for one, which would come back.
    fields = client.sync_task_fields(project_id, {})
    versions = client.delete_predictions(project_id)
    tabs = client.delete_views(project_id, OUR_TABS)
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
                                            OVERVIEW_CONFIG.read_text(encoding="utf-8"))
        # The paper's reading order, with the cell's HTML only in the labeling view, not as a column.
        client.create_view(overview_id, f"{TAB_PREFIX}: overview", ordering="dc_order",
                           hidden_columns={"explore": ["tasks:data.html"], "labeling": []},
                           numeric_fields=("dc_order", "dc_count"))
        store.update_project_info(overview_project=overview_id)
    queue = f"{settings.label_studio_url.rstrip('/')}/projects/{project_id}/data?tab={tab_ids[REVIEW_QUEUE_TAB]}"

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
