"""`python -m ml_backend analyze` on generated images with planted errors and duplicates."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from tests.shapes import CLASSES, pattern
from ml_backend.analysis import CELLS_COLUMNS, SCORES_COLUMNS, load
from ml_backend.cli import main



@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("data")
    truth = {}
    for cls in CLASSES:
        for n in range(70):
            split = "val" if n % 7 == 0 else "train"
            label = cls
            if cls == "ring" and n < 14:
                # systematic: a labeler reads rings as diagonals. A fifth of a class: with a third,
                # the 40-epoch CNN of this small set learns half the swap and the noise matrix
                # explains the rest (at 18 of 70 the cell's mean error score sat at 0.50 +- 0.01,
                # flagged or not by the machine's arithmetic)
                label = "diagonal"
            if cls == "vertical" and n in (30, 40):
                label = "horizontal"  # two single slips
            path = root / split / label / f"{cls}-{n:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            img = pattern(cls, rng)
            Image.fromarray(img).save(path)
            truth[path.relative_to(root).as_posix()] = (cls, label, img)
    exact = np.asarray(Image.open(root / "train/horizontal/horizontal-001.png"))
    Image.fromarray(exact).save(root / "val/horizontal/copy-of-001.png")  # leakage
    near = np.clip(exact.astype(int) + rng.integers(-2, 3, exact.shape), 0, 255).astype(np.uint8)
    Image.fromarray(near).save(root / "train/horizontal/near-001.png")
    (root / "train/ring/broken.png").write_bytes(b"\x89PNG broken")
    out = tmp_path_factory.mktemp("out")
    assert main(["analyze", str(root), "--out", str(out), "--folds", "3", "--seed", "0"]) == 0
    return root, out, truth


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_outputs_follow_the_documented_schema(analysed):
    _, out, truth = analysed
    scores = read_csv(out / "scores.csv")
    columns = tuple(scores[0])
    assert columns[:len(SCORES_COLUMNS)] == SCORES_COLUMNS and len(scores) == len(truth) + 2
    # grey 16 px images: the small CNN's view first; the pretrained ones join only if it confuses
    # classes beyond the label noise (pipeline.CONFUSION_FOR_PRETRAINED), a close call on this set
    views = columns[len(SCORES_COLUMNS):]
    assert views[0] == "doubt_small_cnn" and set(views[1:]) <= {"doubt_efficientnet_lite0", "doubt_efficientnet_lite2"}
    assert tuple(read_csv(out / "cells.csv")[0]) == CELLS_COLUMNS
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == len(truth) + 2 and "timings_s" in summary and summary["versions"]["torch"]
    assert (out / "overview.html").read_text().count("<img") > 4
    assert any((out / "embedding").iterdir())
    assert load(out).model_version == summary["model_version"]


def test_every_misclassified_image_is_placed_on_its_cells_inspection_map(analysed):
    _, out, _ = analysed
    analysis = load(out)
    off = analysis.labels != analysis.predicted
    assert np.isnan(analysis.map_xy[~off]).all() and np.isfinite(analysis.map_xy[off]).all()
    sizes = []
    for cell in analysis.cells:
        xy = analysis.map_xy[analysis.cell_members(cell["label"], cell["predicted"])]
        assert ((xy >= 0) & (xy <= 1)).all()
        if len(xy) < 6:  # a row, side by side
            assert np.allclose(xy[:, 1], 0.5) and np.allclose(np.sort(xy[:, 0]), (np.arange(len(xy)) + 0.5) / len(xy))
        else:  # a t-SNE map spread over both axes
            assert np.ptp(xy, axis=0).min() > 0.1
        sizes.append(len(xy))
    assert max(sizes) >= 6 and min(sizes) < 6  # both layouts were built in one analysis


def test_bad_file_is_skipped_and_reported(analysed):
    _, out, _ = analysed
    skipped = json.loads((out / "summary.json").read_text())["skipped"]
    assert [s["item"] for s in skipped] == ["train/ring/broken.png"] and "not a readable image" in skipped[0]["reason"]


def test_injected_swap_is_the_top_cell_and_flagged(analysed):
    _, out, _ = analysed
    first = read_csv(out / "cells.csv")[0]
    assert (first["label"], first["predicted"]) == ("diagonal", "ring")
    assert first["interpretation_error"] == "1" and int(first["count"]) >= 12


def test_planted_errors_rank_at_the_top_and_are_candidates(analysed):
    _, out, truth = analysed
    scores = sorted(read_csv(out / "scores.csv"), key=lambda r: -float(r["error_score"]))
    wrong = {item for item, (cls, label, _) in truth.items() if cls != label}
    top = {r["item"] for r in scores[:len(wrong) + 4]}
    assert len(wrong & top) >= len(wrong) - 1
    flagged = {r["item"] for r in scores if r["is_candidate"] == "1"}
    # confident learning's estimate of the error count is loose on 280 images: most, not all
    assert len(wrong & flagged) >= 0.7 * len(wrong) and len(flagged) <= 2 * len(wrong)


def test_exact_and_near_duplicates_found_and_leakage_marked(analysed):
    _, out, _ = analysed
    pairs = {(r["item_a"], r["item_b"]): r for r in read_csv(out / "duplicates.csv")}
    exact = pairs[("train/horizontal/horizontal-001.png", "val/horizontal/copy-of-001.png")]
    assert exact["kind"] == "exact" and exact["cross_split"] == "1"
    near = [p for k, p in pairs.items() if "train/horizontal/near-001.png" in k]
    assert near and near[0]["kind"] == "near" and float(near[0]["ssim"]) >= 0.95


def test_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_an_output_folder_inside_the_images_or_on_a_file_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "images" / "cat").mkdir(parents=True)
    assert main(["analyze", str(tmp_path / "images"), "--out", str(tmp_path / "images" / "results")]) == 2
    assert "is inside ROOT" in capsys.readouterr().err and not (tmp_path / "images" / "results").exists()
    (tmp_path / "taken").write_text("a file")
    assert main(["analyze", str(tmp_path / "images"), "--out", str(tmp_path / "taken")]) == 2
    assert "cannot be made a folder (File exists)" in capsys.readouterr().err


def test_a_second_run_into_the_same_folder_leaves_no_map_of_the_first(analysed, tmp_path):
    import shutil
    from ml_backend.analysis import load, write_exports
    out = tmp_path / "again"
    shutil.copytree(analysed[1], out)
    (out / "embedding" / "007-009.csv").write_text("item,x,y,mismatch_score,split\n")  # a cell of a run before
    write_exports(load(out), out)
    cells = read_csv(out / "cells.csv")
    assert len(list((out / "embedding").glob("*.csv"))) == len(cells)


def test_saved_models_answer_with_the_class_names(analysed):
    """/predict for a new task uses model.pt: it must name classes, not their indices."""
    from ml_backend.model import ModelSet

    root, out, truth = analysed
    models = ModelSet.load(out / "model.pt")
    assert models.class_names == sorted(CLASSES)
    _, (cls, _, img) = next((k, v) for k, v in truth.items() if v[0] == v[1])
    probs = models.predict_proba(img[None, ..., None] if img.ndim == 2 else img[None])
    assert models.class_names[int(probs.argmax())] == cls


def write_verdicts(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([("item", "verdict", "label"), *rows])
    return path


def test_verdicts_are_an_input_reviewed_images_train_as_decided_and_leave_the_candidates(analysed, tmp_path):
    root, out, truth = analysed
    scores = read_csv(out / "scores.csv")
    fixed, kept = [r["item"] for r in scores if r["is_candidate"] == "1"][:2]
    gone = next(r["item"] for r in scores if r["is_candidate"] == "0")
    verdicts = write_verdicts(tmp_path / "verdicts.csv", [
        (fixed, "relabeled", truth[fixed][0]), (kept, "confirmed", next(r["label"] for r in scores if r["item"] == kept)),
        (gone, "removed", "")])
    again = tmp_path / "again"
    assert main(["analyze", str(root), "--out", str(again), "--folds", "3", "--seed", "0",
                 "--verdicts", str(verdicts)]) == 0
    after = {r["item"]: r for r in read_csv(again / "scores.csv")}
    assert gone not in after and len(after) == len(scores) - 1
    assert after[fixed]["label"] == truth[fixed][0]
    assert [after[i]["reviewed"] for i in (fixed, kept)] == ["1", "1"]
    assert [after[i]["is_candidate"] for i in (fixed, kept)] == ["0", "0"]
    summary = json.loads((again / "summary.json").read_text())
    assert summary["reviewed"] == 3 - 1  # the removed one is not scored
    assert summary["verifier_weight"] == 0.0  # two verdicts teach the verifier nothing: the ranking is the model's
    assert "doubt_without_verifier" not in after[fixed]  # written only when the verifier re-ranked


def test_an_analysis_with_every_image_confirmed_still_runs(analysed, tmp_path, capsys):
    root, out, _ = analysed
    rows = [(r["item"], "confirmed", r["label"]) for r in read_csv(out / "scores.csv")]
    verdicts = write_verdicts(tmp_path / "all.csv", rows)
    assert main(["analyze", str(root), "--out", str(tmp_path / "all"), "--folds", "3", "--epochs", "1",
                 "--verdicts", str(verdicts)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["candidates"] == 0 and printed["reviewed"] == len(rows)


def test_a_bad_verdicts_file_stops_with_the_row_named(analysed, tmp_path, capsys):
    root, _, _ = analysed
    verdicts = write_verdicts(tmp_path / "bad.csv", [("no/such/item.png", "confirmed", "ring")])
    assert main(["analyze", str(root), "--out", str(tmp_path / "x"), "--verdicts", str(verdicts)]) == 2
    assert "row 2: item 'no/such/item.png' is not in the data set" in capsys.readouterr().err
