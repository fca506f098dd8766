"""The project manager's progress report: one entry per iteration (workflow.history_entry)
with keys iteration, model_version, created_at, images, candidates, verdicts {kind: count},
estimated_error_rate, model_accuracy, per_class_error_rate, confused_pairs,
duplicates_found, leakage_found, duplicates_resolved."""

from __future__ import annotations

import html
from typing import Callable

from .render import bar_chart_png, line_chart_png

CHARTS = ("candidates", "error_rate", "accuracy", "verdicts", "per_class")


def report_json(history: list[dict]) -> dict:
    return {"iterations": history, "latest": history[-1] if history else None}


def report_chart_png(history: list[dict], name: str) -> bytes:
    if not history or name not in CHARTS:
        raise ValueError(f"no chart {name!r}: charts are {', '.join(CHARTS)} and need at least one analysis")
    latest = history[-1]
    if name == "candidates":
        return line_chart_png({"candidates left": [h["candidates"] for h in history]}, title="Review candidates remaining")
    if name == "error_rate":
        return line_chart_png({"label errors": [100 * h["estimated_error_rate"] for h in history]},
                              title="Estimated label-error rate (%)")
    if name == "accuracy":
        return line_chart_png({"accuracy": [100 * h["model_accuracy"] for h in history]},
                              title="Model accuracy estimate (%)")
    if name == "verdicts":
        kinds = list(latest["verdicts"])
        return line_chart_png({k: [h["verdicts"].get(k, 0) for h in history] for k in kinds},
                              title="Reviewer verdicts so far")
    rates = latest["per_class_error_rate"]
    names = sorted(rates, key=lambda c: -rates[c])
    return bar_chart_png(names, [100 * rates[c] for c in names], title="Flagged labels per class (%)")


def report_html(history: list[dict], *, chart_url: Callable[[str], str]) -> str:
    rows = "".join(
        f"<tr><td>{h['iteration']}</td><td>{html.escape(h['model_version'])}</td><td>{html.escape(h['created_at'])}</td>"
        f"<td>{h['images']}</td><td>{h['candidates']}</td><td>{h['estimated_error_rate']:.2%}</td>"
        f"<td>{h['model_accuracy']:.2%}</td><td>{sum(h['verdicts'].values())}</td>"
        f"<td>{h['duplicates_found']} / {h['leakage_found']} / {h['duplicates_resolved']}</td></tr>" for h in history)
    latest = history[-1]
    pairs = "".join(f"<li>{html.escape(p['label'])} → {html.escape(p['predicted'])}: {p['count']}</li>"
                    for p in latest["confused_pairs"])
    charts = "".join(f'<img src="{html.escape(chart_url(name))}" alt="{name}" style="margin:6px">' for name in CHARTS)
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>De-Confusion report</title></head>'
        '<body style="font-family:sans-serif;margin:16px"><h1 style="font-size:20px">De-Confusion progress</h1>'
        '<table border="1" cellpadding="4" style="border-collapse:collapse;font-size:13px"><tr><th>iteration</th>'
        '<th>model version</th><th>date</th><th>images</th><th>candidates left</th><th>est. label-error rate</th>'
        '<th>model accuracy</th><th>verdicts</th><th>duplicates / leakage / resolved</th></tr>'
        f'{rows}</table><h2 style="font-size:16px">Most confused pairs (latest)</h2><ul>{pairs}</ul>'
        f'<div>{charts}</div></body></html>')
