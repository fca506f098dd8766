"""Loading the paper's folder format and surviving odd files."""

import io

import numpy as np
import pytest
from PIL import Image

from ml_backend import dataset as dataset_module
from ml_backend.dataset import Record, build_dataset, decode_image, load_folder
from ml_backend.errors import DatasetError, UnreadableImage


def png_bytes(array: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format=fmt)
    return buf.getvalue()


def write_image(path, value: int, size=(12, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, value, dtype=np.uint8)).save(path)


def test_train_val_layout_gives_sorted_classes_and_splits(tmp_path):
    write_image(tmp_path / "train" / "zebra" / "a.png", 10)
    write_image(tmp_path / "train" / "ant" / "b.png", 20)
    write_image(tmp_path / "val" / "zebra" / "c.png", 30)
    ds = load_folder(tmp_path)
    assert ds.class_names == ["ant", "zebra"]
    by_item = dict(zip(ds.items, zip(ds.labels.tolist(), ds.splits.tolist())))
    assert by_item == {"train/ant/b.png": (0, "train"), "train/zebra/a.png": (1, "train"),
                       "val/zebra/c.png": (1, "val")}
    assert ds.images.shape == (3, 12, 12, 1) and ds.images.dtype == np.uint8


def test_flat_layout_with_spaces_and_non_ascii_labels(tmp_path):
    write_image(tmp_path / "grüne Äpfel" / "1.png", 10)
    write_image(tmp_path / "鸭子 duck" / "2.png", 200)
    ds = load_folder(tmp_path)
    assert ds.class_names == ["grüne Äpfel", "鸭子 duck"]
    assert set(ds.splits) == {"train"}


def test_folder_names_stored_decomposed_become_the_names_users_type(tmp_path):
    import unicodedata
    write_image(tmp_path / unicodedata.normalize("NFD", "Hündin") / "1.png", 10)  # as macOS stores it
    write_image(tmp_path / "Katze" / "2.png", 200)
    ds = load_folder(tmp_path)
    assert ds.class_names == ["Hündin", "Katze"] and "Hündin/1.png" in ds.items


def test_each_image_keeps_its_original_aspect_beside_the_working_copy(tmp_path):
    write_image(tmp_path / "cat" / "wide.png", 10, size=(10, 20))
    write_image(tmp_path / "dog" / "tall.png", 200, size=(20, 10))
    write_image(tmp_path / "dog" / "square.png", 90, size=(16, 16))
    ds = load_folder(tmp_path)
    aspects = dict(zip(ds.items, ds.aspects.tolist()))
    assert aspects == {"cat/wide.png": 2.0, "dog/tall.png": 0.5, "dog/square.png": 1.0}
    dogs = ds.subset(ds.labels == 1)
    assert dict(zip(dogs.items, dogs.aspects.tolist())) == {"dog/tall.png": 0.5, "dog/square.png": 1.0}


def test_a_folder_without_a_readable_image_is_not_a_class(tmp_path):
    write_image(tmp_path / "cat" / "a.png", 10)
    write_image(tmp_path / "dog" / "b.png", 200)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("how we labeled")
    ds = load_folder(tmp_path)
    assert ds.class_names == ["cat", "dog"] and ds.labels.tolist() == [0, 1]
    assert [s.item for s in ds.skipped] == ["notes/readme.txt"]


def test_a_test_folder_beside_train_and_val_is_refused_by_name_not_read_as_classes(tmp_path):
    for split in ("train", "val", "test"):
        write_image(tmp_path / split / "cat" / "a.png", 10)
        write_image(tmp_path / split / "dog" / "b.png", 200)
    with pytest.raises(DatasetError, match=r"other folders too \(test\): put every image under ROOT/train"):
        load_folder(tmp_path)


def test_a_file_name_that_is_not_utf8_is_analysed_under_a_printable_name(tmp_path):
    import os
    write_image(tmp_path / "cat" / "a.png", 10)
    write_image(tmp_path / "dog" / "b.png", 200)
    latin1 = (os.fsencode(tmp_path / "cat") + b"/caf\xe9.png").decode("utf-8", "surrogateescape")
    Image.fromarray(np.full((12, 12), 30, dtype=np.uint8)).save(latin1, format="PNG")
    ds = load_folder(tmp_path)
    assert "cat/caf\\xe9.png" in ds.items
    assert all(item.encode("utf-8") for item in ds.items)  # scores.csv and JSON can hold every name


def test_odd_files_are_skipped_and_reported_never_fatal(tmp_path):
    write_image(tmp_path / "a" / "ok1.png", 10)
    write_image(tmp_path / "b" / "ok2.png", 99)
    (tmp_path / "a" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "a" / "empty.jpg").write_bytes(b"")
    (tmp_path / "b" / "pixel.png").write_bytes(png_bytes(np.zeros((1, 1), np.uint8)))
    (tmp_path / "b" / "notes.txt").write_text("hello")
    ds = load_folder(tmp_path)
    assert sorted(ds.items) == ["a/ok1.png", "b/ok2.png"]
    reasons = {s.item: s.reason for s in ds.skipped}
    assert set(reasons) == {"a/corrupt.png", "a/empty.jpg", "b/pixel.png", "b/notes.txt"}
    assert "empty" in reasons["a/empty.jpg"] and "too small" in reasons["b/pixel.png"]
    assert reasons["b/notes.txt"].endswith("such as PNG or JPEG); convert it or remove it from the project")
    assert "BytesIO" not in " ".join(reasons.values())  # what Pillow says about its buffer means nothing to a user


def test_huge_image_is_refused_with_a_reason(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(UnreadableImage, match="too large"):
        decode_image(png_bytes(np.zeros((40, 40), np.uint8)), name="big.png")


def test_16_bit_cmyk_palette_and_alpha_images_decode():
    sixteen = np.linspace(0, 65535, 16 * 16).reshape(16, 16).astype(np.uint16)
    pixels, _ = decode_image(png_bytes(sixteen), name="16bit.png")
    assert pixels.shape == (16, 16, 1) and pixels.min() == 0 and pixels.max() == 255
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    buf = io.BytesIO()
    cmyk.save(buf, format="JPEG")
    pixels, _ = decode_image(buf.getvalue(), name="cmyk.jpg")
    assert pixels.shape == (16, 16, 3) and pixels[..., 0].mean() > 200 and pixels[..., 1].mean() < 60
    rgba = np.zeros((16, 16, 4), np.uint8)  # fully transparent -> white background
    pixels, _ = decode_image(png_bytes(rgba, "RGBA"), name="alpha.png")
    assert pixels.shape[:2] == (16, 16) and pixels.min() == 255


def test_16_bit_images_keep_their_exposure_and_equal_their_8_bit_copies():
    picture = np.tile(np.arange(20, 120, 10, dtype=np.uint8), (10, 1))
    eight, _ = decode_image(png_bytes(picture))
    sixteen, _ = decode_image(png_bytes(picture.astype(np.uint16) * 257))  # the standard widening
    dim, _ = decode_image(png_bytes(picture.astype(np.uint16) * 257 // 4))  # a quarter of the exposure
    assert np.array_equal(eight, sixteen)
    assert dim.max() < sixteen.max() // 2  # not stretched to look like the bright one
    twelve_bit, _ = decode_image(png_bytes(picture.astype(np.uint16) * 16))  # a 12-bit scanner's values
    assert np.abs(twelve_bit.astype(int) - eight).max() <= 1


def test_mixed_grey_and_colour_become_colour_and_equal_pixels_share_a_hash():
    grey = png_bytes(np.full((10, 10), 128, np.uint8))
    colour = png_bytes(np.full((10, 10, 3), (200, 0, 0), np.uint8))
    records = [Record("g1", grey, "x"), Record("g2", grey, "x"), Record("c", colour, "y", split="val", task_id=7)]
    ds = build_dataset(records)
    assert ds.images.shape == (3, 10, 10, 3)
    assert ds.pixel_hashes[0] == ds.pixel_hashes[1] != ds.pixel_hashes[2]
    assert ds.task_ids.tolist() == [-1, -1, 7]


def premultiplied_tiff(la: np.ndarray) -> bytes:
    """A grey TIFF with associated (premultiplied) alpha: Pillow opens it as 'La' but cannot write one."""
    unassociated = b"\x52\x01\x03\x00\x01\x00\x00\x00\x02\x00"  # little-endian tag ExtraSamples = 2
    return png_bytes(la, "LA", fmt="TIFF").replace(unassociated, unassociated[:-2] + b"\x01\x00")


def test_grey_with_alpha_decodes_to_one_channel_on_white():
    half = np.stack([np.full((10, 10), 100, np.uint8), np.full((10, 10), 128, np.uint8)], -1)  # 100, half see-through
    premultiplied = np.stack([np.full((10, 10), 50, np.uint8), np.full((10, 10), 128, np.uint8)], -1)
    for data in (png_bytes(half, "LA"), premultiplied_tiff(premultiplied)):
        pixels, _ = decode_image(data)
        assert pixels.shape == (10, 10, 1) and pixels.min() == pixels.max() == 177


def test_grey_alpha_and_grey_palette_images_keep_a_grey_data_set_grey_a_colour_palette_makes_it_colour():
    grey = np.tile(np.arange(0, 200, 20, dtype=np.uint8), (10, 1))
    opaque = png_bytes(np.stack([grey, np.full_like(grey, 255)], -1), "LA")
    buf = io.BytesIO()
    Image.fromarray(grey).convert("P").save(buf, format="PNG")  # a palette of 256 greys
    records = [Record("l", png_bytes(grey), "x"), Record("la", opaque, "x"), Record("p", buf.getvalue(), "y")]
    ds = build_dataset(records)
    assert ds.images.shape == (3, 10, 10, 1)
    assert all(np.array_equal(image[..., 0], grey) for image in ds.images)
    buf = io.BytesIO()
    Image.fromarray(np.full((10, 10, 3), (200, 0, 0), np.uint8)).quantize(2).save(buf, format="PNG")
    ds = build_dataset([*records, Record("red", buf.getvalue(), "y")])
    assert ds.images.shape == (4, 10, 10, 3) and ds.images[3, 0, 0].tolist() == [200, 0, 0]
    assert np.array_equal(ds.images[2], np.repeat(grey[..., None], 3, axis=2))


def test_a_grey_picture_saved_as_rgb_and_a_broken_colour_upload_keep_a_grey_data_set_grey():
    # The views follow the working copy's channels: a colour one sends digits down the photo path.
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 255, (10, 10), dtype=np.uint8)
    colour = png_bytes(rng.integers(0, 255, (10, 10, 3), dtype=np.uint8), "RGB")
    records = [Record("grey", png_bytes(grey), "x"), Record("grey-as-rgb", png_bytes(np.stack([grey] * 3, -1), "RGB"), "y"),
               Record("broken", colour[:len(colour) // 2], "x"), Record("other", png_bytes(grey[::-1].copy()), "y")]
    ds = build_dataset(records)
    assert [s.item for s in ds.skipped] == ["broken"] and ds.images.shape == (3, 10, 10, 1)
    assert ds.pixel_hashes[0] == ds.pixel_hashes[1]  # one picture: exact copies, which share a fold
    assert np.array_equal(ds.images[1, ..., 0], grey)


def test_one_class_or_no_images_gets_a_clear_message(tmp_path):
    write_image(tmp_path / "only" / "1.png", 1)
    with pytest.raises(DatasetError, match="at least two classes"):
        load_folder(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no images found"):
        load_folder(empty)


def test_unknown_label_and_split_are_skipped_with_reasons():
    img = png_bytes(np.zeros((10, 10), np.uint8))
    ds = build_dataset([Record("a", img, "x"), Record("b", img, "y"), Record("c", img, "z"),
                        Record("d", img, "x", split="test")], class_names=["x", "y"])
    assert ds.items == ["a", "b"]
    assert {s.item for s in ds.skipped} == {"c", "d"}


def rotated_jpeg(h: int, w: int) -> bytes:
    """A JPEG stored w x h whose EXIF orientation (6: rotate 90°) shows it as h x w."""
    img = Image.fromarray(np.full((w, h, 3), (90, 140, 40), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    return buf.getvalue()


def test_an_unreadable_exif_block_leaves_a_photo_its_shape_and_colour():
    buf = io.BytesIO()
    Image.fromarray(np.full((30, 20, 3), (90, 140, 40), dtype=np.uint8)).save(buf, format="JPEG",
                                                                               exif=b"Exif\x00\x00garbage")
    records = [Record(item=f"{i}.jpg", source=buf.getvalue(), label=label, split="train")
               for i, label in enumerate(["a", "b"])]
    assert build_dataset(records).images.shape == (2, 30, 20, 3)


def test_the_working_shape_comes_from_headers_with_exif_rotation_and_unreadable_files_leave_no_gap():
    records = [Record("r1", rotated_jpeg(24, 12), "x"), Record("r2", rotated_jpeg(24, 12), "y"),
               Record("bad", b"\x89PNG\r\n\x1a\nbroken", "x"), Record("r3", rotated_jpeg(24, 12), "y")]
    ds = build_dataset(records)
    assert ds.images.shape == (3, 24, 12, 3) and ds.items == ["r1", "r2", "r3"]
    assert [s.item for s in ds.skipped] == ["bad"] and "not a readable image" in ds.skipped[0].reason
    assert (ds.images > 0).all()  # every row was written


def test_a_large_working_copy_lives_in_a_file_and_holds_the_same_pixels(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    records = [Record(f"i{n}", png_bytes(rng.integers(0, 256, (16, 16, 3), np.uint8), "RGB"), "xy"[n % 2])
               for n in range(6)]
    in_ram = build_dataset(records, scratch_dir=tmp_path)
    monkeypatch.setattr(dataset_module, "MEMMAP_ABOVE_BYTES", 0)
    on_disk = build_dataset(records, scratch_dir=tmp_path)
    assert not isinstance(in_ram.images, np.memmap) and isinstance(on_disk.images, np.memmap)
    assert np.array_equal(in_ram.images, on_disk.images)
    assert not list(tmp_path.iterdir())  # the file is unlinked: it goes with the array
