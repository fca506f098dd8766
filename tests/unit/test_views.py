"""Views on a small synthetic analysis: 30 images, K=3, two off-diagonal cells, one duplicate pair."""

import colorsys
import io
import re
import xml.etree.ElementTree as ET
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml_backend.analysis import Analysis
from ml_backend.detectors.overview import mismatch_score, overview_cells, representatives
from ml_backend.errors import LabelConfigError
from ml_backend.views import render
from ml_backend.views.configs import panel, remove_review_config, review_config
from ml_backend.vocabulary import Verdict
from ml_backend.views.overview import (
    BAR_COLOUR, cell_colour, cell_colour_hsl, cell_task_html, histogram_bars, overview_html, overview_rows,
)
from ml_backend.views.render import (
    MAP_CAPTION, MAP_SIDE, bar_chart_png, cell_map_png, line_chart_png, pair_png, probability_bars_png, render_png,
    thumbnail_png,
)
from ml_backend.views.report import CHARTS, report_chart_png, report_html, report_json
from ml_backend.views.review import evidence_html, likelihood_words

CONFIGS = Path(__file__).resolve().parents[2] / "label_studio_config"
BACKEND = "http://backend:9090/evidence/1/v1/"


@pytest.fixture(scope="module")
def analysis() -> Analysis:
    """ant (0): 6 images the model calls bee (cell 0 -> 1, holding the duplicate pair 0/1);
    bee (1): 2 images the model calls cat (cell 1 -> 2); cat (2): all agree. Images 25-29 are validation."""
    rng = np.random.default_rng(0)
    n, k = 30, 3
    labels = np.repeat(np.arange(k), 10)
    truth = labels.copy()
    truth[:6], truth[10:12] = 1, 2
    probs = np.full((n, k), 0.05)
    probs[np.arange(n), truth] = rng.uniform(0.5, 0.95, n)
    probs /= probs.sum(axis=1, keepdims=True)
    for i, p_model in zip(range(6), (0.45, 0.5, 0.6, 0.7, 0.85, 0.95)):  # mismatch scores over several buckets
        probs[i] = [0.7 * (1 - p_model), p_model, 0.3 * (1 - p_model)]
    probs = probs.astype(np.float32)
    group = np.full(n, -1)
    group[[0, 1]] = 0
    mismatch = mismatch_score(probs, labels)
    cells = overview_cells(probs, labels, mismatch=mismatch, duplicate_group=group)
    predicted = probs.argmax(axis=1)
    map_xy = np.full((n, 2), np.nan, np.float32)
    off = predicted != labels
    map_xy[off] = rng.random((off.sum(), 2))
    return Analysis(
        model_version="deconfusion-v1-test", items=[f"i{i}" for i in range(n)], class_names=["ant", "bee", "cat"],
        task_ids=np.arange(100, 100 + n), splits=np.array(["train"] * 25 + ["val"] * 5), labels=labels,
        pred_probs=probs, predicted=predicted, mismatch=mismatch, error_score=rng.random(n).astype(np.float32),
        is_candidate=off, knn_disagreement=np.zeros(n, np.float32), consensus=np.zeros(n, np.float32),
        duplicate_group=group, neighbors=np.stack([(np.arange(n) + 1) % n, (np.arange(n) + 26) % n], 1),
        map_xy=map_xy, representatives=representatives(probs, labels),
        thumbs=rng.integers(0, 255, (n, 12, 10, 3), dtype=np.uint8), cells=cells,
        duplicates=[{"a": 0, "b": 1, "kind": "near", "ssim": 0.97, "cross_split": False}],
        summary={"images": n, "candidates": int(off.sum()), "estimated_error_rate": 0.2, "duplicate_pairs": 1,
                 "leakage_pairs": 0}, params={})


def urls(kind, params):
    return BACKEND + kind + ".png?" + "&".join(f"{k}={v}" for k, v in params.items())


def png_size(data: bytes) -> tuple[int, int]:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img.size


class _Balance(HTMLParser):
    VOID = {"img", "br", "meta", "hr", "input", "link"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors = [], []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


def assert_balanced(page: str) -> None:
    checker = _Balance()
    checker.feed(page)
    assert not checker.errors and not checker.stack, (checker.errors, checker.stack)


def hsv_saturation(hex_colour: str) -> float:
    r, g, b = (int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5))
    return colorsys.rgb_to_hsv(r, g, b)[1]


def test_fixture_has_two_cells_and_one_duplicate_cell(analysis):
    assert [(c["label"], c["predicted"], c["count"]) for c in analysis.cells] == [(0, 1, 6), (1, 2, 2)]
    assert [c["has_duplicates"] for c in analysis.cells] == [True, False]


# --- render -------------------------------------------------------------------------------------

def test_a_photo_squeezed_into_the_working_shape_is_shown_in_its_own_aspect(analysis):
    analysis.thumbs[3] = 0  # a black photo
    analysis.aspects = np.ones(len(analysis), np.float32)
    analysis.aspects[3] = 0.5  # portrait, twice as tall as wide, among square ones
    pixels = np.asarray(Image.open(io.BytesIO(thumbnail_png(analysis, 3, side=64))).convert("L"))
    dark = pixels < 128
    assert dark.any(axis=0).sum() == 32 and dark.any(axis=1).sum() == 64  # tall, white beside it


def test_pngs_decode_with_the_expected_sizes(analysis):
    assert png_size(thumbnail_png(analysis, 3, side=64)) == (64, 64)  # 12x10 thumbs are letterboxed
    assert png_size(probability_bars_png(analysis, 0)) == (420, 30 + 22 * 3 + 8)
    assert png_size(cell_map_png(analysis, 0, 1, highlight=2)) == (MAP_SIDE, MAP_SIDE + MAP_CAPTION)
    assert png_size(cell_map_png(analysis, 2, 0)) == (MAP_SIDE, MAP_SIDE + MAP_CAPTION)  # empty cell
    assert png_size(pair_png(analysis, 0, 1)) == (292, 206)
    assert png_size(line_chart_png({"a": [3, 2, 1], "b": [0, 1, None]}, title="t")) == (560, 320)
    assert png_size(line_chart_png({}, title="empty")) == (560, 320)
    assert png_size(bar_chart_png(["x", "y"], [1.0, 0.0], title="t")) == (560, 36 + 2 * 22 + 10)


def test_highlighted_image_is_framed_in_red(analysis):
    plain = np.asarray(Image.open(io.BytesIO(cell_map_png(analysis, 0, 1))))
    marked = np.asarray(Image.open(io.BytesIO(cell_map_png(analysis, 0, 1, highlight=2))))
    red = lambda a: ((a[..., 0] > 200) & (a[..., 1] < 60) & (a[..., 2] < 90))[:MAP_SIDE].sum()  # noqa: E731
    assert red(marked) > red(plain) + 100


def test_without_system_fonts_text_falls_back_to_ascii(analysis, monkeypatch):
    monkeypatch.setattr(render, "FONT_FILES", ("/nonexistent/font.ttf",))
    render._font.cache_clear()
    render._system_font.cache_clear()
    try:
        assert render._t("Hündin → x") == "Hundin -> x" and render._t("猫") == "?"
        assert png_size(probability_bars_png(analysis, 0))[0] == 420
    finally:
        render._font.cache_clear()
        render._system_font.cache_clear()


def test_render_png_dispatches_and_names_bad_requests(analysis):
    assert png_size(render_png(analysis, "thumb", {"i": "3", "side": "40"})) == (40, 40)
    assert png_size(render_png(analysis, "map", {"label": "0", "predicted": "1", "highlight": "2"}))[0] == MAP_SIDE
    assert png_size(render_png(analysis, "pair", {"a": "0", "b": "1"}))[0] == 292
    with pytest.raises(ValueError, match="unknown evidence image kind 'nope'"):
        render_png(analysis, "nope", {})
    with pytest.raises(ValueError, match="out of range"):
        render_png(analysis, "thumb", {"i": "999"})
    with pytest.raises(ValueError, match="must be an integer"):
        render_png(analysis, "prob", {"i": "x"})


# --- overview -----------------------------------------------------------------------------------

def test_overview_rows_follow_the_cells_reading_order(analysis):
    rows = overview_rows(analysis)
    assert [r["name"] for r in rows] == ["ant", "bee", "cat"]
    flat = [(c["label"], c["predicted"]) for r in rows for c in r["cells"]]
    assert flat == [(c["label"], c["predicted"]) for c in sorted(analysis.cells, key=lambda c: (c["row"], c["column"]))]
    assert [(r["correct"], r["misclassified"], r["images"]) for r in rows] == [(4, 6, 10), (8, 2, 10), (10, 0, 10)]
    assert rows[2]["cells"] == [] and rows[0]["representative"] == analysis.representatives[0]


def test_saturation_maps_to_the_blue_colour(analysis):
    cells = [c for r in overview_rows(analysis) for c in r["cells"]]
    top = max(cells, key=lambda c: c["saturation"])
    assert top["saturation"] == 1.0
    assert hsv_saturation(top["colour"]) == max(hsv_saturation(c["colour"]) for c in cells)
    assert cell_colour(0.0) == "#ffffff"
    levels = [hsv_saturation(cell_colour(s)) for s in np.linspace(0, 1, 11)]
    assert levels == sorted(levels)
    for s in (0.0, 0.3, 1.0):  # hex and hsl() are the same colour, one hue
        h, lightness, sat = re.match(r"hsl\((\d+), ([\d.]+)%, ([\d.]+)%\)", cell_colour_hsl(s)).groups()
        rgb = colorsys.hls_to_rgb(int(h) / 360, float(sat) / 100, float(lightness) / 100)
        assert "#" + "".join(f"{round(v * 255):02x}" for v in rgb) == cell_colour(s)


def test_histogram_bars_span_one_over_k_to_one_top_first():
    bars = histogram_bars([0, 2, 0, 4, 0, 0, 1], 3)  # K=3: buckets of 0.1 from 1/3, the last one shorter
    assert [b["bucket"] for b in bars] == [6, 5, 4, 3, 2, 1, 0]
    assert bars[0]["top"] == 0 and bars[0]["high"] == 1.0
    assert bars[-1]["top"] + bars[-1]["height"] == pytest.approx(100, abs=0.05)
    assert sum(b["height"] for b in bars) == pytest.approx(100, abs=0.05)
    assert [b["width"] for b in bars if b["count"]] == [25.0, 100.0, 50.0]


def test_static_overview_embeds_images_and_links_nothing_external(analysis):
    page = overview_html(analysis)
    assert_balanced(page)
    assert "data:image/png;base64," in page
    assert not re.search(r'(?:src|href)="(?!data:)', page) and "http" not in page and "<script" not in page


def test_red_bars_only_in_off_diagonal_cells(analysis):
    page = overview_html(analysis)
    bar = f"background:{BAR_COLOUR}\"></div></div>"
    expected = sum(1 for c in analysis.cells for count in c["histogram"] if count)
    assert page.count(bar) == expected > len(analysis.cells)  # the fixture spreads scores over buckets
    agrees = re.findall(r'<div title="images labeled [^"]*that the model also calls[^"]*".*?</div></div>', page)
    assert len(agrees) == 3 and not any(BAR_COLOUR in a for a in agrees)


def test_duplicate_and_interpretation_marks_only_where_flagged(analysis):
    page = overview_html(analysis)
    legend = 1
    mark = 'title="holds copies or near copies'
    assert page.count(mark) - legend == sum(c["has_duplicates"] for c in analysis.cells)
    assert page.count("class interpretation?") - legend == sum(c["interpretation_error"] for c in analysis.cells)
    with_dup, without = (cell_task_html(analysis, c, image_url=urls) for c in analysis.cells)
    assert mark in with_dup and mark not in without
    flagged = {**analysis.cells[1], "interpretation_error": True}
    assert "class interpretation?" in cell_task_html(analysis, flagged, image_url=urls)
    page = cell_task_html(analysis, {**flagged, "together": 3}, image_url=urls, tab_url=lambda c: "http://ls/tab")
    assert "Relabel these 3 together →" in page and "For <b>3</b> of them a wrong label is likelier" in page
    assert "Review these" in cell_task_html(analysis, flagged, image_url=urls, tab_url=lambda c: "http://ls/tab")


def test_overview_with_urls_and_tab_links(analysis):
    page = overview_html(analysis, image_url=urls, tab_url=lambda c: f"http://ls/projects/1/data?tab={c['column']}")
    assert "data:" not in page and page.count("http://ls/projects/1/data?tab=") == 2
    assert all(src.startswith(BACKEND) for src in re.findall(r'src="([^"]+)"', page))


def test_label_studio_html_uses_backend_urls_only(analysis):
    cell = analysis.cells[0]
    task_html = cell_task_html(analysis, cell, image_url=urls, tab_url=lambda c: "http://ls/projects/1/data?tab=7")
    evidence = evidence_html(analysis, 0, image_url=urls)
    for page in (task_html, evidence, evidence_html(analysis, 27, image_url=urls)):
        assert_balanced(page)
        assert "data:" not in page and "<script" not in page and "<style" not in page
        assert not re.search(r"\son\w+=", page)  # no event handlers
        sources = re.findall(r'src="([^"]+)"', page)
        assert sources and all(src.startswith(BACKEND) for src in sources)
    assert "tab=7" in task_html and "map.png?label=0&amp;predicted=1" in task_html
    assert "labeled <b>ant</b> · model says <b>bee</b>" in task_html


def test_evidence_speaks_plainly_and_shows_partners(analysis):
    evidence = evidence_html(analysis, 0, image_url=urls)
    p_bee, p_ant = analysis.pred_probs[0, 1], analysis.pred_probs[0, 0]
    expected = f"The model thinks this is a <b>‘bee’</b> ({p_bee:.0%}). Labeled: <b>‘ant’</b> ({p_ant:.0%})."
    assert expected in evidence
    assert "Suggested label: <b>‘bee’</b>" in evidence
    assert "prob.png?i=0" in evidence and "map.png?label=0&amp;predicted=1&amp;highlight=0" in evidence
    assert "pair.png?a=0&amp;b=1" in evidence and "thumb.png?i=1" in evidence
    assert "validation image" not in evidence.split("blue frame = validation image")[0]
    agreeing = evidence_html(analysis, 27, image_url=urls)  # a cat, validation, model agrees
    assert "The model agrees with the label <b>‘cat’</b>" in agreeing and "validation image" in agreeing
    assert "map.png" not in agreeing


def test_every_image_in_the_review_list_reads_at_least_possibly_wrong():
    assert likelihood_words(0.9) == "very likely wrong" and likelihood_words(0.55) == "likely wrong"
    assert likelihood_words(0.2) == "possibly wrong"  # from the list's threshold up
    assert likelihood_words(0.1) == "probably right" and likelihood_words(0.1, candidate=True) == "possibly wrong"


# --- review config ------------------------------------------------------------------------------

ORIGINAL = ('<View>\n  <Image name="img" value="$photo" zoom="true"/>\n'
            '  <Choices name="kind" toName="img" choice="single">\n    <Choice value="a"/>\n'
            '    <Choice value="b" hint="x"/>\n  </Choices>\n</View>\n<!-- trailing comment -->\n')


def _elements(xml: str) -> Counter:
    return Counter((el.tag, tuple(sorted(el.attrib.items()))) for el in ET.fromstring(xml).iter())


@pytest.mark.parametrize("original", [
    ORIGINAL,
    '<View><Image name="i" value="$u"/><Choices name="c" toName="i"><Choice value="x"/></Choices></View>',
    '<?xml version="1.0"?>\n<View>\n<Header value="Hi"/>\n<View><Image name="i" value="$u"/></View>\n'
    '<Choices name="c" toName="i"><Choice value="x"/></Choices>\n  </View>',
    (CONFIGS / "image_classification.xml").read_text(),
])
def test_review_config_adds_panel_keeps_everything_and_round_trips(original):
    added = review_config(original)
    before, after = _elements(original), _elements(added)
    assert not before - after  # every original element with all its attributes is still there
    new = after - before
    image = next(el.get("name") for el in ET.fromstring(original).iter("Image"))
    assert (("Choices", (("choice", "single"), ("name", "dc_verdict"), ("showInline", "true"),
                         ("toName", image))), 1) in new.items()
    assert ("Markdown", (("value", "$dc_evidence"),)) in new
    assert sorted(dict(attrs)["value"] for tag, attrs in new if tag == "Choice") == sorted(v.choice for v in Verdict)
    assert review_config(added) == added
    assert remove_review_config(added) == original
    assert remove_review_config(original) == original


def test_review_config_hypertext_variant_and_upgrade():
    ht = review_config(ORIGINAL, evidence_tag="HyperText")
    assert '<HyperText name="dc_evidence" value="$dc_evidence" inline="true"' in ht and "<Markdown" not in ht
    assert review_config(ht) == review_config(ORIGINAL)  # re-applying replaces our block with the current one
    assert remove_review_config(ht) == ORIGINAL
    with pytest.raises(ValueError, match="evidence_tag"):
        review_config(ORIGINAL, evidence_tag="Text")


def test_review_config_refuses_configs_it_cannot_extend():
    with pytest.raises(LabelConfigError, match="exactly one named <Image>"):
        review_config('<View><Image name="a" value="$a"/><Image name="b" value="$b"/></View>')
    with pytest.raises(LabelConfigError, match="not valid XML"):
        review_config("<View><Image")


def test_remove_without_markers_drops_only_our_elements():
    # the user's own dc_ control (the parser's advice for a Choices that is not the class list) stays
    original = ORIGINAL.replace("</Choices>\n</View>", '</Choices>\n  <Choices name="dc_quality" toName="img">'
                                '<Choice value="blurry"/></Choices>\n</View>')
    stripped = review_config(original).replace("<!-- de-confusion:begin -->", "").replace(
        "<!-- de-confusion:end -->", "")
    assert review_config(stripped) == stripped  # already installed: left alone
    removed = remove_review_config(stripped)
    assert _elements(removed) == _elements(original)
    assert ("Choices", (("name", "dc_quality"), ("toName", "img"))) in _elements(removed)


def test_review_template_holds_the_same_panel():
    template = (CONFIGS / "review.xml").read_text()
    assert {"{{IMAGE_NAME}}", "{{IMAGE_VALUE}}", "{{CHOICES_BLOCK}}"} <= set(re.findall(r"\{\{[A-Z_]+\}\}", template))
    block = template[template.index("<!-- de-confusion:begin -->"):template.index("<!-- de-confusion:end -->")]
    assert block == panel("{{IMAGE_NAME}}")[:len(block)]
    filled = (template.replace("{{IMAGE_NAME}}", "image").replace("{{IMAGE_VALUE}}", "$image")
              .replace("{{CHOICES_BLOCK}}", '<Choices name="label" toName="image"><Choice value="a"/></Choices>'))
    left = ET.fromstring(remove_review_config(filled)).iter()
    assert not [el for el in left if el.get("name", "").startswith("dc_") or "dc_" in el.get("value", "")]
    overview = ET.fromstring((CONFIGS / "overview.xml").read_text())
    hypertext = next(overview.iter("HyperText"))
    assert hypertext.get("value") == "$html" and hypertext.get("inline") == "true"
    assert hypertext.get("clickableLinks") == "true"


# --- report -------------------------------------------------------------------------------------

@pytest.fixture()
def history():
    return [{"iteration": i, "model_version": f"deconfusion-v{i}-x", "created_at": f"2026-11-2{i}T10:00:00+00:00",
             "images": 100, "candidates": 20 - 8 * i, "verdicts": {"kept": i, "relabeled_to_model": 3 * i},
             "estimated_error_rate": 0.1 / i, "model_accuracy": 0.9 + 0.01 * i,
             "per_class_error_rate": {"ant": 0.1, "bee": 0.05}, "confused_pairs": [
                 {"label": "ant", "predicted": "bee", "count": 7 - i}],
             "duplicates_found": 1, "leakage_found": 0, "duplicates_resolved": i - 1} for i in (1, 2, 3)]


def test_report_has_every_iteration(history):
    page = report_html(history, chart_url=lambda name: f"/chart/{name}.png")
    assert_balanced(page)
    for h in history:
        assert f">{h['iteration']}</td>" in page and h["model_version"] in page
    assert all(f"/chart/{name}.png" in page for name in CHARTS)
    assert "took the model&#x27;s label" in page and "ant" in page and "–" in page  # leakage_resolved missing
    data = report_json(history)
    assert [h["iteration"] for h in data["iterations"]] == [1, 2, 3] and data["latest"]["iteration"] == 3
    assert data["changes"]["candidates"] == {"first": 12, "latest": -4} and data["changes"]["verdicts_total"] == 12


def test_report_lists_the_tasks_the_latest_analysis_left_out(history):
    assert "Left out" not in report_html(history, chart_url=str)
    history[-1]["not_analysed"] = [{"item": "task-7", "reason": "task 7: image 'http://x/7.png' could not be "
                                                                  "downloaded: HTTP 404 <not found>"}]
    history[-1]["fields_refused"] = [{"task": 12, "reason": "HTTP 413: Request Entity Too Large"}]
    page = report_html(history, chart_url=str)
    assert_balanced(page)
    assert "<b>2</b> tasks were left out" in page and "Left out of iteration 3 (2)" in page
    assert "task-7" in page and "HTTP 404 &lt;not found&gt;" in page
    assert "task 12" in page and "Request Entity Too Large" in page
    history[-1]["not_analysed"] *= 60
    page = report_html(history, chart_url=str)
    assert page.count("task-7") == 50 and "… and 11 more" in page
    assert len(report_json(history)["latest"]["not_analysed"]) == 60


def test_report_charts_and_empty_history(history):
    for name in CHARTS:
        assert png_size(report_chart_png(history, name))[0] == 560
    with pytest.raises(ValueError, match="no chart 'pie'"):
        report_chart_png(history, "pie")
    with pytest.raises(ValueError, match="no analysis"):
        report_chart_png([], "candidates")
    assert "No analysis yet" in report_html([], chart_url=str) and report_json([])["latest"] is None
