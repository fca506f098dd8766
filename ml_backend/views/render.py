"""Evidence images and report charts as PNG bytes, drawn with Pillow (no plotting library, no network).

Symbols: N images, K classes. Every function returns the bytes of one PNG.

Kinds for :func:`render_png` (the backend serves them at
``/evidence/<project>/<version>/<kind>.png?<params>``):

- ``thumb``  ``i`` (image index), optional ``side`` (pixels, default 96, at most 512)
- ``prob``   ``i``: the model's probability for every class, label and model class marked
- ``map``    ``label``, ``predicted``, optional ``highlight``: the cell's saliency-map layout
- ``pair``   ``a``, ``b``: two images side by side with their similarity

Text uses DejaVu Sans when the system has it (any script); otherwise Pillow's built-in font,
which only has ASCII, so names are transliterated (``Hündin`` -> ``Hundin``).
"""

from __future__ import annotations

import io
import unicodedata
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..analysis import Analysis

LABEL_COLOUR = (230, 126, 34)   # the human label (orange)
MODEL_COLOUR = (41, 98, 255)    # the model's class (blue)
VAL_BORDER = (41, 98, 255)      # validation images: blue border, as in the paper
HIGHLIGHT = (220, 20, 60)       # the image under review
GREY = (170, 170, 170)
INK = (30, 30, 30)
PALETTE = (MODEL_COLOUR, LABEL_COLOUR, (46, 160, 67), HIGHLIGHT, (120, 60, 200), (0, 150, 160), (120, 120, 120))
MAP_SIDE = 480          # cell map canvas, pixels (square), plus a caption band
MAP_CAPTION = 36
MAX_BARS = 12           # probability chart: at most this many classes (label and model class always)
MAX_THUMB_SIDE = 512
FONT_FILES = ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
              "LiberationSans-Regular.ttf", "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf")


@lru_cache(maxsize=None)
def _font(size: int = 13) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for name in FONT_FILES:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


@lru_cache(maxsize=None)
def _system_font() -> bool:
    """True when a system TrueType font (full Unicode) is in use, not Pillow's ASCII-only one."""
    return isinstance(getattr(_font(13), "path", None), str)


def _t(text: str) -> str:
    """``text`` as the current font can draw it (ASCII only with Pillow's built-in font)."""
    text = str(text)
    if _system_font():
        return text
    text = text.replace("→", "->").replace("·", "-").replace("≥", ">=")
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return ascii_text if ascii_text.strip() or not text.strip() else "?"


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int, font) -> str:
    """``text`` shortened with an ellipsis mark to at most ``width`` pixels."""
    text = _t(text)
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "..", font=font) > width:
        text = text[:-1]
    return text + ".."


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def tile(analysis: Analysis, i: int, side: int) -> Image.Image:
    """Image ``i`` as an RGB square of ``side`` pixels, in its original aspect (white letterbox):
    the working copy squeezed a portrait photo among landscape ones to their shape."""
    pixels = analysis.thumbs[i]
    img = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels[:, :, :3]).convert("RGB")
    h, w = pixels.shape[:2]
    aspect = float(analysis.aspects[i]) if analysis.aspects is not None else w / max(h, 1)  # width / height
    size = (side, max(1, round(side / aspect))) if aspect >= 1 else (max(1, round(side * aspect)), side)
    img = img.resize(size, Image.NEAREST if min(size[0] / w, size[1] / h) >= 2 else Image.BILINEAR)
    if size == (side, side):
        return img
    square = Image.new("RGB", (side, side), "white")
    square.paste(img, ((side - size[0]) // 2, (side - size[1]) // 2))
    return square


def thumbnail_png(analysis: Analysis, i: int, *, side: int = 96) -> bytes:
    """Image ``i`` scaled to ``side`` x ``side`` pixels (nearest neighbour when enlarging)."""
    return _png(tile(analysis, i, int(np.clip(side, 8, MAX_THUMB_SIDE))))


def _swatch(draw: ImageDraw.ImageDraw, x: int, y: int, colour, text: str, size: int = 12) -> int:
    """A coloured square and its text; returns the x after it."""
    draw.rectangle([x, y + 2, x + 10, y + 12], fill=colour)
    draw.text((x + 15, y), _t(text), fill=INK, font=_font(size))
    return x + 15 + int(draw.textlength(_t(text), font=_font(size))) + 16


def probability_bars_png(analysis: Analysis, i: int) -> bytes:
    """How sure the model is of each class for image ``i``: orange = labeled class, blue = model's class.

    Shows the ``MAX_BARS`` most probable classes plus the labeled one, most probable first.
    """
    probs = analysis.pred_probs[i].astype(np.float64)
    label, model = int(analysis.labels[i]), int(analysis.predicted[i])
    shown = sorted(set(np.argsort(-probs)[:MAX_BARS].tolist()) | {label, model}, key=lambda k: (-probs[k], k))
    row, width, name_w, top = 22, 420, 130, 30
    img = Image.new("RGB", (width, top + row * len(shown) + 8), "white")
    draw = ImageDraw.Draw(img)
    x = _swatch(draw, 6, 6, LABEL_COLOUR, "labeled as")
    _swatch(draw, x, 6, MODEL_COLOUR, "model says" if label != model else "model says (same)")
    span = width - name_w - 52
    for r, k in enumerate(shown):
        y = top + r * row
        colour = MODEL_COLOUR if k == model else LABEL_COLOUR if k == label else GREY
        weight = _font(13)
        marked = k in (label, model)
        if marked:
            draw.rectangle([0, y + 2, 3, y + row - 3], fill=colour)
        draw.text((8, y + 3), _fit(draw, analysis.class_names[k], name_w - 14, weight),
                  fill=colour if marked else INK, font=weight)
        draw.rectangle([name_w, y + 2, width - 48, y + row - 3], fill=(243, 243, 243))
        bar = int(round(span * float(probs[k])))
        draw.rectangle([name_w, y + 2, name_w + max(bar, 1), y + row - 3], fill=colour)
        if k == label and k == model:  # one bar for both: orange outline on the blue bar
            draw.rectangle([name_w, y + 2, name_w + max(bar, 1), y + row - 3], outline=LABEL_COLOUR, width=2)
        draw.text((width - 44, y + 3), f"{probs[k]:.0%}", fill=INK, font=weight)
    return _png(img)


def _map_tile_side(count: int) -> int:
    return 44 if count <= 20 else 36 if count <= 60 else 28 if count <= 200 else 20


def cell_map_png(analysis: Analysis, label: int, predicted: int, *, highlight: int | None = None) -> bytes:
    """The in-detail view of one cell (labeled ``label``, model says ``predicted``).

    Members sit at their ``map_xy`` (t-SNE of saliency maps; side by side for small cells),
    the most likely label errors drawn on top. Blue border = validation image; red frame =
    ``highlight``. Image size: ``MAP_SIDE`` x (``MAP_SIDE`` + ``MAP_CAPTION``).
    """
    members = analysis.cell_members(label, predicted)
    img = Image.new("RGB", (MAP_SIDE, MAP_SIDE + MAP_CAPTION), "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, MAP_SIDE - 1, MAP_SIDE - 1], fill=(246, 247, 250), outline=(215, 218, 225))
    side = _map_tile_side(len(members))
    span = MAP_SIDE - side - 12
    xy = analysis.map_xy[members] if len(members) else np.zeros((0, 2))
    missing = ~np.isfinite(xy).all(axis=1)
    if missing.any():  # not embedded: a row along the bottom, in score order
        cols = max(1, span // (side + 4))
        for r, m in enumerate(np.flatnonzero(missing)):
            xy[m] = ((r % cols) * (side + 4) / max(span, 1), 1.0 - (r // cols) * (side + 4) / max(span, 1))
    xy = np.clip(np.nan_to_num(xy, nan=0.5), 0.0, 1.0)
    # members come most likely errors first; draw them last so they stay visible
    order = [m for m in range(len(members))[::-1] if members[m] != highlight]
    order += [m for m in range(len(members)) if members[m] == highlight]
    for m in order:
        i = int(members[m])
        left, top = 6 + int(span * float(xy[m, 0])), 6 + int(span * float(xy[m, 1]))
        img.paste(tile(analysis, i, side), (left, top))
        if i == highlight:
            draw.rectangle([left - 4, top - 4, left + side + 3, top + side + 3], outline=HIGHLIGHT, width=4)
            cx, cy, r = left + side // 2, top + side // 2, int(side * 0.95)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=HIGHLIGHT, width=2)
        elif str(analysis.splits[i]) == "val":
            draw.rectangle([left - 3, top - 3, left + side + 2, top + side + 2], outline=VAL_BORDER, width=3)
        else:
            draw.rectangle([left - 1, top - 1, left + side, top + side], outline=GREY, width=1)
    if not len(members):
        draw.text((MAP_SIDE // 2 - 40, MAP_SIDE // 2), "no images", fill=INK, font=_font(14))
    names = analysis.class_names
    caption = f"labeled {names[label]}, model says {names[predicted]}: {len(members)} images"
    draw.text((6, MAP_SIDE + 3), _fit(draw, caption, MAP_SIDE - 12, _font(13)), fill=INK, font=_font(13))
    x = 6
    if highlight is not None and highlight in set(members.tolist()):
        x = _swatch(draw, x, MAP_SIDE + 19, HIGHLIGHT, "this image", 11)
    x = _swatch(draw, x, MAP_SIDE + 19, VAL_BORDER, "validation image", 11)
    draw.text((x, MAP_SIDE + 19), _fit(draw, "close together = the model saw similar things", MAP_SIDE - x - 4,
                                       _font(11)), fill=(90, 90, 90), font=_font(11))
    return _png(img)


def pair_png(analysis: Analysis, a: int, b: int) -> bytes:
    """Images ``a`` and ``b`` side by side, each with its label and split, and their SSIM if a duplicate pair."""
    side, pad = 128, 12
    width = 2 * side + 3 * pad
    img = Image.new("RGB", (width, side + 78), "white")
    draw = ImageDraw.Draw(img)
    for col, i in enumerate((a, b)):
        left = pad + col * (side + pad)
        img.paste(tile(analysis, i, side), (left, 8))
        val = str(analysis.splits[i]) == "val"
        draw.rectangle([left - 3, 5, left + side + 2, side + 10], outline=VAL_BORDER if val else GREY,
                       width=3 if val else 1)
        text = f"{analysis.class_names[analysis.labels[i]]}"
        draw.text((left, side + 14), _fit(draw, text, side, _font(12)), fill=INK, font=_font(12))
        draw.text((left, side + 29), _t("validation" if val else "training"), fill=VAL_BORDER if val else (90, 90, 90),
                  font=_font(11))
    pair = next((p for p in analysis.duplicates if {int(p["a"]), int(p["b"])} == {int(a), int(b)}), None)
    if pair:
        caption = f"{'identical' if pair['kind'] == 'exact' else 'near'} duplicate, {similarity_text(pair)}"
        if pair.get("cross_split"):
            caption += " - train/val leak"
    else:
        caption = "similar images"
    draw.text((pad, side + 50), _fit(draw, caption, width - 2 * pad, _font(12)), fill=INK, font=_font(12))
    return _png(img)


def _nice_axis(value: float) -> tuple[float, int]:
    """A round axis maximum >= ``value`` and a number of intervals giving round ticks."""
    if value <= 0 or not np.isfinite(value):
        return 1.0, 4
    base = 10 ** np.floor(np.log10(value))
    for top, intervals in ((1, 4), (2, 4), (2.5, 5), (4, 4), (5, 5), (8, 4), (10, 5)):
        if top * base >= value * (1 - 1e-9):
            return float(top * base), intervals
    return float(10 * base), 5


def _number(value: float) -> str:
    return f"{value:.0f}" if abs(value - round(value)) < 1e-9 else f"{value:.3g}"


def line_chart_png(series: dict[str, list[float]], *, title: str, xlabel: str = "iteration",
                   xticks: list[str] | None = None) -> bytes:
    """One line per series over the same x positions 0..n-1 (tick labels ``xticks``, default 1..n).

    y starts at 0; a series with one value shows as a dot. 560 x 320 pixels.
    """
    width, height, left, right, top, bottom = 560, 320, 56, 28, 66, 48
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((left, 10), _fit(draw, title, width - left - right, _font(15)), fill=INK, font=_font(15))
    values = [float(v) for vs in series.values() for v in vs if v is not None and np.isfinite(v)]
    y_top, intervals = _nice_axis(max(values, default=1.0))
    n = max((len(vs) for vs in series.values()), default=0)
    xticks = xticks if xticks is not None else [str(k + 1) for k in range(n)]
    plot_w, plot_h = width - left - right, height - top - bottom

    def x_of(k: int) -> float:
        return left + plot_w * (0.5 if n <= 1 else k / (n - 1))

    def y_of(v: float) -> float:
        return top + plot_h * (1 - v / y_top)

    for frac in np.linspace(0.0, 1.0, intervals + 1):
        y = y_of(y_top * frac)
        draw.line([left, y, width - right, y], fill=(232, 232, 232) if frac else INK)
        label = _number(y_top * frac)
        draw.text((left - 6 - draw.textlength(label, font=_font(11)), y - 7), label, fill=INK, font=_font(11))
    draw.line([left, top, left, top + plot_h], fill=INK)
    step = max(1, int(np.ceil(n / 12)))
    for k in range(0, n, step):
        tick = _t(xticks[k] if k < len(xticks) else str(k + 1))
        draw.text((x_of(k) - draw.textlength(tick, font=_font(11)) / 2, top + plot_h + 5), tick, fill=INK,
                  font=_font(11))
    draw.text((left + plot_w / 2 - draw.textlength(_t(xlabel), font=_font(11)) / 2, height - 18), _t(xlabel),
              fill=(90, 90, 90), font=_font(11))
    legend_x, legend_y = left, 32
    for s, (name, vs) in enumerate(series.items()):
        colour = PALETTE[s % len(PALETTE)]
        points = [(x_of(k), y_of(float(v))) for k, v in enumerate(vs) if v is not None and np.isfinite(v)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=3)
        for x, y in points:
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
        if len(series) > 1:
            needed = 31 + draw.textlength(_t(name), font=_font(11))
            if legend_x + needed > width - right and legend_x > left:
                legend_x, legend_y = left, legend_y + 14
            legend_x = _swatch(draw, legend_x, legend_y, colour, name, 11)
    if n == 0:
        draw.text((left + 20, top + plot_h // 2), "no data yet", fill=INK, font=_font(13))
    return _png(img)


def bar_chart_png(labels: list[str], values: list[float], *, title: str, unit: str = "") -> bytes:
    """Horizontal bars, one per label in the given order, value printed at the bar's end. 560 px wide."""
    row, width, name_w, top = 22, 560, 170, 36
    img = Image.new("RGB", (width, top + row * max(len(labels), 1) + 10), "white")
    draw = ImageDraw.Draw(img)
    draw.text((8, 8), _fit(draw, title, width - 16, _font(15)), fill=INK, font=_font(15))
    finite = [float(v) for v in values if np.isfinite(v)]
    peak = max(finite, default=0.0) or 1.0
    span = width - name_w - 70
    for r, (name, value) in enumerate(zip(labels, values)):
        y = top + r * row
        draw.text((8, y + 3), _fit(draw, str(name), name_w - 16, _font(12)), fill=INK, font=_font(12))
        bar = int(round(span * max(float(value), 0.0) / peak)) if np.isfinite(value) else 0
        draw.rectangle([name_w, y + 3, name_w + max(bar, 1), y + row - 3], fill=MODEL_COLOUR)
        draw.text((name_w + bar + 5, y + 3), f"{_number(float(value))}{unit}", fill=INK, font=_font(12))
    if not labels:
        draw.text((8, top + 2), "no data yet", fill=INK, font=_font(12))
    return _png(img)


def _index(params: dict, key: str, limit: int) -> int:
    try:
        value = int(params[key])
    except KeyError:
        raise ValueError(f"missing parameter {key!r}") from None
    except (TypeError, ValueError):
        raise ValueError(f"parameter {key!r} must be an integer, got {params[key]!r}") from None
    if not 0 <= value < limit:
        raise ValueError(f"parameter {key!r}={value} is out of range [0, {limit})")
    return value


def render_png(analysis: Analysis, kind: str, params: dict) -> bytes:
    """Dispatch an evidence image request; ValueError names an unknown kind or a bad parameter."""
    n, k = len(analysis), len(analysis.class_names)
    if kind == "thumb":
        side = _index(params, "side", MAX_THUMB_SIDE + 1) if "side" in params else 96
        return thumbnail_png(analysis, _index(params, "i", n), side=side)
    if kind == "prob":
        return probability_bars_png(analysis, _index(params, "i", n))
    if kind == "map":
        highlight = _index(params, "highlight", n) if "highlight" in params else None
        return cell_map_png(analysis, _index(params, "label", k), _index(params, "predicted", k), highlight=highlight)
    if kind == "pair":
        return pair_png(analysis, _index(params, "a", n), _index(params, "b", n))
    raise ValueError(f"unknown evidence image kind {kind!r}; expected thumb, prob, map or pair")


def similarity_text(pair: dict) -> str:
    """How alike a duplicate pair is, in the measure that confirmed it."""
    if pair.get("measure") == "aligned_pixels":
        return f"{float(pair['similarity']):.1%} of pixels equal within 12 grey levels (SSIM {float(pair['ssim']):.3f})"
    return f"SSIM {float(pair['ssim']):.3f}"
