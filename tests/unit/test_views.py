"""Overview list, evidence panel, report and the review config, on a small synthetic analysis."""

import io
import re

import numpy as np
import pytest
from PIL import Image

from ml_backend.analysis import Analysis
from ml_backend.detectors.overview import overview_cells
from ml_backend.views.configs import remove_review_config, review_config
from ml_backend.views.overview import cell_colour, cell_task_html, overview_html, overview_rows
from ml_backend.views.render import render_png
from ml_backend.views.report import report_chart_png, report_html, report_json
from ml_backend.views.review import evidence_html


@pytest.fixture(scope="module")
def analysis() -> Analysis:
    rng = np.random.default_rng(0)
    n, k = 30, 3
    labels = np.repeat(np.arange(k), 10)
    predicted = labels.copy()
    predicted[:6] = 1   # cell 0 -> 1 with 6 images
    predicted[10:12] = 2  # cell 1 -> 2 with 2 images
    probs = np.full((n, k), 0.1)
    probs[np.arange(n), predicted] = 0.8
    group = np.full(n, -1)
    group[[0, 1]] = 0
    cells = overview_cells(probs, labels, duplicate_group=group)
    map_xy = np.full((n, 2), np.nan, np.float32)
    map_xy[predicted != labels] = rng.random(((predicted != labels).sum(), 2))
    return Analysis(
        model_version="deconfusion-v1-test", items=[f"i{i}" for i in range(n)], class_names=["ant", "bee", "cat"],
        task_ids=np.arange(100, 100 + n), splits=np.array(["train"] * 25 + ["val"] * 5), labels=labels,
        pred_probs=probs.astype(np.float32), predicted=predicted, mismatch=np.full(n, 0.85, np.float32),
        error_score=rng.random(n).astype(np.float32), is_candidate=predicted != labels,
        knn_disagreement=np.zeros(n, np.float32), consensus=np.zeros(n, np.float32), duplicate_group=group,
        neighbors=np.stack([(np.arange(n) + 1) % n, (np.arange(n) + 2) % n], 1), map_xy=map_xy,
        representatives=np.array([7, 15, 25]), thumbs=rng.integers(0, 255, (n, 12, 12, 1), dtype=np.uint8),
        cells=cells, duplicates=[{"a": 0, "b": 1, "kind": "near", "ssim": 0.97, "cross_split": False}],
        summary={"images": n}, params={})


def urls(kind, params):
    return "http://backend:9090/evidence/1/v/" + kind + ".png?" + "&".join(f"{k}={v}" for k, v in params.items())


def png_size(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


def test_every_evidence_kind_renders_and_bad_requests_are_named(analysis):
    assert png_size(render_png(analysis, "thumb", {"i": "3", "side": "64"})) == (64, 64)
    assert png_size(render_png(analysis, "prob", {"i": "0"}))[0] == 380
    assert png_size(render_png(analysis, "map", {"label": "0", "predicted": "1", "highlight": "2"})) == (480, 480)
    assert png_size(render_png(analysis, "pair", {"a": "0", "b": "1"}))[0] > 256
    with pytest.raises(ValueError, match="unknown evidence image kind 'nope'"):
        render_png(analysis, "nope", {})
    with pytest.raises(ValueError, match="out of range"):
        render_png(analysis, "thumb", {"i": "999"})


def test_overview_rows_follow_reading_order_and_colour_by_saturation(analysis):
    rows = overview_rows(analysis)
    assert [r["name"] for r in rows] == ["ant", "bee", "cat"]  # ant has most misclassified
    first = rows[0]["cells"][0]
    assert first["saturation"] == 1.0 and first["colour"] == cell_colour(1.0)
    assert cell_colour(1.0) != cell_colour(0.0) == "#ffffff"
    assert rows[0]["correct"] == 4 and rows[2]["cells"] == []


def test_static_overview_embeds_images_and_marks_duplicates(analysis):
    page = overview_html(analysis)
    assert "data:image/png;base64," in page and "http" not in page
    assert page.count("⧉") == 1  # only the ant -> bee cell holds the duplicate pair
    # every image scores 0.85: one non-empty bucket, so one red bar per off-diagonal cell and none elsewhere
    assert page.count("background:#d7191c") == len(analysis.cells) == 2


def test_label_studio_html_uses_backend_urls_only(analysis):
    cell = analysis.cells[0]
    task_html = cell_task_html(analysis, cell, image_url=urls, tab_url=lambda c: "http://ls/projects/1/data?tab=7")
    evidence = evidence_html(analysis, 0, image_url=urls)
    for page in (task_html, evidence):
        assert "data:" not in page and "<script" not in page
        assert all(src.startswith("http://backend:9090/") for src in re.findall(r'src="([^"]+)"', page))
    assert "tab=7" in task_html and "map.png?label=0&amp;predicted=1" in task_html
    assert "The model thinks this is <b>bee</b>" in evidence and "Duplicate" in evidence
    assert "validation image" in evidence_html(analysis, 27, image_url=urls)


def test_review_config_adds_panel_idempotently_and_removes_exactly_it():
    original = ('<View>\n  <Image name="img" value="$photo" zoom="true"/>\n'
                '  <Choices name="kind" toName="img" choice="single">\n    <Choice value="a"/>\n  </Choices>\n</View>')
    added = review_config(original)
    assert 'name="dc_verdict" toName="img"' in added and 'value="$dc_evidence"' in added
    assert original.replace("\n</View>", "") in added
    assert review_config(added) == added
    assert remove_review_config(added) == original


def test_report_has_every_iteration_and_charts():
    history = [{"iteration": i, "model_version": f"v{i}", "created_at": "2026-11-22T10:00:00", "images": 100,
                "candidates": 20 - 8 * i, "verdicts": {"kept": i, "relabeled_to_model": 3 * i}, "estimated_error_rate": 0.1 / i,
                "model_accuracy": 0.9 + 0.01 * i, "per_class_error_rate": {"ant": 0.1, "bee": 0.05},
                "confused_pairs": [{"label": "ant", "predicted": "bee", "count": 6}], "duplicates_found": 1,
                "leakage_found": 0, "duplicates_resolved": i - 1} for i in (1, 2)]
    page = report_html(history, chart_url=lambda name: f"/chart/{name}.png")
    assert "<td>v1</td>" in page and "<td>v2</td>" in page and "/chart/accuracy.png" in page
    assert report_json(history)["latest"]["iteration"] == 2
    for name in ("candidates", "error_rate", "accuracy", "verdicts", "per_class"):
        assert png_size(report_chart_png(history, name))[0] == 520
    with pytest.raises(ValueError, match="no chart"):
        report_chart_png(history, "pie")
