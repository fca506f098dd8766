"""The image cache without a server: images carried in task data (data: URIs), and Label Studio's
local files read from disk (LOCAL_FILES_DOCUMENT_ROOT)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from ml_backend.config import Settings
from ml_backend.ls.media import ImageFetchError, LabeledImage, Media
from tests.integration.labelstudio import free_port


def png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.arange(side * side, dtype=np.uint8).reshape(side, side)).save(buf, format="PNG")
    return buf.getvalue()


def test_an_image_in_the_task_data_is_kept_by_content_and_never_counted_as_a_download(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.arange(81, dtype=np.uint8).reshape(9, 9)).save(buf, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    media = Media(Settings(), lambda: {})
    try:
        got = media.records([LabeledImage(1, uri, "a", "train"), LabeledImage(2, uri, "b", "val")], "image", tmp_path)
    finally:
        media.close()
    assert (got.fetched, got.unchanged, got.skipped) == (0, 2, [])
    assert got.records[0].source == got.records[1].source  # the same bytes, stored once
    with open(got.records[0].source, "rb") as fh:
        assert fh.read() == buf.getvalue()
    assert not list((tmp_path / "urls").iterdir())  # nothing to ask a server about later


def test_local_files_are_read_from_the_document_root_and_checked_by_size_and_time(tmp_path):
    """No server listens at LABEL_STUDIO_URL: every image comes from disk. A second run reads
    nothing unchanged, a replaced file is read again, a deleted one and a path leaving the root
    are skipped naming the file."""
    root = tmp_path / "root"
    (root / "set").mkdir(parents=True)
    (root / "set" / "a.png").write_bytes(png(8))
    (tmp_path / "secret.png").write_bytes(png(5))
    base = f"http://127.0.0.1:{free_port()}"
    media = Media(Settings(label_studio_url=base, local_files_root=str(root)), lambda: {})
    images = [LabeledImage(1, "/data/local-files/?d=set/a.png", "a", "train"),
              LabeledImage(2, f"{base}/data/local-files/?d=set%2Fa.png", "a", "val"),
              LabeledImage(3, "/data/local-files/?d=set/../../secret.png", "a", "train")]
    cache = tmp_path / "cache"
    try:
        first = media.records(images, "image", cache)
        second = media.records(images, "image", cache)
        assert media.download(images[0].url, task_id=1) == png(8)  # /predict on a task no analysis saw
        (root / "set" / "a.png").write_bytes(png(9))
        replaced = media.records(images[:1], "image", cache)
        (root / "set" / "a.png").unlink()
        gone = media.records(images[:1], "image", cache)
    finally:
        media.close()
    assert (first.fetched, first.unchanged) == (2, 0) and (second.fetched, second.unchanged) == (0, 2)
    with open(first.records[0].source, "rb") as fh:
        assert fh.read() == png(8)
    [outside] = first.skipped
    assert outside.item == "task-3" and "not under LOCAL_FILES_DOCUMENT_ROOT" in outside.reason
    assert replaced.fetched == 1 and open(replaced.records[0].source, "rb").read() == png(9)
    [missing] = gone.skipped
    assert str(root / "set" / "a.png") in missing.reason and "does not exist" in missing.reason


def test_a_local_file_larger_than_max_image_bytes_is_refused_naming_the_limit(tmp_path):
    (tmp_path / "a.png").write_bytes(png(8))
    media = Media(Settings(label_studio_url=f"http://127.0.0.1:{free_port()}", local_files_root=str(tmp_path),
                           max_image_bytes=len(png(8)) - 1), lambda: {})
    try:
        with pytest.raises(ImageFetchError, match="larger than MAX_IMAGE_BYTES"):
            media.download("/data/local-files/?d=a.png", task_id=1)
    finally:
        media.close()
