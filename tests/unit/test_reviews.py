"""Reviewers' verdicts as input to an analysis (``reviews``): the CSV and what each verdict does."""

import io
import logging

import numpy as np
import pytest
from PIL import Image

from ml_backend import dataset as dataset_module
from ml_backend.dataset import ImageDataset, Record, SkippedItem, build_dataset
from ml_backend.errors import DatasetError
from ml_backend.reviews import Review, apply_reviews, read_verdicts

CLASSES = ["cat", "dog", "fox"]


def dataset(n=6) -> ImageDataset:
    return ImageDataset(items=[f"i{k}" for k in range(n)], images=np.arange(n * 4, dtype=np.uint8).reshape(n, 2, 2, 1),
                        labels=np.array([0, 1, 2, 0, 1, 2][:n]), class_names=CLASSES,
                        splits=np.array(["train"] * n), pixel_hashes=[f"h{k}" for k in range(n)],
                        task_ids=np.arange(10, 10 + n), weights=np.ones(n, np.float32))


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def write(tmp_path, text, encoding="utf-8"):
    path = tmp_path / "verdicts.csv"
    path.write_text(text, encoding=encoding)
    return path


def test_a_verdicts_csv_gives_one_review_per_item(tmp_path):
    path = write(tmp_path, "item,verdict,label\ni0,confirmed,cat\ni1,relabeled,fox\ni2,removed,\ni3,ambiguous,\n")
    assert read_verdicts(path, dataset()) == {
        "i0": Review("confirmed", "cat"), "i1": Review("relabeled", "fox"), "i2": Review("removed"),
        "i3": Review("ambiguous")}


@pytest.mark.parametrize("rows, words", [
    ("i9,confirmed,cat", "row 2: item 'i9' is not in the data set"),
    ("i0,confirmed,cat\ni0,removed,", "row 3: item 'i0' has a verdict already"),
    ("i0,wrong,cat", "row 2: verdict 'wrong' is not one of confirmed, relabeled, removed, ambiguous"),
    ("i0,relabeled,wolf", "row 2: label 'wolf' is not a class"),
    ("i0,confirmed,", "row 2: no label; confirmed needs the label after review, one of cat, dog, fox"),
    ("i0,relabeled", "row 2: no label; relabeled needs the label after review"),  # the label field left out
    ("i1,confirmed,cat", "row 2: 'i1' is labeled 'dog', not 'cat'; a label the review changed is 'relabeled'"),
    ("\n\ni0,confirmed,cat\ni9,removed,", "row 5: item 'i9'"),  # the line in the file: blank lines count
])
def test_bad_rows_name_the_row_and_what_to_change(tmp_path, rows, words):
    path = write(tmp_path, "item,verdict,label\n" + rows + "\n")
    with pytest.raises(DatasetError, match=words):
        read_verdicts(path, dataset())


def test_short_rows_and_a_csv_saved_by_excel_are_read(tmp_path):
    text = "\ufeffitem,verdict,label\r\ni2,removed\r\ni3,ambiguous\r\ni0,confirmed,cat\r\n"  # BOM, no empty label
    assert read_verdicts(write(tmp_path, text), dataset()) == {
        "i2": Review("removed"), "i3": Review("ambiguous"), "i0": Review("confirmed", "cat")}


def test_a_header_with_spaces_empty_spreadsheet_rows_and_decomposed_names_are_read(tmp_path):
    data = dataset()
    data.items[0], data.class_names = "Hündin/1.png", ["cat", "Hündin", "fox"]  # as typed (composed)
    typed_on_a_mac = "H\u0075\u0308ndin"  # the same name, decomposed as macOS file names are
    text = f"Item, Verdict, Label\n{typed_on_a_mac}/1.png,relabeled,{typed_on_a_mac}\n,,\ni2,removed,\n,,\n"
    assert read_verdicts(write(tmp_path, text), data) == {"Hündin/1.png": Review("relabeled", "Hündin"),
                                                           "i2": Review("removed")}


def test_a_missing_verdicts_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(DatasetError, match=r"verdicts file .*nope.csv: No such file or directory"):
        read_verdicts(tmp_path / "nope.csv", dataset())


def test_a_file_that_is_not_utf8_says_how_to_save_it(tmp_path):
    with pytest.raises(DatasetError, match="not UTF-8 text; save it as CSV UTF-8"):
        read_verdicts(write(tmp_path, "item,verdict,label\nÄpfel/1.png,removed,\n", "cp1252"), dataset())


def test_a_verdict_on_an_image_skipped_as_unreadable_is_left_out_with_a_warning(tmp_path, caplog):
    data = dataset()
    data.skipped = [SkippedItem("broken.png", "broken.png: not a readable image")]
    path = write(tmp_path, "item,verdict,label\nbroken.png,removed,\ni0,confirmed,cat\n")
    with caplog.at_level(logging.WARNING):
        assert read_verdicts(path, data) == {"i0": Review("confirmed", "cat")}
    assert "row 2: broken.png was skipped when loading (broken.png: not a readable image)" in caplog.text
    with pytest.raises(DatasetError, match="row 2: verdict 'gone'"):  # its row must still be a valid row
        read_verdicts(write(tmp_path, "item,verdict,label\nbroken.png,gone,\n"), data)


def test_a_missing_column_names_the_header(tmp_path):
    with pytest.raises(DatasetError, match="no column label; the header must be item,verdict,label"):
        read_verdicts(write(tmp_path, "item,verdict\ni0,removed\n"), dataset())


def test_each_verdict_changes_what_the_analysis_trains_on():
    data = dataset()
    reviews = {"i0": Review("confirmed", "cat"), "i1": Review("relabeled", "fox"), "i2": Review("removed"),
               "i3": Review("ambiguous")}
    subset, outcome = apply_reviews(data, reviews, confirmed_weight=2.0)
    assert subset.items == ["i0", "i1", "i3", "i4", "i5"]  # removed: left out
    assert subset.labels.tolist() == [0, 2, 0, 1, 2]  # relabeled: the new label
    assert subset.weights.tolist() == [2.0, 2.0, 0.0, 1.0, 1.0]  # trusted; ambiguous out of training
    assert outcome.reviewed.tolist() == [True, True, True, False, False]
    assert outcome.verdicts.tolist() == [0, 1, -1, -1, -1]  # right, wrong, no verdict on the label
    assert outcome.given_labels.tolist() == [0, 1, 0, 1, 2]  # as labeled before the review
    assert subset.task_ids.tolist() == [10, 11, 13, 14, 15] and subset.pixel_hashes[2] == "h3"
    assert subset.images.shape == (5, 2, 2, 1) and subset.images[2, 0, 0, 0] == data.images[3, 0, 0, 0]
    assert data.labels.tolist() == [0, 1, 2, 0, 1, 2] and data.weights.tolist() == [1.0] * 6  # input untouched


def test_leaving_out_removed_images_keeps_a_large_working_copy_in_a_file(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    pngs = [rng.integers(0, 256, (12, 12), np.uint8) for _ in range(7)]
    records = [Record(f"i{k}", png(pixels), CLASSES[k % 3]) for k, pixels in enumerate(pngs)]
    monkeypatch.setattr(dataset_module, "MEMMAP_ABOVE_BYTES", 0)
    monkeypatch.setattr(dataset_module, "COPY_CHUNK_BYTES", 2 * 12 * 12)  # two images a step: several steps
    data = build_dataset(records, scratch_dir=tmp_path)
    subset, _ = apply_reviews(data, {"i1": Review("removed"), "i4": Review("removed")}, confirmed_weight=2.0)
    assert isinstance(subset.images, np.memmap)  # not read into RAM
    assert subset.items == ["i0", "i2", "i3", "i5", "i6"]
    assert np.array_equal(subset.images, data.images[[0, 2, 3, 5, 6]])
    assert not list(tmp_path.iterdir())  # unlinked: the file goes with the array


def test_a_confirmed_label_that_changed_since_and_an_all_removed_set_are_refused():
    with pytest.raises(DatasetError, match="i1: confirmed as 'cat' but labeled 'dog'"):
        apply_reviews(dataset(), {"i1": Review("confirmed", "cat")}, confirmed_weight=2.0)
    with pytest.raises(DatasetError, match="every image is marked removed"):
        apply_reviews(dataset(2), {"i0": Review("removed"), "i1": Review("removed")}, confirmed_weight=2.0)


def test_verdicts_that_leave_one_class_to_train_on_are_refused_naming_it():
    removed = {f"i{k}": Review("removed") for k in (1, 2, 4)}
    with pytest.raises(DatasetError, match=f"only class {CLASSES[0]!r} has images to train on"):
        apply_reviews(dataset(), {**removed, "i5": Review("relabeled", CLASSES[0])}, confirmed_weight=2.0)
    ambiguous = {f"i{k}": Review("ambiguous") for k in (1, 2, 4, 5)}  # kept, but out of training
    with pytest.raises(DatasetError, match=f"only class {CLASSES[0]!r} has images to train on"):
        apply_reviews(dataset(), ambiguous, confirmed_weight=2.0)
    with pytest.raises(DatasetError, match="no class has images to train on"):
        apply_reviews(dataset(), {f"i{k}": Review("ambiguous") for k in range(6)}, confirmed_weight=2.0)


def test_the_service_turns_its_stored_verdicts_into_the_same_reviews():
    from ml_backend.service.verdicts import reviews_from_verdicts
    stored = {"10": {"verdict": "kept", "label": "cat", "given": "cat"},
              "11": {"verdict": "relabeled_to_model", "label": "dog", "given": "fox"},
              "12": {"verdict": "relabeled_other", "label": "cat"},  # the label changed again since: stale
              "13": {"verdict": "removed", "label": "cat"}, "14": {"verdict": "ambiguous", "label": "dog"},
              "99": {"verdict": "kept", "label": "cat"}}  # a task no longer in the data set
    assert reviews_from_verdicts(stored, dataset()) == {
        "i0": Review("confirmed", "cat", "cat"), "i1": Review("relabeled", "dog", "fox"), "i3": Review("removed"),
        "i4": Review("ambiguous")}


def test_a_relabel_tells_the_next_analysis_the_same_through_the_service_as_through_a_verdicts_file():
    from ml_backend.service.verdicts import reviews_from_verdicts
    # a folder holds the label as given (i1: fox) and the file the decision; Label Studio already
    # holds the reviewer's label (dog) as the task's newest annotation, the stored verdict the rest
    as_given = dataset()
    as_given.labels[1] = 2
    _, from_file = apply_reviews(as_given, {"i1": Review("relabeled", "dog")}, confirmed_weight=2.0)
    stored = {"11": {"verdict": "relabeled_other", "label": "dog", "given": "fox"}}
    data = dataset()
    trained, from_service = apply_reviews(data, reviews_from_verdicts(stored, data), confirmed_weight=2.0)
    assert from_service.verdicts[1] == from_file.verdicts[1] == 1  # the label was wrong: the verifier learns it
    assert from_service.given_labels[1] == from_file.given_labels[1] == 2  # how the annotators err: fox
    assert trained.labels[1] == 1 and trained.weights[1] == 2.0
    renamed = {"11": {"verdict": "relabeled_other", "label": "dog", "given": "kitty"}}  # a class renamed since
    _, outcome = apply_reviews(data, reviews_from_verdicts(renamed, data), confirmed_weight=2.0)
    assert outcome.verdicts[1] == -1 and outcome.reviewed[1]  # reviewed, but no lesson on a label that is gone
