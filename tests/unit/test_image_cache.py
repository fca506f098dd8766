"""The image cache without a server: images carried in task data (data: URIs)."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from ml_backend.config import Settings
from ml_backend.ls.media import LabeledImage, Media


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
