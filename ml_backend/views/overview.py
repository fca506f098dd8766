"""The paper's overview list (Fig. 4) as HTML: one row per label, most misclassified first;
left the correctly classified cell, then the label -> model cells by count. Blue background
by saturation (eq. 3), red histogram bars of mismatch scores (eq. 4, top = most confident),
⧉ for cells holding duplicates, ⚠ for candidate class interpretation errors.

``image_url(kind, params)`` gives http URLs of evidence images (Label Studio's HyperText drops
``data:`` URIs); without it images are embedded, for the static ``overview.html``.
"""

from __future__ import annotations

import base64
import colorsys
import html
from typing import Callable

from ..analysis import Analysis
from .render import thumbnail_png

ImageUrl = Callable[[str, dict], str]
TabUrl = Callable[[dict], str]
BLUE_HUE = 215 / 360
THUMB = 40


def cell_colour(saturation: float) -> str:
    r, g, b = colorsys.hsv_to_rgb(BLUE_HUE, 0.85 * float(saturation), 1.0)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def histogram_bars(histogram: list[int]) -> list[dict]:
    """One bar per bucket, highest scores first (top of the cell); width in % of the largest."""
    top = max(histogram, default=0) or 1
    return [{"bucket": b, "count": c, "width": round(100 * c / top, 1)} for b, c in reversed(list(enumerate(histogram)))]


def overview_rows(analysis: Analysis) -> list[dict]:
    """Rows in reading order: labels with misclassifications (cells' row order), then the rest."""
    by_label: dict[int, list[dict]] = {}
    for cell in analysis.cells:
        by_label.setdefault(cell["label"], []).append(cell)
    order = sorted(by_label, key=lambda a: by_label[a][0]["row"])
    order += [a for a in range(len(analysis.class_names)) if a not in by_label]
    rows = []
    for a in order:
        members = analysis.labels == a
        rows.append({
            "label": a, "name": analysis.class_names[a], "images": int(members.sum()),
            "correct": int((members & (analysis.predicted == a)).sum()),
            "representative": int(analysis.representatives[a]),
            "cells": [{**c, "colour": cell_colour(c["saturation"]), "bars": histogram_bars(c["histogram"])}
                      for c in by_label.get(a, [])],
        })
    return rows


def _img(analysis: Analysis, i: int, image_url: ImageUrl | None, side: int = THUMB) -> str:
    if i < 0:
        return f'<span style="display:inline-block;width:{side}px;height:{side}px;background:#eee"></span>'
    if image_url is None:
        src = "data:image/png;base64," + base64.b64encode(thumbnail_png(analysis, i, side)).decode()
    else:
        src = image_url("thumb", {"i": i, "side": side})
    return f'<img src="{html.escape(src)}" width="{side}" height="{side}" style="image-rendering:pixelated" alt="">'


def _bars_html(cell: dict) -> str:
    return "".join(
        f'<div title="{bar["count"]} images" style="height:4px;margin:1px 0;width:{bar["width"]}%;'
        f'background:{"#d7191c" if bar["count"] else "transparent"}"></div>' for bar in cell["bars"])


def _cell_html(analysis: Analysis, cell: dict, image_url: ImageUrl | None, tab_url: TabUrl | None) -> str:
    names = analysis.class_names
    a, b = cell["label"], cell["predicted"]
    marks = ("⧉ " if cell["has_duplicates"] else "") + ("⚠ class interpretation? " if cell["interpretation_error"] else "")
    body = (
        f'<div style="display:flex;gap:4px;align-items:center">{_img(analysis, int(analysis.representatives[a]), image_url)}'
        f'→{_img(analysis, int(analysis.representatives[b]), image_url)}'
        f'<div style="width:60px">{_bars_html(cell)}</div></div>'
        f'<div style="font-size:12px">labeled <b>{html.escape(names[a])}</b> · model says <b>{html.escape(names[b])}</b></div>'
        f'<div style="font-size:13px"><b>{cell["count"]}</b> images ({cell["share_of_row"]:.1%}) '
        f'<span style="color:#b00">{marks}</span></div>')
    if tab_url:
        body += f'<div style="font-size:12px"><a href="{html.escape(tab_url(cell))}" target="_blank">open in Data Manager →</a></div>'
    return (f'<div style="background:{cell_colour(cell["saturation"])};border:1px solid #ccd;border-radius:4px;'
            f'padding:6px;min-width:190px">{body}</div>')


def overview_html(analysis: Analysis, *, image_url: ImageUrl | None = None, tab_url: TabUrl | None = None) -> str:
    """The whole overview list as a standalone page."""
    rows = []
    for row in overview_rows(analysis):
        cells = "".join(_cell_html(analysis, c, image_url, tab_url) for c in row["cells"])
        rows.append(
            f'<div style="display:flex;gap:8px;align-items:stretch;border-bottom:2px solid #889;padding:8px 0">'
            f'<div style="width:150px">{_img(analysis, row["representative"], image_url, 48)}'
            f'<div><b>{html.escape(row["name"])}</b></div><div style="font-size:12px">{row["images"]} images</div></div>'
            f'<div style="width:110px;border-right:1px solid #bbc;padding-right:8px;font-size:13px">'
            f'model agrees:<br><b>{row["correct"]}</b></div>{cells}</div>')
    s = analysis.summary
    head = (f'<h1 style="font-size:20px">De-Confusion overview · {html.escape(analysis.model_version)}</h1>'
            f'<p>{s.get("images", len(analysis))} images, {s.get("candidates", int(analysis.is_candidate.sum()))} '
            f'review candidates, estimated label-error rate {s.get("estimated_error_rate", 0):.2%}, '
            f'{s.get("duplicate_pairs", len(analysis.duplicates))} duplicate pairs '
            f'({s.get("leakage_pairs", 0)} across train/val). Read each row left to right: the blue cells hold '
            f'the most confident disagreements; red bars near a cell\'s top are confidently misclassified images.</p>')
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>De-Confusion overview</title></head>'
            f'<body style="font-family:sans-serif;margin:16px">{head}{"".join(rows)}</body></html>')


def cell_task_html(analysis: Analysis, cell: dict, *, image_url: ImageUrl, tab_url: TabUrl) -> str:
    """One overview cell as a Label Studio task (HyperText): the cell, its map and its top images."""
    members = analysis.cell_members(cell["label"], cell["predicted"])[:12]
    strip = "".join(_img(analysis, int(i), image_url, 48) for i in members)
    cell_map = image_url("map", {"label": cell["label"], "predicted": cell["predicted"]})
    return (f'<div style="font-family:sans-serif">'
            f'<div style="font-size:12px;color:#555">row {cell["row"] + 1}, cell {cell["column"] + 1} of the overview</div>'
            f'{_cell_html(analysis, {**cell, "bars": histogram_bars(cell["histogram"])}, image_url, tab_url)}'
            f'<div style="margin-top:6px">most likely errors first:</div><div>{strip}</div>'
            f'<div style="margin-top:6px">saliency map layout (t-SNE; blue border = validation image):</div>'
            f'<img src="{html.escape(cell_map)}" width="360" alt=""></div>')

