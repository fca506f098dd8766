"""The paper's overview list (Bäuerle et al. 2018, Sect. 5.2, Fig. 4) as data and as HTML.

Symbols: K classes. One row per label, labels with the most misclassified images first. Each
row: the label's name and representative image, then the correctly classified cell (its count;
no bars), a faint vertical line, then the label -> model-class cells, most images first. A cell
shows the representative images of both classes, a blue background whose saturation is the
cell's eq. 3 value (one hue, HSV; log scale computed in ``detectors.overview``), red horizontal
bars of the eq. 4 histogram of mismatch scores (vertical axis [1/K, 1], top = the model is most
sure the label is wrong), a duplicate mark for cells holding image pairs with SSIM >= 0.95 and a
"class interpretation?" badge for cells flagged as candidate class interpretation errors.

Images: ``image_url(kind, params)`` returns http(s) URLs of :func:`render.render_png` images
(kinds ``thumb`` {i, side} and ``map`` {label, predicted}). Label Studio's HyperText sanitiser
drops ``data:`` URIs, scripts and event handlers, and ``<style>`` blocks may not survive, so the
Label Studio HTML uses http images and inline styles only. Without ``image_url`` (the static
``overview.html`` the CLI writes) images are embedded as ``data:`` URIs.
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

BLUE_HUE = 215          # degrees; the paper's single hue for cell backgrounds
MAX_SATURATION = 0.8    # HSV saturation of the most important cell (black text stays readable)
BAR_COLOUR = "#d7191c"  # the paper's signal red
BUCKET_WIDTH = 0.1      # eq. 4 bucket width, as in detectors.overview
CELL_THUMB = 34         # px, representative images inside a cell
ROW_THUMB = 48          # px, the label's representative in the row header
MAX_CELLS_PER_ROW = 15  # static page: further cells of a row are summed up in one line
INK = "#1e1e1e"
FONT = "font-family:system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',Arial,sans-serif"


def cell_colour(saturation: float) -> str:
    """Hex background for a cell: HSV(``BLUE_HUE``, saturation * ``MAX_SATURATION``, 1); 0 -> white."""
    s = min(max(float(saturation), 0.0), 1.0) * MAX_SATURATION
    r, g, b = colorsys.hsv_to_rgb(BLUE_HUE / 360, s, 1.0)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def cell_colour_hsl(saturation: float) -> str:
    """The same colour as :func:`cell_colour`, written as CSS ``hsl()`` (HSV with value 1)."""
    s = min(max(float(saturation), 0.0), 1.0) * MAX_SATURATION
    lightness = 1.0 - s / 2
    sat = 0.0 if s == 0 else (1.0 - lightness) / min(lightness, 1.0 - lightness)
    return f"hsl({BLUE_HUE}, {100 * sat:.0f}%, {100 * lightness:.1f}%)"


def histogram_bars(histogram: list[int], num_classes: int) -> list[dict]:
    """Geometry of one cell's red bars (eq. 4), highest scores first (top of the cell).

    One dict per bucket: ``bucket`` (0 = lowest scores), ``count``, score range ``low``..``high``,
    and in % of the bar box: ``top`` and ``height`` (the vertical axis is [1/K, 1], 1 at the top)
    and ``width`` (count / the cell's largest bucket; at least 4 for a non-empty bucket).
    """
    low_end = 1.0 / num_classes
    domain = 1.0 - low_end
    peak = max(histogram, default=0) or 1
    bars = []
    for bucket, count in enumerate(histogram):
        low = low_end + bucket * BUCKET_WIDTH
        high = 1.0 if bucket == len(histogram) - 1 else min(1.0, low + BUCKET_WIDTH)
        bars.append({
            "bucket": bucket, "count": int(count), "low": round(low, 4), "high": round(high, 4),
            "top": round(100 * (1.0 - high) / domain, 2), "height": round(100 * (high - low) / domain, 2),
            "width": round(max(100 * count / peak, 4.0), 1) if count else 0.0,
        })
    return bars[::-1]


def overview_rows(analysis: Analysis) -> list[dict]:
    """The overview list's rows in reading order.

    Labels with misclassified images come first, in the order of ``analysis.cells`` (their
    ``row``), then the others by class index. Each row: ``label`` (index), ``name``, ``images``
    (labeled with it), ``correct`` (the model agrees), ``misclassified``, ``representative``
    (image index, -1 if none) and ``cells``: the row's entries of ``analysis.cells`` in column
    order, each with ``name`` ("a → b"), ``colour`` (hex), ``colour_hsl`` and ``bars``
    (:func:`histogram_bars`).
    """
    k = len(analysis.class_names)
    by_label: dict[int, list[dict]] = {}
    for cell in analysis.cells:
        by_label.setdefault(int(cell["label"]), []).append(cell)
    order = sorted(by_label, key=lambda a: min(c["row"] for c in by_label[a]))
    order += [a for a in range(k) if a not in by_label]
    rows = []
    for a in order:
        members = analysis.labels == a
        cells = sorted(by_label.get(a, []), key=lambda c: c["column"])
        rows.append({
            "label": a, "name": analysis.class_names[a], "images": int(members.sum()),
            "correct": int((members & (analysis.predicted == a)).sum()),
            "misclassified": int(sum(c["count"] for c in cells)),
            "representative": int(analysis.representatives[a]),
            "cells": [{**c, "name": analysis.cell_name_of(c["label"], c["predicted"]),
                       "colour": cell_colour(c["saturation"]), "colour_hsl": cell_colour_hsl(c["saturation"]),
                       "bars": histogram_bars(c["histogram"], k)} for c in cells],
        })
    return rows


# --- HTML pieces (inline styles only: they must survive Label Studio's HyperText) ---------------

class _Images:
    """``<img>`` tags from ``image_url``, or embedded ``data:`` PNGs (each encoded once)."""

    def __init__(self, analysis: Analysis, image_url: ImageUrl | None) -> None:
        self.analysis, self.image_url, self._data = analysis, image_url, {}

    def src(self, i: int, side: int) -> str:
        if self.image_url is not None:
            return self.image_url("thumb", {"i": int(i), "side": int(side)})
        key = (int(i), int(side))
        if key not in self._data:
            png = thumbnail_png(self.analysis, int(i), side=side)
            self._data[key] = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        return self._data[key]

    def img(self, i: int, side: int, title: str = "") -> str:
        if i < 0:
            return (f'<span style="display:inline-block;width:{side}px;height:{side}px;background:#e4e6eb;'
                    f'vertical-align:middle"></span>')
        return (f'<img src="{html.escape(self.src(i, side))}" width="{side}" height="{side}" alt="" '
                f'title="{html.escape(title)}" style="width:{side}px;height:{side}px;image-rendering:pixelated;'
                f'vertical-align:middle;border:1px solid #9aa3b2;background:#fff">')


def _duplicate_mark() -> str:
    """Two overlapping squares drawn with CSS (the paper's duplicate symbol; no font glyph needed)."""
    square = "position:absolute;width:8px;height:8px;border:1.5px solid {c};background:{bg}"
    return ('<span title="holds copies or near copies of one picture (the duplicates tab gives each pair\'s '
            'similarity and measure)" style="display:inline-flex;align-items:center;'
            'gap:3px;font-size:11px;color:#5a2a82;background:#fff;border:1px solid #b99bd6;border-radius:8px;'
            'padding:0 6px 0 4px;margin:2px 3px 0 0;white-space:nowrap">'
            '<span style="position:relative;display:inline-block;width:13px;height:13px">'
            f'<span style="{square.format(c="#5a2a82", bg="#fff")};left:0;top:0"></span>'
            f'<span style="{square.format(c="#5a2a82", bg="#e9dcf5")};left:4px;top:4px"></span>'
            '</span>duplicates</span>')


def _interpretation_badge() -> str:
    return ('<span title="unusually many images of this label look like the other class to the model: '
            'maybe the two classes are understood differently" style="display:inline-block;font-size:11px;'
            'color:#a40000;background:#fff;border:1px solid #e7a1a1;border-radius:8px;padding:0 6px;'
            'margin:2px 3px 0 0;white-space:nowrap">⚠ class interpretation?</span>')


def _bars_box(cell: dict, *, width: int, height: int) -> str:
    """The eq. 4 histogram: a framed box, 1 at the top, 1/K at the bottom, one red bar per bucket."""
    bars = "".join(
        f'<div title="{b["count"]} image{"s" if b["count"] != 1 else ""} scored {b["low"]:.2f}-{b["high"]:.2f}" '
        f'style="position:absolute;left:0;top:{b["top"]}%;height:{b["height"]}%;width:100%">'
        f'<div style="height:calc(100% - 1px);width:{b["width"]}%;background:{BAR_COLOUR}"></div></div>'
        for b in cell["bars"] if b["count"])
    return (f'<div title="red bars: how sure the model is that the label is wrong (top = very sure)" '
            f'style="position:relative;flex:0 0 {width}px;width:{width}px;height:{height}px;'
            f'background:rgba(255,255,255,0.6);border-left:1px solid #6b7280;border-bottom:1px solid #6b7280">'
            f'{bars}</div>')


def _cell_box(analysis: Analysis, cell: dict, images: _Images, tab_url: TabUrl | None, *, big: bool = False) -> str:
    names = analysis.class_names
    a, b = int(cell["label"]), int(cell["predicted"])
    thumb = 2 * CELL_THUMB if big else CELL_THUMB
    pictures = (f'{images.img(int(analysis.representatives[a]), thumb, f"a typical {names[a]}")}'
                f'<span style="margin:0 3px;color:#374151">→</span>'
                f'{images.img(int(analysis.representatives[b]), thumb, f"a typical {names[b]}")}')
    badges = (_interpretation_badge() if cell["interpretation_error"] else "") + (
        _duplicate_mark() if cell["has_duplicates"] else "")
    link = ""
    if tab_url is not None:
        link = (f'<div style="font-size:12px;margin-top:2px"><a href="{html.escape(tab_url(cell))}" target="_blank" '
                f'rel="noopener" style="color:#0b3d91">review these images →</a></div>')
    share = float(cell["share_of_row"])
    text = (f'<div style="font-size:12px;line-height:1.3;margin-top:3px">labeled <b>{html.escape(names[a])}</b> · '
            f'model says <b>{html.escape(names[b])}</b></div>'
            f'<div style="font-size:12px;line-height:1.3"><b style="font-size:14px">{int(cell["count"])}</b> '
            f'image{"s" if cell["count"] != 1 else ""} · {share:.1%}</div>')
    width = 300 if big else 178
    bar_w, bar_h = (70, 2 * CELL_THUMB + 40) if big else (30, CELL_THUMB + 34)
    tip = f"{analysis.cell_name_of(a, b)}: {int(cell['count'])} images, {share:.1%} of {names[a]}"
    return (f'<div title="{html.escape(tip)}" style="box-sizing:border-box;width:{width}px;'
            f'min-height:{bar_h + 14}px;padding:6px;border:1px solid #b6bfcc;border-radius:4px;'
            f'background:{cell_colour(cell["saturation"])};color:{INK}">'
            f'<div style="display:flex;gap:6px;align-items:flex-start">'
            f'<div style="flex:1 1 auto;min-width:0"><div style="white-space:nowrap">{pictures}</div>{text}</div>'
            f'{_bars_box(cell, width=bar_w, height=bar_h)}</div>'
            f'<div>{badges}</div>{link}</div>')


def _with_bars(analysis: Analysis, cell: dict) -> dict:
    return cell if "bars" in cell else {**cell, "bars": histogram_bars(cell["histogram"], len(analysis.class_names))}


def _legend() -> str:
    sample = ("display:inline-block;width:22px;height:12px;vertical-align:middle;border:1px solid #b6bfcc;"
              "margin-right:4px")
    return (
        '<div style="font-size:13px;line-height:1.6;background:#f7f8fa;border:1px solid #e1e4ea;border-radius:4px;'
        'padding:8px 12px;margin:8px 0 14px 0">'
        '<b>How to read it.</b> One row per label, the labels with the most disagreements on top; read each row from '
        'left to right. <i>Model agrees</i> counts the images where the model picks the label. Each further cell '
        'holds the images of that label for which the model picks another class, the largest first.<br>'
        f'<span style="{sample};background:{cell_colour(1)}"></span>'
        f'<span style="{sample};background:{cell_colour(0.5)}"></span>'
        f'<span style="{sample};background:{cell_colour(0)}"></span> the stronger the blue, the more (and the '
        'more confident) disagreements: candidates for a whole class labeled wrongly.<br>'
        f'<span style="display:inline-block;width:22px;height:5px;background:{BAR_COLOUR};vertical-align:middle;'
        'margin-right:4px"></span> images by how sure the model is: bars near the top of a cell = the model is very '
        'sure it is the other class (likely a wrong label); near the bottom = the model is unsure.<br>'
        f'{_interpretation_badge()} unusually many images of one label look like another class. '
        f'{_duplicate_mark()} the cell holds near-identical images.</div>')


def _row_html(analysis: Analysis, row: dict, images: _Images, tab_url: TabUrl | None, max_cells: int | None) -> str:
    name = html.escape(row["name"])
    picture = images.img(row["representative"], ROW_THUMB, "a typical " + row["name"])
    header = (f'<div style="flex:0 0 120px;width:120px">{picture}'
              f'<div style="font-size:15px;font-weight:600;margin-top:3px;overflow-wrap:anywhere">{name}</div>'
              f'<div style="font-size:12px;color:#4b5563">{row["images"]} images</div></div>')
    agree = row["correct"] / row["images"] if row["images"] else 0.0
    correct = (f'<div title="images labeled {name} that the model also calls {name}" style="flex:0 0 80px;width:80px;'
               f'padding:4px 8px 4px 0;margin-right:8px;border-right:3px solid #d5dbe6;font-size:12px;color:#374151">'
               f'model agrees<div style="font-size:18px;font-weight:600;color:{INK}">{row["correct"]}</div>'
               f'{agree:.1%}</div>')
    cells = row["cells"] if max_cells is None else row["cells"][:max_cells]
    body = "".join(_cell_box(analysis, c, images, tab_url) for c in cells)
    rest = row["cells"][len(cells):]
    if rest:
        body += (f'<div style="align-self:center;font-size:12px;color:#374151;padding:6px">+ {len(rest)} more cells '
                 f'with {sum(c["count"] for c in rest)} images</div>')
    if not row["cells"]:
        body = '<div style="align-self:center;font-size:12px;color:#4b5563">no disagreements</div>'
    return (f'<div style="display:flex;align-items:flex-start;gap:0;padding:10px 0;border-bottom:2px solid #8a94a6">'
            f'{header}{correct}<div style="display:flex;flex-wrap:wrap;gap:6px;flex:1 1 auto">{body}</div></div>')


def overview_html(analysis: Analysis, *, image_url: ImageUrl | None = None, tab_url: TabUrl | None = None) -> str:
    """The whole overview list as a standalone HTML page (no JavaScript, inline styles only).

    ``image_url`` None embeds every image as a ``data:`` URI (a file to open without a server);
    ``tab_url(cell)`` adds a link from each cell to its review tab.
    """
    images = _Images(analysis, image_url)
    rows = "".join(_row_html(analysis, row, images, tab_url, MAX_CELLS_PER_ROW) for row in overview_rows(analysis))
    s = analysis.summary
    n_images = s.get("images", len(analysis))
    candidates = s.get("candidates", int(analysis.is_candidate.sum()))
    rate = s.get("estimated_error_rate")
    dup, leak = s.get("duplicate_pairs", len(analysis.duplicates)), s.get("leakage_pairs")
    facts = [f"{n_images} images", f"{candidates} to review"]
    if rate is not None:
        facts.append(f"about {float(rate):.1%} of labels look wrong")
    facts.append(f"{dup} duplicate pairs" + (f" ({leak} across training and validation)" if leak else ""))
    head = (f'<h1 style="font-size:20px;margin:0 0 4px 0">De-Confusion overview</h1>'
            f'<div style="font-size:13px;color:#4b5563">{html.escape(analysis.model_version)} · '
            f'{html.escape(" · ".join(facts))}</div>{_legend()}')
    return ('<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>De-Confusion overview · {html.escape(analysis.model_version)}</title></head>'
            f'<body style="{FONT};color:{INK};margin:16px 20px">{head}<div style="border-top:2px solid #8a94a6">'
            f'{rows}</div></body></html>')


def cell_task_html(analysis: Analysis, cell: dict, *, image_url: ImageUrl, tab_url: TabUrl | None = None) -> str:
    """One overview cell as a Label Studio task (HyperText ``$html``): the cell as in the list,
    what it means in plain words, its most likely label errors and its in-detail map.

    http images from ``image_url`` only, no ``data:`` URIs, no scripts, inline styles only.
    """
    names = analysis.class_names
    a, b = int(cell["label"]), int(cell["predicted"])
    images = _Images(analysis, image_url)
    cell = _with_bars(analysis, cell)
    members = analysis.cell_members(a, b)
    labeled = int((analysis.labels == a).sum())
    agree = int(((analysis.labels == a) & (analysis.predicted == a)).sum())
    strip = "".join(
        f'<span style="display:inline-block;margin:0 4px 4px 0">'
        f'{images.img(int(i), 56, f"how likely the label is wrong: {float(analysis.error_score[i]):.2f}")}</span>'
        for i in members[:16])
    explain = (f'The model looked at the <b>{labeled}</b> images labeled <b>{html.escape(names[a])}</b>. It agrees on '
               f'<b>{agree}</b>; for these <b>{int(cell["count"])}</b> it says <b>{html.escape(names[b])}</b>.')
    together = int(cell.get("together", 0))
    if cell["interpretation_error"]:
        explain += (f' That is far more than its usual mix-ups: maybe <b>{html.escape(names[a])}</b> and '
                    f'<b>{html.escape(names[b])}</b> are understood differently by different people.')
    if together:
        explain += (f' For <b>{together}</b> of them a wrong label is likelier than a right one: check a few, '
                    'then relabel those together; the others come one by one in the review queue.')
    if cell["has_duplicates"]:
        explain += " Some of these images are near-identical copies of each other."
    cell_map = image_url("map", {"label": a, "predicted": b})
    link = ""
    action = f"Relabel these {together} together" if together else f"Review these {int(cell['count'])} images"
    if tab_url is not None:
        link = (f'<p style="margin:8px 0"><a href="{html.escape(tab_url(cell))}" target="_blank" rel="noopener" '
                f'style="font-weight:600;color:#0b3d91">{action} →</a></p>')
    return (f'<div style="{FONT};color:{INK};font-size:13px;line-height:1.45">'
            f'<div style="font-size:12px;color:#4b5563">overview row {int(cell["row"]) + 1}, cell '
            f'{int(cell["column"]) + 1}</div>'
            f'{_cell_box(analysis, cell, images, None, big=True)}'
            f'<p style="margin:8px 0">{explain}</p>{link}'
            f'<div style="font-weight:600;margin-top:6px">Most likely label errors first</div>'
            f'<div style="margin-top:4px">{strip}</div>'
            f'<div style="font-weight:600;margin-top:8px">All {len(members)} images, similar ones close together '
            f'(blue frame = validation image)</div>'
            f'<img src="{html.escape(cell_map)}" width="480" alt="map of the cell\'s images" '
            f'style="max-width:100%;height:auto;border:1px solid #d5dbe6;margin-top:4px"></div>')


def all_clear_task_html(analysis: Analysis) -> str:
    """The overview's only task when the model agrees with every label: say so, rather than
    leave an empty project that looks broken."""
    return (f'<div style="{FONT};color:{INK};font-size:14px;line-height:1.45">'
            f'<p>The model agrees with all <b>{len(analysis.labels)}</b> labels of this analysis '
            f'({html.escape(analysis.model_version)}): no label → model cells to review.</p>'
            '<p>Duplicates, if any, are still in the original project\'s <i>De-Confusion: duplicates</i> tab.</p>'
            '</div>')
