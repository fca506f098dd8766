"""The image cache without Label Studio: images carried in task data (data: URIs), Label Studio's
local files read from disk (LOCAL_FILES_DOCUMENT_ROOT), and downloads from a busy server."""

from __future__ import annotations

import base64
import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from ml_backend.config import Settings
from ml_backend.errors import LabelStudioUnavailable
from ml_backend.ls import media as media_module
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


def busy_server(fails_per_image: int):
    """A server on 127.0.0.1 that answers each path with HTTP 503 ``fails_per_image`` times, then the image."""
    tries: dict[str, int] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            tries[self.path] = tries.get(self.path, 0) + 1
            body, status = (b"busy", 503) if tries[self.path] <= fails_per_image else (png(8), 200)
            self.send_response(status)
            self.send_header("Content-Type", "image/png" if status == 200 else "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    return server, tries


def test_images_a_busy_label_studio_did_not_serve_are_asked_for_again(tmp_path, monkeypatch):
    monkeypatch.setattr(media_module, "DOWNLOAD_RETRY_DELAYS", (0.0, 0.0))
    server, tries = busy_server(fails_per_image=1)
    media = Media(Settings(label_studio_url=f"http://127.0.0.1:{server.server_address[1]}"), lambda: {})
    images = [LabeledImage(t, f"/data/upload/1/{t}.png", "a", "train") for t in range(1, 6)]
    try:
        got = media.records(images, "image", tmp_path)
    finally:
        media.close()
        server.shutdown()
    assert (len(got.records), got.skipped) == (5, [])
    assert sorted(tries.values()) == [2] * 5


def test_a_label_studio_that_serves_no_image_is_reported_unavailable_not_as_unlabeled(tmp_path, monkeypatch):
    monkeypatch.setattr(media_module, "DOWNLOAD_RETRY_DELAYS", (0.0,))
    server, tries = busy_server(fails_per_image=10)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    media = Media(Settings(label_studio_url=base), lambda: {})
    try:
        with pytest.raises(LabelStudioUnavailable, match=f"none of the 2 images could be downloaded .*HTTP 503.*{base}"):
            media.records([LabeledImage(t, f"/data/upload/1/{t}.png", "a", "train") for t in (1, 2)], "image", tmp_path)
    finally:
        media.close()
        server.shutdown()
    assert sorted(tries.values()) == [2, 2]
