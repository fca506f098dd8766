"""Evidence images as PNG bytes, drawn with Pillow (no plotting library, no network).

Kinds for :func:`render_png` (the backend serves them at
``/evidence/<project>/<version>/<kind>.png?<params>``):

- ``thumb``  ``i`` (image index), optional ``side`` (pixels, default 96)
- ``prob``   ``i``: the model's probability for every class, label and model class marked
- ``map``    ``label``, ``predicted``, optional ``highlight``: the cell's saliency map layout
- ``pair``   ``a``, ``b``: two images side by side with their similarity
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..analysis import Analysis

LABEL_COLOUR = (230, 126, 34)   # the human label
MODEL_COLOUR = (41, 98, 255)    # the model's class
VAL_BORDER = (41, 98, 255)      # validation images: blue border, as in the paper
HIGHLIGHT = (220, 20, 60)
GREY = (160, 160, 160)
MAP_SIDE = 480
MAP_TILE = 32
MAX_BARS = 12


def _font(size: int = 13) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def tile(analysis: Analysis, i: int, side: int) -> Image.Image:
    pixels = analysis.thumbs[i]
    img = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).convert("RGB")
    return img.resize((side, side), Image.NEAREST if max(pixels.shape[:2]) < side else Image.BILINEAR)


def thumbnail_png(analysis: Analysis, i: int, side: int = 96) -> bytes:
    return _png(tile(analysis, i, side))


def probability_bars_png(analysis: Analysis, i: int) -> bytes:
    probs = analysis.pred_probs[i]
    label, model = int(analysis.labels[i]), int(analysis.predicted[i])
    shown = sorted(set(np.argsort(-probs)[:MAX_BARS].tolist()) | {label, model}, key=lambda k: -probs[k])
    row, width, name_w = 22, 380, 120
    img = Image.new("RGB", (width, row * len(shown) + 10), "white")
    draw = ImageDraw.Draw(img)
    for r, k in enumerate(shown):
        y = 5 + r * row
        colour = MODEL_COLOUR if k == model else LABEL_COLOUR if k == label else GREY
        draw.text((4, y + 3), analysis.class_names[k][:16], fill="black", font=_font())
        bar = int((width - name_w - 50) * float(probs[k]))
        draw.rectangle([name_w, y + 3, name_w + max(bar, 1), y + row - 4], fill=colour)
        draw.text((name_w + bar + 4, y + 3), f"{probs[k]:.0%}", fill="black", font=_font())
    return _png(img)


def cell_map_png(analysis: Analysis, label: int, predicted: int, highlight: int | None = None) -> bytes:
    members = analysis.cell_members(label, predicted)
    img = Image.new("RGB", (MAP_SIDE, MAP_SIDE), (248, 248, 248))
    draw = ImageDraw.Draw(img)
    span = MAP_SIDE - MAP_TILE - 8
    ordered = [i for i in members if i != highlight] + ([highlight] if highlight in members else [])
    for i in ordered:
        x, y = analysis.map_xy[i]
        left, top = 4 + int(span * float(x)), 4 + int(span * float(y))
        img.paste(tile(analysis, i, MAP_TILE), (left, top))
        border = HIGHLIGHT if i == highlight else VAL_BORDER if analysis.splits[i] == "val" else None
        if border:
            draw.rectangle([left - 2, top - 2, left + MAP_TILE + 1, top + MAP_TILE + 1], outline=border,
                           width=3 if i == highlight else 2)
    draw.text((6, MAP_SIDE - 18), f"{analysis.cell_name_of(label, predicted)}: {len(members)} images",
              fill="black", font=_font(12))
    return _png(img)


def pair_png(analysis: Analysis, a: int, b: int) -> bytes:
    side = 128
    img = Image.new("RGB", (2 * side + 30, side + 40), "white")
    draw = ImageDraw.Draw(img)
    for col, i in enumerate((a, b)):
        left = 10 + col * (side + 10)
        img.paste(tile(analysis, i, side), (left, 8))
        if analysis.splits[i] == "val":
            draw.rectangle([left - 2, 6, left + side + 1, side + 9], outline=VAL_BORDER, width=3)
    pair = next((p for p in analysis.duplicates if {p["a"], p["b"]} == {a, b}), None)
    caption = f"{pair['kind']} duplicate, SSIM {pair['ssim']:.3f}" if pair else "similar images"
    draw.text((10, side + 16), caption, fill="black", font=_font(12))
    return _png(img)


def line_chart_png(series: dict[str, list[float]], *, title: str, xlabel: str = "iteration") -> bytes:
    width, height, pad = 520, 300, 46
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((pad, 8), title, fill="black", font=_font(15))
    values = [v for vs in series.values() for v in vs]
    top = max(values, default=1.0) or 1.0
    n = max((len(vs) for vs in series.values()), default=1)
    x_of = lambda k: pad + (width - 2 * pad) * (k / max(n - 1, 1))  # noqa: E731
    y_of = lambda v: height - pad - (height - 2 * pad) * (v / top)  # noqa: E731
    draw.line([pad, height - pad, width - pad, height - pad], fill="black")
    draw.line([pad, pad, pad, height - pad], fill="black")
    draw.text((4, pad - 6), f"{top:.3g}", fill="black", font=_font(11))
    draw.text((width // 2 - 20, height - pad + 20), xlabel, fill="black", font=_font(11))
    palette = [MODEL_COLOUR, LABEL_COLOUR, (46, 160, 67), HIGHLIGHT, (120, 60, 200)]
    for s, (name, vs) in enumerate(series.items()):
        colour = palette[s % len(palette)]
        points = [(x_of(k), y_of(v)) for k, v in enumerate(vs)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=3)
        for k, (x, y) in enumerate(points):
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
            draw.text((x - 4, height - pad + 4), str(k + 1), fill="black", font=_font(11))
        draw.text((width - pad - 150, pad + 16 * s), f"■ {name}", fill=colour, font=_font(12))
    return _png(img)


def bar_chart_png(labels: list[str], values: list[float], *, title: str) -> bytes:
    row, width, name_w = 20, 520, 160
    img = Image.new("RGB", (width, 40 + row * max(len(labels), 1)), "white")
    draw = ImageDraw.Draw(img)
    draw.text((8, 8), title, fill="black", font=_font(15))
    top = max(values, default=1.0) or 1.0
    for r, (name, value) in enumerate(zip(labels, values)):
        y = 34 + r * row
        draw.text((8, y + 2), str(name)[:22], fill="black", font=_font(12))
        bar = int((width - name_w - 70) * value / top)
        draw.rectangle([name_w, y + 3, name_w + max(bar, 1), y + row - 3], fill=MODEL_COLOUR)
        draw.text((name_w + bar + 4, y + 2), f"{value:.3g}", fill="black", font=_font(12))
    return _png(img)


def _index(params: dict, key: str, limit: int) -> int:
    try:
        value = int(params[key])
    except KeyError:
        raise ValueError(f"missing parameter {key!r}") from None
    except ValueError:
        raise ValueError(f"parameter {key!r} must be an integer, got {params[key]!r}") from None
    if not 0 <= value < limit:
        raise ValueError(f"parameter {key!r}={value} is out of range [0, {limit})")
    return value


def render_png(analysis: Analysis, kind: str, params: dict) -> bytes:
    """Dispatch an evidence image request; ValueError names an unknown kind or a bad parameter."""
    n, k = len(analysis), len(analysis.class_names)
    if kind == "thumb":
        side = min(int(params.get("side", 96)), 512)
        return thumbnail_png(analysis, _index(params, "i", n), side)
    if kind == "prob":
        return probability_bars_png(analysis, _index(params, "i", n))
    if kind == "map":
        highlight = _index(params, "highlight", n) if "highlight" in params else None
        return cell_map_png(analysis, _index(params, "label", k), _index(params, "predicted", k), highlight)
    if kind == "pair":
        return pair_png(analysis, _index(params, "a", n), _index(params, "b", n))
    raise ValueError(f"unknown evidence image kind {kind!r}; expected thumb, prob, map or pair")
