"""The evidence panel shown beside each review task (Label Studio HyperText, http images only)."""

from __future__ import annotations

import html

from ..analysis import Analysis
from .overview import ImageUrl


def _thumb(url: str, caption: str = "", side: int = 72) -> str:
    return (f'<figure style="display:inline-block;margin:2px;text-align:center">'
            f'<img src="{html.escape(url)}" width="{side}" height="{side}" style="image-rendering:pixelated" alt="">'
            f'<figcaption style="font-size:11px">{html.escape(caption)}</figcaption></figure>')


def evidence_html(analysis: Analysis, i: int, *, image_url: ImageUrl) -> str:
    names = analysis.class_names
    label, model = int(analysis.labels[i]), int(analysis.predicted[i])
    p_model, p_label = float(analysis.pred_probs[i, model]), float(analysis.pred_probs[i, label])
    if label == model:
        verdict = f"The model agrees with the label <b>{html.escape(names[label])}</b> ({p_label:.0%})."
    else:
        verdict = (f"The model thinks this is <b>{html.escape(names[model])}</b> ({p_model:.0%}). "
                   f"Labeled: <b>{html.escape(names[label])}</b> ({p_label:.0%}).")
    parts = [f'<div style="font-family:sans-serif;font-size:13px"><p style="font-size:15px">{verdict}</p>',
             f'<p>Error score {analysis.error_score[i]:.2f} (0 = label fine, 1 = surely wrong)'
             f'{" · <b style=color:#2962ff>validation image</b>" if analysis.splits[i] == "val" else ""}</p>',
             f'<img src="{html.escape(image_url("prob", {"i": i}))}" alt="class probabilities">']
    if label != model:
        parts.append('<p>Where it sits among the other images of this cell (red frame):</p>'
                     f'<img src="{html.escape(image_url("map", {"label": label, "predicted": model, "highlight": i}))}" '
                     'width="320" alt="">')
    partners = [p for p in analysis.duplicates if i in (p["a"], p["b"])]
    for pair in partners:
        other = pair["b"] if pair["a"] == i else pair["a"]
        leak = " · one copy in training, one in validation" if pair["cross_split"] else ""
        parts.append(f'<p><b>Duplicate</b> ({pair["kind"]}, SSIM {pair["ssim"]:.3f}){leak}:</p>'
                     f'<img src="{html.escape(image_url("pair", {"a": i, "b": other}))}" alt="">')
    similar = [int(j) for j in analysis.neighbors[i] if j >= 0]
    if similar:
        parts.append("<p>Most similar images and their labels:</p><div>" + "".join(
            _thumb(image_url("thumb", {"i": j, "side": 72}), names[analysis.labels[j]]) for j in similar) + "</div>")
    parts.append("</div>")
    return "".join(parts)
