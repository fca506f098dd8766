"""Map an Analysis to what Label Studio shows: predictions, our ``dc_`` task fields and
Data Manager tabs. Pure functions here; writes go through ``ls.client`` in ``workflow``.

Everything written carries the analysis' model version and can be removed again:
predictions by model version, task fields by their ``dc_`` prefix, tabs by title prefix.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .analysis import Analysis
from .ls.schema import ClassSpec

FIELD_PREFIX = "dc_"
VIEW_PREFIX = "De-Confusion"
REVIEW_QUEUE = f"{VIEW_PREFIX}: review queue"
VERDICT_LABELS = {
    "kept": "Keep human label",
    "relabeled_to_model": "Take model label",
    "relabeled_other": "Other label",
    "removed": "Remove (duplicate/unusable)",
    "ambiguous": "Ambiguous",
}
NUMERIC_FIELDS = ("dc_error_score", "dc_candidate", "dc_unreviewed", "dc_duplicate", "dc_duplicate_group",
                  "dc_similarity", "dc_leakage", "dc_excluded", "dc_p_suggested")
DUPLICATE_ORDER = "dc_duplicate_group"  # groups numbered closest copies first (see duplicate_groups)


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
                evidence: str, verdict: dict | None) -> dict:
    """Our ``dc_`` fields for image ``i``; the Data Manager tabs filter and sort on them.
    ``groups``: image index -> (duplicate group number, its highest SSIM with a copy), see
    :func:`duplicate_groups`; 0 and 0.0 for images without a copy."""
    reviewed = verdict["verdict"] if verdict else ""
    group, similarity = groups.get(i, (0, 0.0))
    return {
        "dc_error_score": round(float(analysis.error_score[i]), 6),
        "dc_suggested": analysis.class_names[analysis.predicted[i]],
        "dc_p_suggested": round(float(analysis.pred_probs[i, analysis.predicted[i]]), 6),
        "dc_cell": analysis.cell_name(i),
        "dc_candidate": int(bool(analysis.is_candidate[i]) and not reviewed),
        "dc_unreviewed": int(not reviewed),
        "dc_duplicate": int(group > 0),
        "dc_duplicate_group": group,
        "dc_similarity": round(similarity, 4),
        "dc_leakage": int(i in leakage),
        "dc_reviewed": reviewed,
        "dc_excluded": int(reviewed == "removed"),
        "dc_version": analysis.model_version,
        "dc_evidence": evidence,
    }


def leakage_members(analysis: Analysis) -> set[int]:
    return {idx for pair in analysis.duplicates if pair["cross_split"] for idx in (pair["a"], pair["b"])}


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
    analysis: Analysis, verdicts: dict[str, dict], evidence: Callable[[int], str],
) -> dict[int, dict]:
    """task id -> the ``dc_`` fields it should carry now (flagged tasks and reviewed ones)."""
    leakage, groups = leakage_members(analysis), duplicate_groups(analysis)
    wanted = {}
    for i in range(len(analysis)):
        task_id = int(analysis.task_ids[i])
        verdict = verdicts.get(str(task_id))
        if task_id >= 0 and (is_flagged(analysis, i) or verdict):
            wanted[task_id] = task_fields(analysis, i, leakage=leakage, groups=groups, evidence=evidence(i),
                                           verdict=verdict)
    return wanted


def cell_views(analysis: Analysis, *, max_tabs: int) -> list[dict]:
    """Tabs for the leading cells, in the overview's reading order weighted by count."""
    leading = sorted(analysis.cells, key=lambda c: -c["count"])[:max_tabs]
    return [{
        "title": f"{VIEW_PREFIX}: {analysis.class_names[c['label']]} → {analysis.class_names[c['predicted']]} "
                 f"({c['count']})",
        # Reviewed images leave the cell too (the paper's decluttering), so "select all" in a
        # cell tab never overrides a reviewer's verdict. A number, not "dc_reviewed is empty":
        # Label Studio's "empty" filter guesses the field's type from the first task it finds.
        "filters": [("dc_cell", "equal", "String", analysis.cell_name_of(c["label"], c["predicted"])),
                    ("dc_unreviewed", "equal", "Number", 1)],
        "ordering": "-dc_error_score",
        "cell": (c["label"], c["predicted"]),
    } for c in leading]


def views(analysis: Analysis, *, max_tabs: int) -> list[dict]:
    """Every Data Manager tab an analysis publishes, review queue first."""
    return [
        {"title": REVIEW_QUEUE, "filters": [("dc_candidate", "equal", "Number", 1)], "ordering": "-dc_error_score"},
        *cell_views(analysis, max_tabs=max_tabs),
        {"title": f"{VIEW_PREFIX}: duplicates", "filters": [("dc_duplicate", "equal", "Number", 1)],
         "ordering": DUPLICATE_ORDER},
        {"title": f"{VIEW_PREFIX}: train/val leakage", "filters": [("dc_leakage", "equal", "Number", 1)],
         "ordering": DUPLICATE_ORDER},
        {"title": f"{VIEW_PREFIX}: excluded", "filters": [("dc_excluded", "equal", "Number", 1)],
         "ordering": "-dc_error_score"},
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
