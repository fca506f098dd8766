"""The project manager's progress report: how the data set improves from iteration to iteration.

``history`` is a list of dicts, one per analysis (iteration), oldest first, as
``service.analyze.history_entry`` writes them into the project store's ``history.json``:

- ``iteration`` : int, 1, 2, ...
- ``model_version`` : str, the analysis' model version (``deconfusion-v<iteration>-...``)
- ``created_at`` : str, ISO 8601 date and time (UTC) of the analysis
- ``images`` : int, images analysed
- ``candidates`` : int, review candidates not yet reviewed when the analysis finished
- ``verdicts`` : dict {kind: int}, reviewers' verdicts so far (cumulative), kinds
  ``kept``, ``relabeled_to_model``, ``relabeled_other``, ``removed``, ``ambiguous``
  (:data:`VERDICT_KINDS`; unknown kinds are shown too)
- ``estimated_error_rate`` : float in [0, 1], estimated share of wrong labels
- ``model_accuracy`` : float in [0, 1], out-of-sample accuracy estimate of the model
- ``per_class_error_rate`` : dict {class name: float in [0, 1]}, share of the class flagged
- ``confused_pairs`` : list of dicts {``label``, ``predicted`` (class names), ``count``}, most first
- ``duplicates_found`` : int, duplicate pairs found
- ``leakage_found`` : int, of those, pairs with one image in training and one in validation
- ``duplicates_resolved`` : int, duplicate pairs with a member removed by a reviewer
- ``leakage_resolved`` : int, the same for leakage pairs (optional: older entries lack it)

For the latest iteration the service recomputes ``candidates``, ``verdicts`` and the resolved
pairs from the verdicts as they are now (``service.analyze.review_progress``).
- ``reviewed``, ``found_wrong``, ``queue_precision``, ``reranks`` : optional, added by
  :func:`with_review_outcomes`: verdicts given on this iteration's ranking (removals and
  ambiguities, which judge no label, left out), how many of them found the label wrong, their
  ratio (the queue's precision as the reviewers saw it), and the re-ranks made from verdicts
  before the next analysis

Missing optional values show as "–"; charts: :data:`CHARTS`.
"""

from __future__ import annotations

import html
import re
from typing import Callable

from ..vocabulary import Verdict
from .overview import FONT, INK
from .render import bar_chart_png, line_chart_png

VERDICT_KINDS = {v.value: v.description for v in Verdict}
CHARTS = ("candidates", "error_rate", "accuracy", "verdicts", "per_class")
MAX_CLASSES_CHART = 30
LEFT_OUT_ROWS = 50  # unreadable images and refused tasks listed on the page (the JSON has all)


def _kinds(history: list[dict]) -> list[str]:
    seen = [k for h in history for k in h.get("verdicts", {})]
    return list(VERDICT_KINDS) + sorted({k for k in seen if k not in VERDICT_KINDS})


def with_review_outcomes(history: list[dict], verdicts: dict[str, dict], reranks: list[dict]) -> list[dict]:
    """``history`` with, per iteration, what reviewers found on its ranking (see the module doc).
    ``verdicts``: task id -> {verdict, version, ...} as the store keeps them; ``reranks``: the
    store's re-rank log."""
    out = []
    for h in history:
        kinds = [Verdict(v["verdict"]) for v in verdicts.values() if v.get("version") == h.get("model_version")]
        kinds = [kind for kind in kinds if kind.judges_label]  # removals and ambiguities judge no label
        wrong = sum(kind.found_wrong for kind in kinds)
        out.append({**h, "reviewed": len(kinds), "found_wrong": wrong,
                    "queue_precision": round(wrong / len(kinds), 4) if kinds else None,
                    "reranks": [r for r in reranks if r.get("model_version") == h.get("model_version")]})
    return out


def report_json(history: list[dict], annotators: list[dict] | None = None) -> dict:
    """The report as data: every iteration, the latest one, first -> latest changes, and per
    annotator (``service.crowd.annotator_report``) labels made, flagged and found wrong."""
    if not history:
        return {"iterations": [], "latest": None, "changes": None, "verdict_kinds": list(VERDICT_KINDS),
                "charts": list(CHARTS), "annotators": annotators or []}
    first, latest = history[0], history[-1]
    changes = {key: {"first": first.get(key), "latest": latest.get(key)}
               for key in ("candidates", "estimated_error_rate", "model_accuracy", "duplicates_found")}
    changes["verdicts_total"] = sum(latest.get("verdicts", {}).values())
    return {"iterations": history, "latest": latest, "changes": changes, "verdict_kinds": _kinds(history),
            "charts": list(CHARTS), "annotators": annotators or []}


def report_chart_png(history: list[dict], name: str) -> bytes:
    """One chart of the report as PNG; ``name`` in :data:`CHARTS`. ValueError for an unknown name
    or an empty history."""
    if name not in CHARTS:
        raise ValueError(f"no chart {name!r}: charts are {', '.join(CHARTS)}")
    if not history:
        raise ValueError(f"no chart {name!r} yet: the project has no analysis")
    ticks = [str(h.get("iteration", k + 1)) for k, h in enumerate(history)]
    if name == "candidates":
        return line_chart_png({"images to review": [h.get("candidates") for h in history]},
                              title="Images still to review", xticks=ticks)
    if name == "error_rate":
        return line_chart_png({"label errors": [_pct(h.get("estimated_error_rate")) for h in history]},
                              title="Estimated share of wrong labels (%)", xticks=ticks)
    if name == "accuracy":
        return line_chart_png({"accuracy": [_pct(h.get("model_accuracy")) for h in history]},
                              title="Model accuracy estimate (%)", xticks=ticks)
    if name == "verdicts":
        return line_chart_png({VERDICT_KINDS.get(k, k): [h.get("verdicts", {}).get(k, 0) for h in history]
                               for k in _kinds(history)}, title="Reviewer decisions so far", xticks=ticks)
    rates = history[-1].get("per_class_error_rate") or {}
    names = sorted(rates, key=lambda c: (-rates[c], c))[:MAX_CLASSES_CHART]
    return bar_chart_png(names, [100 * float(rates[c]) for c in names], unit="%",
                         title=f"Flagged labels per class, iteration {ticks[-1]} (%)")


def _pct(value) -> float | None:
    return None if value is None else 100 * float(value)


def _fmt_pct(value) -> str:
    return "–" if value is None else f"{float(value):.1%}"


def _fmt(value) -> str:
    return "–" if value is None else html.escape(str(value))


def _headline(history: list[dict]) -> str:
    first, latest = history[0], history[-1]
    parts = [f"Iteration <b>{_fmt(latest.get('iteration'))}</b>, {_fmt(str(latest.get('created_at', ''))[:10])}: "
             f"<b>{_fmt(latest.get('candidates'))}</b> images still to review"]
    if len(history) > 1:
        parts[0] += f" (first analysis: {_fmt(first.get('candidates'))})"
    rate = f"about <b>{_fmt_pct(latest.get('estimated_error_rate'))}</b> of the labels look wrong"
    if len(history) > 1:
        rate += f" (first: {_fmt_pct(first.get('estimated_error_rate'))})"
    parts.append(rate)
    parts.append(f"the model is right about <b>{_fmt_pct(latest.get('model_accuracy'))}</b> of the time")
    decided = sum(latest.get("verdicts", {}).values())
    parts.append(f"reviewers decided on <b>{decided}</b> images")
    left_out = len(latest.get("not_analysed") or []) + len(latest.get("fields_refused") or [])
    if left_out:
        parts.append(f"<b>{left_out}</b> tasks were left out (listed below)")
    return "; ".join(parts) + "."


TABLE = "border-collapse:collapse;font-size:13px;margin:6px 0 16px 0"
CELL = "border:1px solid #d5dbe6;padding:4px 8px;text-align:{}"
NUMERIC = re.compile(r"^[\d.,%/ –-]+$")
HEAD = "border:1px solid #d5dbe6;padding:4px 8px;background:#f3f5f9;text-align:left"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f'<th style="{HEAD}">{h}</th>' for h in header)
    body = "".join("<tr>" + "".join(
        f'<td style="{CELL.format("right" if NUMERIC.match(c) else "left")}">{c}</td>' for c in row) + "</tr>"
        for row in rows)
    return f'<table style="{TABLE}"><tr>{head}</tr>{body}</table>'


def _annotators_table(annotators: list[dict]) -> str:
    if not annotators:
        return ""
    rows = [[html.escape(str(a["name"])), _fmt(a["labels"]), f'{_fmt(a["flagged"])} ({_fmt_pct(a["share_flagged"])})',
             _fmt(a["judged"]), f'{_fmt(a["wrong"])} ({_fmt_pct(a["share_wrong"])})', _fmt(a.get("quality"))]
            for a in annotators]
    return ('<h2 style="font-size:16px;margin:12px 0 2px 0">Annotators</h2>'
            + _table(["annotator", "labels made", "flagged", "reviewed", "found wrong", "CROWDLAB quality"], rows))


def _left_out_table(latest: dict) -> str:
    """The latest analysis' images it could not read, and tasks whose fields Label Studio refused."""
    rows = [["not analysed", _fmt(x.get("item")), _fmt(x.get("reason"))] for x in latest.get("not_analysed") or []]
    rows += [["fields not written", f"task {_fmt(x.get('task'))}", _fmt(x.get("reason"))]
             for x in latest.get("fields_refused") or []]
    if not rows:
        return ""
    more = f"<p>… and {len(rows) - LEFT_OUT_ROWS} more (the report's JSON lists all).</p>" \
        if len(rows) > LEFT_OUT_ROWS else ""
    return (f'<h2 style="font-size:16px;margin:12px 0 2px 0">Left out of iteration {_fmt(latest.get("iteration"))} '
            f'({len(rows)})</h2><p style="font-size:13px;margin:2px 0">An image the analysis could not read is in '
            'none of its lists: fix the image or its URL, then press <i>Start Training</i>. A task whose fields '
            'Label Studio refused is missing from the review tabs.</p>'
            + _table(["what", "task", "why"], rows[:LEFT_OUT_ROWS]) + more)


def report_html(history: list[dict], *, chart_url: Callable[[str], str], annotators: list[dict] | None = None) -> str:
    """The progress page: headline in words, charts (``chart_url(name)`` for each of
    :data:`CHARTS`), a table of every iteration, the latest per-class rates and confused pairs,
    and the annotators' table."""
    page = ('<!doctype html><html lang="en"><head><meta charset="utf-8"><title>De-Confusion progress</title></head>'
            f'<body style="{FONT};color:{INK};margin:16px 20px;max-width:1200px">'
            '<h1 style="font-size:20px;margin:0 0 6px 0">De-Confusion progress</h1>{}</body></html>')
    if not history:
        return page.format('<p>No analysis yet: press <i>Start Training</i> in the project\'s Model settings.</p>')
    kinds = _kinds(history)
    rows = []
    for h in history:
        v = h.get("verdicts", {})
        date = str(h.get("created_at", ""))[:16].replace("T", " ")
        rows.append([_fmt(h.get("iteration")), _fmt(h.get("model_version")), _fmt(date),
                     _fmt(h.get("images")), _fmt(h.get("candidates")), *[_fmt(v.get(k, 0)) for k in kinds],
                     _fmt_pct(h.get("estimated_error_rate")), _fmt_pct(h.get("model_accuracy")),
                     f'{_fmt(h.get("duplicates_found"))} / {_fmt(h.get("duplicates_resolved"))}',
                     f'{_fmt(h.get("leakage_found"))} / {_fmt(h.get("leakage_resolved"))}',
                     f'{_fmt(h.get("found_wrong"))} of {_fmt(h.get("reviewed"))} '
                     f'({_fmt_pct(h.get("queue_precision"))})',
                     _fmt(len(h.get("reranks") or []))])
    header = ["iteration", "model version", "date (UTC)", "images", "to review",
              *[html.escape(VERDICT_KINDS.get(k, k)) for k in kinds], "est. wrong labels", "model accuracy",
              "duplicates found / resolved", "train-val leaks found / resolved",
              "reviewed on this ranking: found wrong (precision)", "re-ranks from verdicts"]
    latest = history[-1]
    rates = latest.get("per_class_error_rate") or {}
    by_rate = sorted(rates, key=lambda c: (-rates[c], c))
    class_rows = [[html.escape(c), _fmt_pct(rates[c])] for c in by_rate]
    pair_rows = [[html.escape(str(p["label"])), html.escape(str(p["predicted"])), _fmt(p["count"])]
                 for p in latest.get("confused_pairs", [])]
    charts = "".join(f'<img src="{html.escape(chart_url(name))}" alt="{name} chart" width="560" '
                     f'style="max-width:100%;height:auto;margin:4px 8px 8px 0;border:1px solid #e1e4ea">'
                     for name in CHARTS)
    body = (f'<p style="font-size:14px;line-height:1.5">{_headline(history)}</p>'
            f'<div>{charts}</div>'
            '<h2 style="font-size:16px;margin:12px 0 2px 0">Every iteration</h2>'
            f'{_table(header, rows)}'
            '<div style="display:flex;flex-wrap:wrap;gap:32px">'
            f'<div><h2 style="font-size:16px;margin:0 0 2px 0">Flagged labels per class (iteration '
            f'{_fmt(latest.get("iteration"))})</h2>{_table(["class", "flagged"], class_rows)}</div>'
            '<div><h2 style="font-size:16px;margin:0 0 2px 0">Most confused pairs</h2>'
            f'{_table(["labeled", "model says", "images"], pair_rows)}</div></div>'
            f'{_left_out_table(latest)}{_annotators_table(annotators or [])}')
    return page.format(body)
