"""Image downloads from wherever task data points, and where the token may go.

Sources: Label Studio's own media (/data/upload/, /data/local-files/), cloud URIs (s3://, gs://,
azure-blob://; presigned or proxied by Label Studio at /tasks/<id>/resolve/?fileuri=<base64>),
plain http(s) URLs and base64 data URIs. With LOCAL_FILES_DOCUMENT_ROOT set, Label Studio's local
files are read from that folder instead, as Label Studio itself resolves them. The token is only
ever sent to Label Studio's media routes (MEDIA_ROUTES, under LABEL_STUDIO_URL's sub-path) on its
own origin (scheme, host and port of LABEL_STUDIO_URL): never to its API through an image URL, never
to another host named in task data or in a redirect. Other hosts are reached only as netpolicy
allows (public addresses, or what DOWNLOAD_ALLOW names), at the address it checked. Redirects are
followed by hand, one hop at a time, so that both rules hold for every hop. DOWNLOAD_TIMEOUT bounds
a whole download.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import logging
import mimetypes
import os
import posixpath
import re
import ssl
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx

from ..config import Settings
from ..dataset import Record, SkippedItem
from ..errors import DeConfusionError, LabelStudioError, LabelStudioUnavailable
from .image_cache import ImageCache, answer_validators, conditional_headers
from .netpolicy import Address, AddressRefused, DownloadPolicy
from .schema import ClassSpec

log = logging.getLogger(__name__)

WORKERS = 8  # concurrent downloads
# Pauses before the images a busy or restarting server did not serve are asked for again (two more
# passes over those only): a short outage must not drop tasks from the analysis.
DOWNLOAD_RETRY_DELAYS = (2.0, 8.0)
MAX_REDIRECTS = 5
# Label Studio 1.23's routes that serve task media (data_import/urls.py, io_storages/urls.py): the
# only paths downloads send the token to. /presign/ is the older name of /resolve/.
MEDIA_ROUTES = re.compile(r"/(data/upload/.+|data/local-files/|storage-data/uploaded/|"
                          r"(tasks|projects)/\d+/(resolve|presign)/)")
UPLOADS = re.compile(r"/data/upload/.+")  # files uploaded to Label Studio
LOCAL_FILES = "/data/local-files/"  # ?d=<path under Label Studio's LOCAL_FILES_DOCUMENT_ROOT>
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*",
                b"\x00\x00\x01\x00")


class ImageFetchError(DeConfusionError):
    """One image could not be fetched; the message names the cause (becomes a SkippedItem reason).
    ``status``: the HTTP status that refused it, if one did. ``transient``: the server was down
    or busy (a connection error or connect timeout, HTTP 429 or 5xx), so asking again may succeed."""

    def __init__(self, message: str, status: int | None = None, *, transient: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.transient = transient or status == 429 or (status is not None and status >= 500)


GONE = (404, 410)  # the URL no longer serves an image: its cached copy is dropped


class Fetched(NamedTuple):
    data: bytes | None  # None: the server said the cached copy is current (HTTP 304)
    headers: Mapping[str, str]


class Downloads(NamedTuple):
    """What :meth:`Media.records` got: records, skipped items, and how many images came over the
    network (``fetched``) or were confirmed unchanged without their bytes (``unchanged``);
    ``labels_as_of`` see ``LabelStudioClient.labeled_records``."""
    records: list[Record]
    skipped: list[SkippedItem]
    fetched: int
    unchanged: int
    labels_as_of: str = ""


class LabeledImage(NamedTuple):
    """A labeled task's image to download: ``url`` as the task data holds it (may be missing)."""
    task_id: int
    url: Any
    label: str
    split: str
    annotations: tuple = ()  # (annotation id, annotator id or None, class), oldest first


class Media:
    """Image downloads for one Label Studio. Thread-safe; close it when done.

    settings : Settings, reads label_studio_url, download_timeout, max_image_bytes,
        download_allow (a bad DOWNLOAD_ALLOW entry raises ValueError here) and local_files_root.
    auth_headers : returns the Authorization header for Label Studio's own origin
        (Transport.auth_headers); asked only for its media routes.
    """

    def __init__(self, settings: Settings, auth_headers: Callable[[], Mapping[str, str]]) -> None:
        self.settings = settings
        self.base = settings.label_studio_url.rstrip("/")
        self.origin = _origin(self.base)
        self._policy = DownloadPolicy.parse(settings.download_allow)
        self._prefix = urlsplit(self.base).path.rstrip("/")  # Label Studio served under a sub-path
        self._auth_headers = auth_headers
        self._local_root = Path(os.path.abspath(settings.local_files_root)) if settings.local_files_root else None
        self._media = _download_client()  # Label Studio's own origin
        # Other hosts, asked at the address netpolicy checked. No keep-alive: the pool keys
        # connections by that address, so a TLS connection verified for one name could carry a
        # request for another name on the same address. No proxy: through an HTTP proxy, httpcore
        # checks the certificate against the address instead of the name.
        self._pinned = _download_client(trust_env=False, limits=httpx.Limits(max_keepalive_connections=0))

    def records(self, wanted: Sequence[LabeledImage], image_key: str, cache_dir: str | os.PathLike,
                progress: Callable[[int, int], None] | None = None) -> Downloads:
        """One Record per image, WORKERS at a time, through the image cache in ``cache_dir``
        (:mod:`.image_cache`: an image seen before is only asked about, not downloaded again);
        ``source`` is the cached file, order is kept. Images that cannot be fetched (or are gone
        since the last analysis) become SkippedItems naming the task, the URL and the cause, after
        those a busy server did not serve were asked for again (DOWNLOAD_RETRY_DELAYS); only when
        no image at all was served for that reason does it raise LabelStudioUnavailable.
        ``image_key`` names the task-data field in the message for a
        missing URL. progress : called as progress(done, total)."""
        cache = ImageCache(cache_dir)

        def fetch(item: LabeledImage) -> tuple[Record | SkippedItem, bool, bool]:
            """(record or skip, fetched, worth another try)"""
            name = f"task-{item.task_id}"
            if not isinstance(item.url, str) or not item.url.strip():
                reason = f"task {item.task_id}: no image URL in task data field {image_key!r}"
                return SkippedItem(name, reason), False, False
            try:
                path, fetched = self.cached_image(item.url, task_id=item.task_id, cache=cache)
            except (ImageFetchError, LabelStudioError, OSError) as exc:
                reason = f"task {item.task_id}: image {item.url!r} could not be downloaded: {exc}"
                return SkippedItem(name, reason), False, getattr(exc, "transient", False)
            return Record(item=name, source=str(path), label=item.label, split=item.split, task_id=item.task_id,
                          annotations=item.annotations), fetched, False

        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            results = []
            for done, result in enumerate(pool.map(fetch, wanted), 1):
                results.append(result)
                if progress:
                    progress(done, len(wanted))
            for delay in DOWNLOAD_RETRY_DELAYS:
                again = [i for i, (_, _, transient) in enumerate(results) if transient]
                if not again:
                    break
                log.warning("%d of %d images were not served (%s); asking again in %.0f s", len(again), len(wanted),
                            results[again[0]][0].reason, delay)
                time.sleep(delay)
                for i, result in zip(again, pool.map(fetch, [wanted[i] for i in again])):
                    results[i] = result
        records = [r for r, _, _ in results if isinstance(r, Record)]
        skipped = [r for r, _, _ in results if isinstance(r, SkippedItem)]
        if skipped and not records and all(transient for _, _, transient in results):
            raise LabelStudioUnavailable(
                f"none of the {len(wanted)} images could be downloaded ({skipped[0].reason}): is Label Studio at "
                f"{self.base} (or the storage behind it) up? Start the analysis again when it is")
        fetched = sum(came for _, came, _ in results)
        return Downloads(records, skipped, fetched, len(records) - fetched)

    def cached_image(self, url: str, *, task_id: int, cache: ImageCache) -> tuple[Path, bool]:
        """The image at ``url`` as a file in ``cache``, and whether its bytes were fetched (False:
        the server confirmed the cached copy). Raises ImageFetchError; one for a URL that is gone
        (HTTP 404 / 410) also drops its cache entry."""
        if url.strip().startswith("data:"):  # the bytes are in the task itself: nothing to look up later
            return cache.keep(_data_uri(url.strip(), self.settings.max_image_bytes)), False
        key = self._cache_key(url)
        local = self._local_file(url)
        if local is not None:
            return self._cached_local_file(local, key, cache)
        cached = cache.lookup(key)
        if cached is not None and self._is_upload(key):
            return cached.path, False
        try:
            answer = self._download(url, task_id, conditional_headers(cached))
        except ImageFetchError as exc:
            if exc.status in GONE:
                cache.forget(key)
            elif exc.transient and cached is not None:  # the server is busy: the copy it served before stands in
                return cached.path, False
            raise
        if answer.data is None and cached is not None:
            return cached.path, False
        if answer.data is None:
            raise ImageFetchError("HTTP 304 to a request that was not conditional", 304)
        return cache.store(key, answer.data, answer_validators(answer.headers)), True

    def _cached_local_file(self, path: Path, key: str, cache: ImageCache) -> tuple[Path, bool]:
        """:meth:`cached_image` of a local file read from disk: its size and modification time
        say whether the cached copy is current, which costs a stat instead of a request that Label
        Studio answers at 80-130 a second."""
        try:
            stat = path.stat()
        except FileNotFoundError:
            cache.forget(key)
            raise ImageFetchError(f"{path} does not exist (LOCAL_FILES_DOCUMENT_ROOT)", 404) from None
        stamp = {"file": f"{stat.st_size}:{stat.st_mtime_ns}"}
        cached = cache.lookup(key)
        if cached is not None and cached.validators == stamp:
            return cached.path, False
        return cache.store(key, self._read_local_file(path), stamp), True

    def _local_file(self, url: str) -> Path | None:
        """The file a /data/local-files/?d=... URL on Label Studio's origin names, when
        LOCAL_FILES_DOCUMENT_ROOT is set (None: fetch it over HTTP). Resolved as Label Studio
        does (normalised, joined to the root, symbolic links followed only when read); a path that
        leaves the root raises."""
        if self._local_root is None or _is_storage_uri(url):
            return None
        absolute = urlsplit(self._absolute(url.strip()))
        if _origin(absolute.geturl()) != self.origin or absolute.path != self._prefix + LOCAL_FILES:
            return None
        name = parse_qs(absolute.query).get("d", [""])[0]
        path = Path(os.path.abspath(self._local_root / posixpath.normpath(name).lstrip("/")))
        if not name or not path.is_relative_to(self._local_root):
            raise ImageFetchError(f"local file {name!r} is not under LOCAL_FILES_DOCUMENT_ROOT ({self._local_root})")
        return path

    def _read_local_file(self, path: Path) -> bytes:
        limit = self.settings.max_image_bytes
        try:
            with open(path, "rb") as fh:
                data = fh.read(limit + 1)  # one byte past the limit tells a larger file, without a second stat
        except OSError as exc:
            raise ImageFetchError(f"{path} could not be read ({exc.strerror or exc})") from None
        if len(data) > limit:
            raise ImageFetchError(f"{path} is larger than MAX_IMAGE_BYTES={limit}")
        kind = mimetypes.guess_type(path.name)[0] or ""
        if not data or not (kind.startswith("image/") or _looks_like_image(data)):
            raise ImageFetchError(f"{path} is not an image (empty, or unknown file type)")
        return data

    def _is_upload(self, url: str) -> bool:
        """A file uploaded to this Label Studio: named uniquely and never rewritten, so a cached
        copy needs no question (Label Studio serves uploads without ETag or Last-Modified)."""
        return _origin(url) == self.origin and UPLOADS.fullmatch(urlsplit(url).path[len(self._prefix):]) is not None

    def _cache_key(self, url: str) -> str:
        return url if _is_storage_uri(url) else self._absolute(url)

    def fetch_image(self, task: dict, spec: ClassSpec) -> bytes:
        """Bytes of a task's image (for /predict on tasks no analysis has seen); raises ImageFetchError."""
        url = (task.get("data") or {}).get(spec.image_key)
        if not isinstance(url, str) or not url:
            raise ImageFetchError(f"task {task.get('id')}: no image URL in task data field {spec.image_key!r}")
        return self.download(url, task_id=int(task.get("id", 0)))

    def download(self, url: str, *, task_id: int) -> bytes:
        """Image bytes from Label Studio's media, a cloud URI (through Label Studio) or an http(s)
        URL the download policy allows. At most settings.max_image_bytes, image content only, and
        within settings.download_timeout seconds all told (redirects and slow bodies included).
        Raises ImageFetchError, or a LabelStudioError when the token for Label Studio's media
        cannot be had (refused, or its refresh failed)."""
        url = url.strip()
        if url.startswith("data:"):
            return _data_uri(url, self.settings.max_image_bytes)
        local = self._local_file(url)
        if local is not None:
            return self._read_local_file(local)
        data = self._download(url, task_id, {}).data
        assert data is not None  # an unconditional request gets the bytes or raises
        return data

    def _download(self, url: str, task_id: int, conditional: Mapping[str, str]) -> Fetched:
        """:meth:`download` of a network URL, with ``conditional`` request headers (If-None-Match,
        If-Modified-Since): a Fetched without data when the server answers 304."""
        url = url.strip()
        if _is_storage_uri(url):  # presigned or proxied by Label Studio, as its own frontend does
            fileuri = base64.urlsafe_b64encode(url.encode()).decode()
            url = f"/tasks/{int(task_id)}/resolve/?fileuri={fileuri}"
        deadline = time.monotonic() + self.settings.download_timeout
        return self._by_deadline(deadline, lambda: self._fetch(self._absolute(url), deadline, conditional))

    def _by_deadline(self, deadline: float, fetch: Callable[[], Fetched]) -> Fetched:
        """fetch() run in a daemon thread, waited for until ``deadline``. httpx's timeouts bound each
        network operation, not their sum (a server sending a byte just before each read timeout
        never trips one) and name resolution has none, so only this is a hard bound for the caller.
        A fetch left behind stops at its next network read (see _read_image)."""
        result: Future[Fetched] = Future()

        def run() -> None:
            try:
                result.set_result(fetch())
            except BaseException as exc:  # handed to the caller
                result.set_exception(exc)

        threading.Thread(target=run, name="image-download", daemon=True).start()
        try:
            return result.result(timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise ImageFetchError(self._timed_out()) from None

    def _fetch(self, url: str, deadline: float, conditional: Mapping[str, str]) -> Fetched:
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ImageFetchError(self._timed_out())
            try:
                with contextlib.closing(self._get(current, remaining, conditional)) as resp:
                    if resp.is_redirect and "location" in resp.headers:
                        current = urljoin(current, resp.headers["location"])
                        continue
                    if resp.status_code >= 400:
                        raise ImageFetchError(self._http_failure(resp.status_code, current), resp.status_code)
                    if resp.status_code == 304:
                        return Fetched(None, resp.headers)
                    return Fetched(self._read_image(resp, deadline), resp.headers)
            except httpx.TimeoutException as exc:  # no connection yet is worth another try, a slow answer not
                raise ImageFetchError(self._timed_out(), transient=isinstance(exc, httpx.ConnectTimeout)) from None
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                dropped = isinstance(exc, (httpx.NetworkError, httpx.RemoteProtocolError))  # worth another try
                raise ImageFetchError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
                                      transient=dropped) from None
        raise ImageFetchError(f"more than {MAX_REDIRECTS} redirects")

    def _get(self, url: str, timeout: float, conditional: Mapping[str, str]) -> httpx.Response:
        """The streamed answer to GET ``url`` (the caller closes it). Label Studio's own origin is
        asked directly, with the token on its media routes only; any other host only at an address
        the download policy checked, with the name in the Host header and, for https, in SNI and
        the certificate check."""
        target = httpx.URL(url)
        if target.scheme not in ("http", "https") or not target.host:
            raise ImageFetchError(f"not an http(s) URL with a host: {url!r}")
        scheme, host, port = _origin(target)
        if (scheme, host, port) == self.origin:
            headers = {**conditional, **(self._auth_headers() if self._is_media_route(target) else {})}
            return self._media.send(self._media.build_request("GET", target, headers=headers, timeout=timeout),
                                    stream=True)
        try:
            addresses = self._policy.addresses(host, port)
        except AddressRefused as exc:
            raise ImageFetchError(str(exc)) from None
        except OSError as exc:
            raise ImageFetchError(f"could not resolve {host} ({exc})") from None

        def send(address: Address) -> httpx.Response:
            return self._pinned.send(self._pinned.build_request(
                "GET", target.copy_with(host=str(address)),
                headers={**conditional, "Host": target.netloc.decode("ascii")},
                extensions={"sni_hostname": host} if scheme == "https" else None, timeout=timeout), stream=True)

        for address in addresses[:-1]:
            with contextlib.suppress(httpx.ConnectError):  # else the next address, as browsers do
                return send(address)
        return send(addresses[-1])

    def _is_media_route(self, url: httpx.URL) -> bool:
        """Whether ``url`` (on Label Studio's origin) is one of its media routes, judged on the path
        as Label Studio, or a proxy before it, routes it: percent-decoded (httpx's URL.path), and
        no dot segments (a proxy may resolve /data/upload/%2e%2e/ to /)."""
        path = url.path
        if not path.startswith(self._prefix + "/") or {".", ".."} & set(path.split("/")):
            return False
        return MEDIA_ROUTES.fullmatch(path[len(self._prefix):]) is not None

    def _absolute(self, url: str) -> str:
        """Absolute URL; a relative one is Label Studio media (under its sub-path, if any)."""
        if urlsplit(url).scheme:
            return url
        path = url if url.startswith("/") else "/" + url
        if self._prefix and not path.startswith(self._prefix + "/"):
            path = self._prefix + path
        base = urlsplit(self.base)
        return f"{base.scheme}://{base.netloc}{path}"

    def _timed_out(self) -> str:
        return f"timed out after {self.settings.download_timeout:g} s (DOWNLOAD_TIMEOUT)"

    def _http_failure(self, status: int, url: str) -> str:
        target = httpx.URL(url)
        own = _origin(target) == self.origin
        if status in (401, 403) and own and self._is_media_route(target):
            return f"HTTP {status}: Label Studio refused the token for this file; check LABEL_STUDIO_API_KEY"
        if status in (401, 403) and own:
            return (f"HTTP {status}: {target.path} is not one of Label Studio's media routes (/data/upload/, "
                    "/data/local-files/, /tasks/<id>/resolve/, ...), so it gets no token")
        if status in (401, 403):
            return (f"HTTP {status} from {_origin_text(target)}, which gets no Label Studio token; if that is "
                    "Label Studio under another address, set LABEL_STUDIO_URL to it")
        if status == 404 and own and "/resolve/" in target.path:
            return ("HTTP 404: Label Studio could not resolve this storage URI; connect the cloud storage holding it "
                    "to the project (Project Settings → Cloud Storage)")
        return f"HTTP {status}"

    def _read_image(self, resp: httpx.Response, deadline: float) -> bytes:
        limit = self.settings.max_image_bytes
        kind = resp.headers.get("content-type", "").split(";")[0].strip().lower()
        declared = resp.headers.get("content-length", "")
        if kind and not kind.startswith("image/") and kind not in ("application/octet-stream", "binary/octet-stream"):
            raise ImageFetchError(f"not an image (Content-Type {kind})")
        if declared.isdigit() and int(declared) > limit:
            raise ImageFetchError(f"{int(declared)} bytes is larger than MAX_IMAGE_BYTES={limit}")
        chunks, size = [], 0
        for chunk in resp.iter_bytes():  # no chunk size: one chunk per network read, so a trickle is seen
            if time.monotonic() > deadline:
                raise ImageFetchError(self._timed_out())
            size += len(chunk)
            if size > limit:
                raise ImageFetchError(f"larger than MAX_IMAGE_BYTES={limit}")
            chunks.append(chunk)
        data = b"".join(chunks)
        if not data:
            raise ImageFetchError("empty response")
        if not kind.startswith("image/") and not _looks_like_image(data):
            raise ImageFetchError(f"not an image (Content-Type {kind or 'missing'}, unknown file signature)")
        return data

    def close(self) -> None:
        self._media.close()
        self._pinned.close()


def _origin(url: httpx.URL | str) -> tuple[str, str, int | None]:
    """Scheme, host and port, parsed as httpx parses the URL it connects to (so that no URL can
    look like Label Studio's to us and lead httpx elsewhere)."""
    try:
        url = httpx.URL(url)
    except httpx.InvalidURL:
        return "", "", None  # a malformed URL is nobody's origin
    return url.scheme, url.raw_host.decode("ascii").lower(), url.port or {"http": 80, "https": 443}.get(url.scheme)


def _origin_text(url: httpx.URL | str) -> str:
    scheme, host, port = _origin(url)
    return f"{scheme}://{host}:{port}"


def _download_client(**options: Any) -> httpx.Client:
    """An httpx client for image downloads. Keeps no cookies: they ignore ports, so one Label
    Studio sets on its host would be sent to every other server on that host an image URL names."""
    return httpx.Client(follow_redirects=False, verify=_tls(), **options,
                        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])))


@functools.cache
def _tls() -> ssl.SSLContext:
    """httpx's default TLS settings (certifi, or SSL_CERT_FILE / SSL_CERT_DIR), built once: that
    takes ~20 ms and a client is made per job and per /predict image."""
    return httpx.create_ssl_context()


def _is_storage_uri(url: str) -> bool:
    """A cloud-storage URI (s3://, gs://, azure-blob://, ...): anything with a scheme Label
    Studio, not us, must resolve. Never read as a local path."""
    scheme = urlsplit(url).scheme.lower()
    return bool(scheme) and scheme not in ("http", "https", "data") and "://" in url


def _data_uri(url: str, limit: int) -> bytes:
    head, _, payload = url.partition(",")
    if not head.startswith("data:image/") or not head.endswith(";base64"):
        raise ImageFetchError(f"data URI is not a base64 image ({head[:40]!r})")
    if len(payload) * 3 // 4 > limit:
        raise ImageFetchError(f"larger than MAX_IMAGE_BYTES={limit}")
    try:
        return base64.b64decode(payload, validate=False)
    except ValueError as exc:
        raise ImageFetchError(f"data URI is not valid base64 ({exc})") from None


def _looks_like_image(data: bytes) -> bool:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return True
    return data.startswith(_IMAGE_MAGIC)
