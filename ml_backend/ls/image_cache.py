"""Downloaded images on disk, content-addressed, with what is needed to ask "has it changed?".

Layout under the cache folder (MODEL_DIR/cache)::

    objects/<sha256 of the bytes>     the image file; identical images are stored once
    urls/<sha1 of the URL>.json       {"object": sha256, "etag": ..., "last_modified": ...}

A second analysis asks the server only whether each image changed (If-None-Match /
If-Modified-Since): Label Studio's local files, S3 and most web servers then answer 304 with no
body. Label Studio's local files read from disk (LOCAL_FILES_DOCUMENT_ROOT) are checked by their
size and modification time instead (``file``). Images are never read from the cache without that
check, so an image that changed is fetched again and one that disappeared is reported, never
served stale. Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import NamedTuple

VALIDATOR_HEADERS = {"etag": "If-None-Match", "last_modified": "If-Modified-Since"}
_ANSWER_HEADERS = {"etag": "etag", "last_modified": "last-modified"}
VALIDATORS = (*VALIDATOR_HEADERS, "file")  # "file": "<size>:<mtime_ns>" of a file read from disk


class CachedImage(NamedTuple):
    path: Path
    validators: dict  # {"etag": ..., "last_modified": ...}, those the server sent, or {"file": ...}


class ImageCache:
    def __init__(self, folder: str | os.PathLike) -> None:
        self.objects = Path(folder) / "objects"
        self.urls = Path(folder) / "urls"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.urls.mkdir(parents=True, exist_ok=True)

    def lookup(self, key: str) -> CachedImage | None:
        """The cached copy of ``key`` (a URL), or None when there is none (or its file is gone)."""
        try:
            entry = json.loads(self._entry(key).read_text(encoding="utf-8"))
            path = self.objects / entry["object"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not path.exists():
            return None
        return CachedImage(path, {k: entry[k] for k in VALIDATORS if entry.get(k)})

    def keep(self, data: bytes) -> Path:
        """The file holding ``data`` (written unless those bytes are already kept)."""
        path = self.objects / hashlib.sha256(data).hexdigest()
        if not path.exists():
            _write_atomic(path, data)
        return path

    def store(self, key: str, data: bytes, validators: dict[str, str]) -> Path:
        """Keep ``data``, fetched from ``key``, and remember it for ``key`` with the ``validators``
        that tell later whether it changed (:func:`answer_validators`, or ``{"file": ...}``);
        returns its file."""
        path = self.keep(data)
        _write_atomic(self._entry(key), json.dumps({"object": path.name, **validators}).encode())
        return path

    def forget(self, key: str) -> None:
        """The URL no longer serves an image; its bytes stay while other URLs may share them."""
        self._entry(key).unlink(missing_ok=True)

    def _entry(self, key: str) -> Path:
        return self.urls / f"{hashlib.sha1(key.encode()).hexdigest()}.json"


def answer_validators(headers) -> dict[str, str]:
    """The validators an HTTP answer's ``headers`` (a mapping) carry: its ETag and Last-Modified."""
    return {k: headers[h] for k, h in _ANSWER_HEADERS.items() if headers.get(h)}


def conditional_headers(cached: CachedImage | None) -> dict[str, str]:
    """The request headers that ask whether ``cached`` is still current (empty: ask for the image)."""
    if cached is None:
        return {}
    return {VALIDATOR_HEADERS[k]: v for k, v in cached.validators.items()}


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
