"""Who made the labels of a Label Studio project: each labeling annotation's author
(``completed_by``), a CROWDLAB consensus for tasks two or more people labeled, the tasks where
they disagree (fields and a tab), and per annotator the share flagged and the share reviewers
found wrong (the report). The arithmetic is ``detectors.annotators``; this module maps tasks
and users to its arrays and back to JSON kept next to the analysis (``crowd.json``).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..analysis import Analysis
from ..detectors.annotators import annotator_table, consensus_labels, disagreement_order
from ..vocabulary import Verdict

UNKNOWN_ANNOTATOR = -1
CROWD_FILE = "crowd.json"  # next to the analysis in its version folder


def crowd_summary(analysis: Analysis, annotations: Mapping[int, Sequence[tuple[int | None, str]]]) -> dict:
    """JSON-able annotator data of ``analysis``.

    annotations : task id -> the (annotator id or None, class name) of each labeling annotation
        of the task (one per annotator, reviewers' annotations left out).
    """
    index, names = analysis.index_of_task(), analysis.class_names
    rows = []  # [task, annotator, label, gave the analysed label, flagged]
    columns = []  # each row's annotator in the consensus: unknown authors of one task apart (-1, -2, ...)
    for task, labels in annotations.items():
        i = index.get(int(task))
        if i is None:
            continue
        unknown = UNKNOWN_ANNOTATOR
        for annotator, label in labels:
            if label in names:
                rows.append([int(task), UNKNOWN_ANNOTATOR if annotator is None else int(annotator), label,
                             label == names[analysis.labels[i]], bool(analysis.is_candidate[i])])
                columns.append(rows[-1][1] if annotator is not None else unknown)
                if annotator is None:
                    unknown -= 1
    annotators = sorted({r[1] for r in rows})
    summary = {"annotations": rows, "annotators": annotators, "multi_annotated": 0, "disagreements": {},
               "annotator_quality": {}, "notes": []}
    if not rows:
        return summary
    tasks, consensus_annotators = sorted({r[0] for r in rows}), sorted(set(columns))
    row_of, col_of = {t: n for n, t in enumerate(tasks)}, {a: m for m, a in enumerate(consensus_annotators)}
    matrix = np.full((len(tasks), len(consensus_annotators)), np.nan)
    for (task, _, label, _, _), column in zip(rows, columns):
        matrix[row_of[task], col_of[column]] = names.index(label)
    probs = analysis.pred_probs[[index[t] for t in tasks]]
    consensus = consensus_labels(matrix, probs)
    order = disagreement_order(matrix, consensus.quality, consensus.agreement)
    summary.update(
        multi_annotated=int((consensus.label >= 0).sum()),
        disagreements={str(tasks[n]): {"rank": rank, "consensus": names[consensus.label[n]],
                                       "quality": round(float(consensus.quality[n]), 4),
                                       "agreement": round(float(consensus.agreement[n]), 4)}
                       for rank, n in enumerate(order, 1)},
        annotator_quality={str(a): None if np.isnan(q) else round(float(q), 4)
                           for a, q in zip(consensus_annotators, consensus.annotator_quality) if a in annotators},
        notes=list(consensus.notes))
    return summary


def annotator_report(summary: dict, verdicts: Mapping[str, dict], user_names: Mapping[str, str]) -> list[dict]:
    """Per annotator, for the report: labels made, share flagged, share reviewers found wrong,
    CROWDLAB quality. ``verdicts``: task id -> stored verdict; ``user_names``: id -> name."""
    rows = summary.get("annotations") or []
    if not rows:
        return []
    tasks = sorted({r[0] for r in rows})
    image = {t: n for n, t in enumerate(tasks)}
    flagged = np.zeros(len(tasks), dtype=bool)
    judged = np.full(len(tasks), -1, dtype=np.int8)
    for task, _, _, _, candidate in rows:
        flagged[image[task]] |= candidate
    for task, verdict in verdicts.items():
        if int(task) in image and Verdict(verdict["verdict"]).judges_label:
            judged[image[int(task)]] = int(Verdict(verdict["verdict"]).found_wrong)
    # A verdict judges the label the reviewer saw ("given"), which a later relabel replaced.
    gave_judged = [label == verdicts[str(task)]["given"] if "given" in verdicts.get(str(task), {}) else analysed
                   for task, _, label, analysed, _ in rows]
    table = annotator_table(np.array([r[1] for r in rows]), np.array([image[r[0]] for r in rows]),
                            np.array(gave_judged, dtype=bool), flagged, judged)
    quality = summary.get("annotator_quality") or {}
    for row in table:
        key = str(row["annotator"])
        row["name"] = user_names.get(key) or ("unknown" if row["annotator"] == UNKNOWN_ANNOTATOR else f"user {key}")
        row["quality"] = quality.get(key)
    return table
