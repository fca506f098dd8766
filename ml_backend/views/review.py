"""The evidence panel shown with each review task (the paper's in-detail view, Sect. 5.3-5.4).

Written into the task's ``dc_evidence`` field and shown by the review config's panel. Label
Studio sanitises that HTML (no ``data:`` URIs, scripts or event handlers), so every picture is an
http(s) URL from ``image_url(kind, params)`` (kinds of :func:`render.render_png`) and every
style is inline. Wording avoids machine-learning terms: "labeled" is the human's class, "the
model says" the computer's.
"""

from __future__ import annotations

import html

import numpy as np

from ..analysis import Analysis
from ..detectors.label_errors import REVIEW_THRESHOLD
from .overview import FONT, INK, ImageUrl
from .render import similarity_text

VAL_BLUE = "#2962ff"
LABEL_ORANGE = "#c35f0c"
MAX_SIMILAR = 8


def _q(name: str) -> str:
    return f"‘{html.escape(name)}’"


def likelihood_words(error_score: float, candidate: bool = False) -> str:
    """The error score (in [0, 1], higher = label more likely wrong) in everyday words. When two
    classes compete the score is about the chance that the label is wrong; every image in the
    review list is at least "possibly wrong"."""
    if error_score >= 0.8:
        return "very likely wrong"
    if error_score >= 0.5:
        return "likely wrong"
    if error_score >= REVIEW_THRESHOLD or candidate:
        return "possibly wrong"
    return "probably right"


def _badge(text: str, colour: str, title: str = "") -> str:
    return (f'<span title="{html.escape(title)}" style="display:inline-block;font-size:12px;color:{colour};'
            f'border:2px solid {colour};border-radius:4px;padding:0 6px;margin:0 6px 4px 0;background:#fff">'
            f'{html.escape(text)}</span>')


def _thumb(url: str, caption: str, *, colour: str = INK, border: str = "#9aa3b2", side: int = 72) -> str:
    return (f'<div style="display:inline-block;width:{side + 8}px;margin:0 4px 4px 0;text-align:center;'
            f'vertical-align:top"><img src="{html.escape(url)}" width="{side}" height="{side}" alt="" '
            f'style="width:{side}px;height:{side}px;image-rendering:pixelated;border:2px solid {border}">'
            f'<div style="font-size:11px;line-height:1.2;color:{colour};overflow-wrap:anywhere">{caption}</div></div>')


def _cell_of(analysis: Analysis, label: int, model: int) -> dict | None:
    return next((c for c in analysis.cells if int(c["label"]) == label and int(c["predicted"]) == model), None)


def evidence_html(analysis: Analysis, i: int, *, image_url: ImageUrl) -> str:
    """HTML evidence for image ``i``: the model's opinion in words, its class probabilities, the
    image's place in its cell's map, duplicate partners and the most similar images.

    Only http(s) images from ``image_url``; no ``data:`` URIs, no scripts, inline styles only.
    """
    i = int(i)
    names = analysis.class_names
    label, model = int(analysis.labels[i]), int(analysis.predicted[i])
    p_model, p_label = float(analysis.pred_probs[i, model]), float(analysis.pred_probs[i, label])
    score = float(analysis.error_score[i])
    if label != model:
        headline = (f"The model thinks this is a <b>{_q(names[model])}</b> ({p_model:.0%}). "
                    f"Labeled: <b>{_q(names[label])}</b> ({p_label:.0%}).")
        suggestion = f"Suggested label: <b>{_q(names[model])}</b>."
    else:
        runner_up = int(np.argsort(-analysis.pred_probs[i])[1]) if len(names) > 1 else model
        headline = f"The model agrees with the label <b>{_q(names[label])}</b> ({p_label:.0%})."
        suggestion = (f"Its second guess is {_q(names[runner_up])} "
                      f"({float(analysis.pred_probs[i, runner_up]):.0%}).") if runner_up != model else ""
    parts = [f'<div style="{FONT};color:{INK};font-size:13px;line-height:1.45">',
             f'<div style="font-size:16px;margin-bottom:2px">{headline}</div>',
             f'<div>The label is <b>{likelihood_words(score, bool(analysis.is_candidate[i]))}</b> '
             f'(score {score:.2f} of 1). {suggestion}</div>']

    badges = []
    if str(analysis.splits[i]) == "val":
        badges.append(_badge("validation image", VAL_BLUE, "kept apart from training to check the model"))
    partners = [p for p in analysis.duplicates if i in (int(p["a"]), int(p["b"]))]
    if partners:
        badges.append(_badge("has a duplicate", "#5a2a82", "a near-identical image is in the data set"))
    if any(p["cross_split"] for p in partners):
        badges.append(_badge("copy in training and validation", "#a40000",
                             "the same picture in both parts makes the model look better than it is"))
    if badges:
        parts.append(f'<div style="margin-top:6px">{"".join(badges)}</div>')

    cell = _cell_of(analysis, label, model) if label != model else None
    if cell is not None and cell["interpretation_error"]:
        parts.append(f'<div style="margin-top:4px;color:#a40000">⚠ Unusually many images labeled {_q(names[label])} '
                     f'look like {_q(names[model])} to the model ({int(cell["count"])}): maybe the two classes are '
                     f'understood differently. If so, relabel the group: its tab lists the images whose labels are '
                     f'likelier wrong than right, to relabel together.</div>')

    parts.append('<div style="font-weight:600;margin-top:10px">How sure the model is, per class</div>'
                 f'<img src="{html.escape(image_url("prob", {"i": int(i)}))}" width="420" alt="class probabilities" '
                 'style="max-width:100%;height:auto">')

    if label != model:
        others = int(((analysis.labels == label) & (analysis.predicted == model)).sum()) - 1
        cell_map = image_url("map", {"label": label, "predicted": model, "highlight": i})
        parts.append(f'<div style="font-weight:600;margin-top:10px">This image (red frame) among the {others} other '
                     f'images labeled {_q(names[label])} that the model calls {_q(names[model])}</div>'
                     '<div style="font-size:12px;color:#4b5563">Similar-looking images sit close together; a lone '
                     'image far from the others is more likely a labeling slip.</div>'
                     f'<img src="{html.escape(cell_map)}" '
                     'width="360" alt="map of the cell" style="max-width:100%;height:auto;border:1px solid #d5dbe6">')

    for pair in partners:
        other = int(pair["b"]) if int(pair["a"]) == i else int(pair["a"])
        kind = "identical copy" if pair["kind"] == "exact" else "near-identical image"
        where = " One is in training, the other in validation." if pair["cross_split"] else ""
        same = ("same label" if analysis.labels[other] == label
                else f"labeled {_q(names[int(analysis.labels[other])])}")
        article = "An" if kind[0] in "aeiou" else "A"
        parts.append(f'<div style="font-weight:600;margin-top:10px">{article} {kind} ({same}, '
                     f'{similarity_text(pair)}).{where}</div>'
                     f'<img src="{html.escape(image_url("pair", {"a": int(i), "b": other}))}" width="292" alt="" '
                     'style="max-width:100%;height:auto">')

    similar = [int(j) for j in analysis.neighbors[i] if j >= 0][:MAX_SIMILAR]
    if similar:
        same_as_model = sum(1 for j in similar if int(analysis.labels[j]) == model)
        summary = (f"{same_as_model} of {len(similar)} are labeled {_q(names[model])}."
                   if label != model else
                   f"{sum(1 for j in similar if int(analysis.labels[j]) == label)} of {len(similar)} share its label.")
        thumbs = "".join(
            _thumb(image_url("thumb", {"i": j, "side": 72}), html.escape(names[int(analysis.labels[j])]),
                   colour=INK if int(analysis.labels[j]) == label else LABEL_ORANGE,
                   border=VAL_BLUE if str(analysis.splits[j]) == "val" else "#9aa3b2")
            for j in similar)
        parts.append(f'<div style="font-weight:600;margin-top:10px">The most similar images and their labels</div>'
                     f'<div style="font-size:12px;color:#4b5563">{summary} Orange = a different label than this '
                     f'image; blue frame = validation image.</div><div style="margin-top:4px">{thumbs}</div>')
    parts.append("</div>")
    return "".join(parts)
