"""Everything De-Confusion asks of Label Studio. The only module that speaks to it.

Transport and authentication come from label-studio-sdk 2.x's ``LabelStudio`` client: it tells
a legacy token (``Authorization: Token ...``) from a personal access token (a JWT refresh token,
exchanged at /api/token/refresh/ for short-lived ``Bearer`` access tokens and refreshed when they
expire). Every REST call goes through that client with our own retries: connection errors and
5xx are retried with backoff (RETRY_DELAYS), then LabelStudioUnavailable says Label Studio did not
answer; 401/403 raise LabelStudioTokenRejected at once, naming LABEL_STUDIO_API_KEY; other 4xx
raise LabelStudioRejected.

Images are downloaded from wherever task data points: Label Studio's own media (/data/upload/,
/data/local-files/), cloud URIs (s3://, gs://, azure-blob://; presigned or proxied by Label Studio
at /tasks/<id>/resolve/?fileuri=<base64>) and plain http(s) URLs. The token is only ever sent to
Label Studio's media routes (MEDIA_ROUTES, under LABEL_STUDIO_URL's sub-path) on its own origin
(scheme, host and port of LABEL_STUDIO_URL): never to its API through an image URL, never to another
host named in task data or in a redirect. Other hosts are reached only as netpolicy allows (public
addresses, or what DOWNLOAD_ALLOW names), at the address it checked. Redirects are followed by hand,
one hop at a time, so that both rules hold for every hop. DOWNLOAD_TIMEOUT bounds a whole download.

Our task fields all start with ``dc_``; Label Studio replaces ``data`` wholesale on PATCH, so
every write sends the user's keys back untouched.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import logging
import os
import re
import ssl
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from http.cookiejar import CookieJar, DefaultCookiePolicy
from json import JSONDecodeError
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence
from urllib.parse import urljoin, urlsplit

import httpx
from label_studio_sdk.client import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from ..config import Settings
from ..dataset import Record, SkippedItem
from ..errors import (DeConfusionError, LabelStudioError, LabelStudioRejected, LabelStudioTokenRejected,
                      LabelStudioUnavailable)
from .netpolicy import Address, AddressRefused, DownloadPolicy
from .schema import ClassSpec

log = logging.getLogger(__name__)

RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0)  # 5 tries over ~15 s before Label Studio counts as down
REQUEST_TIMEOUT = 120.0  # seconds per REST call (imports and big pages are slow on SQLite)
PAGE_SIZE = 1000  # tasks per /api/tasks page: ~3 ms per task on Label Studio's side
IMPORT_BATCH = 1000  # tasks per import request
# Label Studio 1.23 recounts every task of the project after each prediction import request, so
# predictions go in few, large requests: 20,000 on a 20,000-task project took 127 s in requests of
# 1,000 and 14 s in one (scripts/bench_publish.py); 50,000 predictions are about 10 MB of JSON.
PREDICTION_BATCH = 50_000
IMPORT_PARAMS = {"commit_to_project": "true", "return_task_ids": "true"}
WORKERS = 8  # concurrent downloads and task PATCHes
MAX_REDIRECTS = 5
# Label Studio 1.23's routes that serve task media (data_import/urls.py, io_storages/urls.py): the
# only paths downloads send the token to. /presign/ is the older name of /resolve/.
MEDIA_ROUTES = re.compile(r"/(data/upload/.+|data/local-files/|storage-data/uploaded/|"
                          r"(tasks|projects)/\d+/(resolve|presign)/)")
OWN_PREFIX = "dc_"  # our task-data keys
OUR_VERSIONS = "deconfusion"  # our predictions' model_version prefix
SPLITS = ("train", "val")
_SAFE_METHODS = ("GET", "HEAD", "PUT", "PATCH", "DELETE")  # retried on any transport error or 5xx
_UNPROCESSED = (502, 503, 504)  # gateway errors: a POST did not run, so it is retried too
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*",
                b"\x00\x00\x01\x00")


class ImageFetchError(DeConfusionError):
    """One image could not be fetched; the message names the cause (becomes a SkippedItem reason)."""


class LabelStudioClient:
    """Label Studio's REST API as De-Confusion uses it. Thread-safe; build one per job or request.

    settings : Settings, reads label_studio_url, label_studio_api_key, download_timeout,
        max_image_bytes and download_allow (a bad DOWNLOAD_ALLOW entry raises ValueError here).
    retry_delays : seconds slept between tries of a failing call (connection error or 5xx).
    """

    def __init__(self, settings: Settings, *, retry_delays: Sequence[float] = RETRY_DELAYS) -> None:
        self.settings = settings
        self.base = settings.label_studio_url.rstrip("/")
        self.origin = _origin(self.base)
        self._policy = DownloadPolicy.parse(settings.download_allow)
        self.retry_delays = tuple(retry_delays)
        self._prefix = urlsplit(self.base).path.rstrip("/")  # Label Studio served under a sub-path
        self._sdk_lock = threading.Lock()
        self._sdk_client: LabelStudio | None = None
        self._media = _download_client()  # Label Studio's own origin
        # Other hosts, asked at the address netpolicy checked. No keep-alive: the pool keys
        # connections by that address, so a TLS connection verified for one name could carry a
        # request for another name on the same address. No proxy: through an HTTP proxy, httpcore
        # checks the certificate against the address instead of the name.
        self._pinned = _download_client(trust_env=False, limits=httpx.Limits(max_keepalive_connections=0))

    # --- transport ----------------------------------------------------------------------
    @property
    def _sdk(self) -> LabelStudio:
        """The SDK client, made on first use (it checks a JWT's expiry when built)."""
        with self._sdk_lock:
            if self._sdk_client is None:
                if not self.settings.label_studio_api_key.strip():
                    raise LabelStudioTokenRejected(
                        "LABEL_STUDIO_API_KEY is empty: set it to a personal access token or legacy token of a "
                        "Label Studio user (Label Studio → Account & Settings)")
                try:
                    # The trailing slash keeps a sub-path when the SDK urljoins /api/token/refresh/.
                    self._sdk_client = LabelStudio(
                        base_url=self.base + "/", api_key=self.settings.label_studio_api_key.strip(),
                        timeout=REQUEST_TIMEOUT, max_retries=0, follow_redirects=False)
                except ApiError as exc:  # an expired or malformed JWT
                    raise LabelStudioTokenRejected(
                        f"Label Studio at {self.base} rejected the token ({_detail(exc.body)}): check "
                        "LABEL_STUDIO_API_KEY (create a new personal access token in Account & Settings)") from None
            return self._sdk_client

    def _auth_headers(self) -> dict[str, str]:
        """Authorization for Label Studio's own origin; refreshes a PAT's access token when due."""
        wrapper = self._sdk._client_wrapper  # the SDK's token handling; private, kept inside ls/
        try:
            return {"Authorization": wrapper.get_headers()["Authorization"]}
        except ApiError as exc:
            if exc.status_code in (401, 403):
                raise self._rejected(exc.status_code, "POST /api/token/refresh/", _detail(exc.body)) from None
            raise ImageFetchError(f"could not refresh the access token (HTTP {exc.status_code})") from None
        except (httpx.HTTPError, ValueError) as exc:
            raise ImageFetchError(f"could not refresh the access token ({type(exc).__name__}: {exc})") from None

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None, json: Any = None,
                files: Mapping[str, Any] | None = None, timeout: float = REQUEST_TIMEOUT) -> Any:
        """JSON of one Label Studio API call (None for an empty answer).

        Retried on connection errors and 5xx (a POST only when it cannot have run); then
        LabelStudioUnavailable. 401/403 raise LabelStudioTokenRejected; other 4xx and redirects
        raise LabelStudioRejected with Label Studio's message.
        """
        method = method.upper()
        what = f"{method} {path}"
        last = ""
        for attempt in range(len(self.retry_delays) + 1):
            try:
                resp = self._sdk._client_wrapper.httpx_client.request(
                    path, method=method, params=dict(params) if params else None, json=json,
                    files=dict(files) if files else None,
                    request_options={"max_retries": 0, "timeout_in_seconds": int(timeout)})
            except ApiError as exc:  # raised while refreshing a PAT's access token
                if exc.status_code in (401, 403):
                    raise self._rejected(exc.status_code, what, _detail(exc.body)) from None
                last = f"token refresh answered HTTP {exc.status_code}"
                retry = exc.status_code is None or exc.status_code >= 500
            except JSONDecodeError as exc:  # a token refresh answered with something other than JSON
                last = f"token refresh failed ({exc})"
                retry = True
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                retry = method in _SAFE_METHODS or isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
            else:
                status = resp.status_code
                if status in (401, 403):
                    raise self._rejected(status, what, _detail(_json_or_text(resp)))
                if 300 <= status < 400:
                    raise LabelStudioRejected(
                        f"Label Studio at {self.base} redirected {what} to {resp.headers.get('location')!r}: set "
                        "LABEL_STUDIO_URL to the address Label Studio is served at (http or https, sub-path)", status)
                if status < 300:
                    return self._json(resp, what)
                if status < 500:
                    raise LabelStudioRejected(
                        f"Label Studio refused {what} (HTTP {status}): {_detail(_json_or_text(resp))}", status)
                last = f"HTTP {status}: {_detail(_json_or_text(resp))}"
                retry = method in _SAFE_METHODS or status in _UNPROCESSED
            if not retry or attempt == len(self.retry_delays):
                break
            delay = self.retry_delays[attempt]
            log.warning("Label Studio %s: %s; retrying in %.1f s", what, last, delay)
            time.sleep(delay)
        raise LabelStudioUnavailable(
            f"Label Studio at {self.base} did not answer {what} after {attempt + 1} tries ({last}); is it running "
            "and is LABEL_STUDIO_URL right?")

    def _json(self, resp: httpx.Response, what: str) -> Any:
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            kind = resp.headers.get("content-type", "no Content-Type")
            raise LabelStudioUnavailable(
                f"{self.base} answered {what} with {kind}, not JSON: is LABEL_STUDIO_URL the address of Label "
                "Studio?") from None

    def close(self) -> None:
        """Close the HTTP connections; a `with LabelStudioClient(...)` block does it on exit."""
        self._media.close()
        self._pinned.close()
        with self._sdk_lock:
            if self._sdk_client is not None:
                self._sdk_client._client_wrapper.httpx_client.httpx_client.close()

    def __enter__(self) -> "LabelStudioClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _rejected(self, status: int, what: str, detail: str) -> LabelStudioTokenRejected:
        if status == 401:
            return LabelStudioTokenRejected(
                f"Label Studio at {self.base} rejected the token (HTTP 401 on {what}: {detail}): check "
                "LABEL_STUDIO_API_KEY (a personal access token or, if the organization allows them, a legacy token)")
        return LabelStudioTokenRejected(
            f"Label Studio at {self.base} rejected the token for {what} (HTTP 403: {detail}): check that "
            "LABEL_STUDIO_API_KEY belongs to a user who may read and change this project")

    # --- projects ---------------------------------------------------------------------------
    def get_project(self, project_id: int) -> dict:
        return self.request("GET", f"/api/projects/{int(project_id)}/")

    def find_project(self, project_id: int) -> dict | None:
        """The project, or None when Label Studio has none with this id."""
        try:
            return self.get_project(project_id)
        except LabelStudioRejected as exc:
            if exc.status == 404:
                return None
            raise

    def project_exists(self, project_id: int) -> bool:
        return self.find_project(project_id) is not None

    # --- annotations ------------------------------------------------------------------------
    def find_annotations(self, annotation_ids: Iterable[int]) -> dict[int, dict | None]:
        """Each annotation as Label Studio holds it now (``task``, ``project``, ``result``,
        ``was_cancelled``, ...), or None for an id it does not have."""
        def find(annotation_id: int) -> dict | None:
            try:
                return self.request("GET", f"/api/annotations/{int(annotation_id)}/")
            except LabelStudioRejected as exc:
                if exc.status == 404:
                    return None
                raise
        ids = list(dict.fromkeys(int(a) for a in annotation_ids))
        return dict(zip(ids, self._parallel(find, ids)))

    def create_project(self, title: str, label_config: str) -> int:
        return int(self.request("POST", "/api/projects/", json={"title": title, "label_config": label_config})["id"])

    def delete_project(self, project_id: int) -> None:
        """Only for the backend's own companion projects (the overview)."""
        self.request("DELETE", f"/api/projects/{int(project_id)}/")

    # --- tasks --------------------------------------------------------------------------------
    def iter_tasks(self, project_id: int, *, page_size: int = PAGE_SIZE) -> Iterator[dict]:
        """Every task of the project as Label Studio lists it (id, data, meta, annotations,
        predictions, ...), in id order, page by page. ``data`` is raw: storage URIs unresolved."""
        yield from self.paged_tasks({"project": int(project_id), "fields": "all"}, page_size=page_size)

    def export_tasks(self, project_id: int, *, labeled_only: bool = False) -> list[dict]:
        """Every task (``labeled_only``: every task with an annotation, cancelled ones included)
        as Label Studio's JSON export gives them: id, raw data, meta, annotations in full,
        predictions as ids only; sorted by id.

        One request, several times faster than paging the Data Manager list (Label Studio 1.23,
        SQLite, 3000 tasks: 5.6 s against 31.7 s with annotations, 9.4 s without), and it never
        asks a connected ML backend for predictions. Falls back to :meth:`iter_tasks` where the
        export endpoint is missing or refuses the request.
        """
        params = {"exportType": "JSON", "download_resources": "false",
                  "download_all_tasks": "false" if labeled_only else "true"}
        try:
            tasks = self.request("GET", f"/api/projects/{int(project_id)}/export", params=params, timeout=600)
        except LabelStudioRejected as exc:
            if exc.status == 404 and not self.project_exists(project_id):
                raise
            log.warning("Label Studio's export of project %s failed (%s); listing tasks page by page instead",
                        project_id, exc)
            tasks = None
        if not isinstance(tasks, list):
            return list(self.iter_tasks(project_id))
        return sorted(tasks, key=lambda task: int(task["id"]))

    def get_task(self, task_id: int) -> dict:
        """One task with raw data (storage URIs unresolved) and its annotations."""
        return self.request("GET", f"/api/tasks/{int(task_id)}/", params={"resolve_uri": "false"})

    def paged_tasks(self, params: Mapping[str, Any], *, page_size: int = PAGE_SIZE) -> Iterator[dict]:
        """Label Studio's task list (/api/tasks/) for ``params`` (project, view, fields), page by
        page, with raw data."""
        seen, page = 0, 1
        while True:
            resp = self.request("GET", "/api/tasks/", params={
                **params, "page": page, "page_size": page_size, "resolve_uri": "false"})
            tasks = resp.get("tasks", []) if isinstance(resp, dict) else []
            yield from tasks
            seen += len(tasks)
            if not tasks or len(tasks) < page_size or seen >= int(resp.get("total", 0)):
                return
            page += 1

    def import_tasks(self, project_id: int, tasks: list[dict]) -> list[int]:
        """Create tasks (``{"data": {...}, "annotations": [...], ...}`` each); returns their ids."""
        ids: list[int] = []
        for start in range(0, len(tasks), IMPORT_BATCH):
            resp = self.request("POST", f"/api/projects/{int(project_id)}/import",
                                json=tasks[start:start + IMPORT_BATCH], params=IMPORT_PARAMS, timeout=600)
            ids += self._imported_ids(project_id, resp)
        return ids

    def _imported_ids(self, project_id: int, resp: Any, timeout: float = 600) -> list[int]:
        """Task ids from an import answer; waits for Label Studio Enterprise's background imports."""
        if isinstance(resp, dict) and "import" in resp and "task_count" not in resp:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                resp = self.request("GET", f"/api/projects/{int(project_id)}/imports/{int(resp['import'])}/")
                if resp.get("status") in ("completed", "failed"):
                    break
                time.sleep(1)
            if resp.get("status") != "completed":
                raise LabelStudioRejected(f"import into project {project_id} did not complete: {resp}", 400)
        return [int(t) for t in (resp or {}).get("task_ids") or []]

    def replace_tasks(self, project_id: int, tasks_data: list[dict]) -> None:
        """For backend-owned projects only (the overview): drop all tasks, import new ones."""
        self.request("DELETE", f"/api/projects/{int(project_id)}/tasks/")
        if tasks_data:
            self.import_tasks(project_id, [{"data": data} for data in tasks_data])

    # --- labeled images -------------------------------------------------------------------
    def labeled_records(self, project_id: int, spec: ClassSpec, cache_dir: str | os.PathLike,
                        progress: Callable[[int, int], None] | None = None) -> tuple[list[Record], list[SkippedItem]]:
        """One Record per labeled task, image downloaded into ``cache_dir``.

        A task is labeled when it has a non-cancelled annotation whose result picks a class in
        ``spec.choices_name``; the newest such annotation (updated_at, then id) gives the label.
        ``split`` comes from task data ('train' or 'val', anything else counts as 'train').
        Records keep task order; ``source`` is the cached file. Images that cannot be fetched
        become SkippedItems naming the task, the URL and the cause; nothing raises for them.
        progress : called as progress(done, total) after each download.
        """
        wanted: list[tuple[int, Any, str, str]] = []
        for task in self.export_tasks(project_id, labeled_only=True):
            label = newest_label(task.get("annotations") or [], spec)
            if label is not None:
                data = task.get("data") or {}
                split = str(data.get("split", "train")).strip().lower()
                wanted.append((int(task["id"]), data.get(spec.image_key), label, split if split in SPLITS else "train"))
        cache = Path(cache_dir)
        cache.mkdir(parents=True, exist_ok=True)

        def fetch(item: tuple[int, Any, str, str]) -> Record | SkippedItem:
            task_id, url, label, split = item
            name = f"task-{task_id}"
            if not isinstance(url, str) or not url.strip():
                return SkippedItem(name, f"task {task_id}: no image URL in task data field {spec.image_key!r}")
            try:
                path = self.cached_image(url, task_id=task_id, cache_dir=cache)
            except (ImageFetchError, LabelStudioError, OSError) as exc:
                return SkippedItem(name, f"task {task_id}: image {url!r} could not be downloaded: {exc}")
            return Record(item=name, source=str(path), label=label, split=split, task_id=task_id)

        records: list[Record] = []
        skipped: list[SkippedItem] = []
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            for done, result in enumerate(pool.map(fetch, wanted), 1):
                (skipped if isinstance(result, SkippedItem) else records).append(result)
                if progress:
                    progress(done, len(wanted))
        return records, skipped

    def cached_image(self, url: str, *, task_id: int, cache_dir: str | os.PathLike) -> Path:
        """The image at ``url`` as a file under ``cache_dir`` (named by the SHA-1 of the URL);
        downloaded once. Raises ImageFetchError."""
        cache = Path(cache_dir)
        path = cache / hashlib.sha1(self._cache_key(url).encode()).hexdigest()
        if path.exists():
            return path
        data = self.download(url, task_id=task_id)
        fd, tmp = tempfile.mkstemp(dir=cache, prefix=path.name, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

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
        Raises ImageFetchError (or LabelStudioTokenRejected for a token Label Studio refuses to refresh)."""
        url = url.strip()
        if url.startswith("data:"):
            return _data_uri(url, self.settings.max_image_bytes)
        if _is_storage_uri(url):  # presigned or proxied by Label Studio, as its own frontend does
            fileuri = base64.urlsafe_b64encode(url.encode()).decode()
            url = f"/tasks/{int(task_id)}/resolve/?fileuri={fileuri}"
        deadline = time.monotonic() + self.settings.download_timeout
        return self._by_deadline(deadline, lambda: self._fetch(self._absolute(url), deadline))

    def _by_deadline(self, deadline: float, fetch: Callable[[], bytes]) -> bytes:
        """fetch() run in a daemon thread, waited for until ``deadline``. httpx's timeouts bound each
        network operation, not their sum (a server sending a byte just before each read timeout
        never trips one) and name resolution has none, so only this is a hard bound for the caller.
        A fetch left behind stops at its next network read (see _read_image)."""
        result: Future[bytes] = Future()

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

    def _fetch(self, url: str, deadline: float) -> bytes:
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ImageFetchError(self._timed_out())
            try:
                with contextlib.closing(self._get(current, remaining)) as resp:
                    if resp.is_redirect and "location" in resp.headers:
                        current = urljoin(current, resp.headers["location"])
                        continue
                    if resp.status_code >= 400:
                        raise ImageFetchError(self._http_failure(resp.status_code, current))
                    return self._read_image(resp, deadline)
            except httpx.TimeoutException:
                raise ImageFetchError(self._timed_out()) from None
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise ImageFetchError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
        raise ImageFetchError(f"more than {MAX_REDIRECTS} redirects")

    def _get(self, url: str, timeout: float) -> httpx.Response:
        """The streamed answer to GET ``url`` (the caller closes it). Label Studio's own origin is
        asked directly, with the token on its media routes only; any other host only at an address
        the download policy checked, with the name in the Host header and, for https, in SNI and
        the certificate check."""
        target = httpx.URL(url)
        if target.scheme not in ("http", "https") or not target.host:
            raise ImageFetchError(f"not an http(s) URL with a host: {url!r}")
        scheme, host, port = _origin(target)
        if (scheme, host, port) == self.origin:
            headers = self._auth_headers() if self._is_media_route(target) else {}
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
                "GET", target.copy_with(host=str(address)), headers={"Host": target.netloc.decode("ascii")},
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

    # --- predictions ------------------------------------------------------------------------
    def create_predictions(self, project_id: int, predictions: list[dict]) -> int:
        """Bulk-create predictions ``{"task", "result", "score", "model_version"}`` (``task_id``
        is accepted for ``task``) through /api/projects/<id>/import/predictions. Returns the count."""
        items = [{**{k: v for k, v in p.items() if k != "task_id"}, "task": int(p.get("task", p.get("task_id")))}
                 for p in predictions]
        created = 0
        for start in range(0, len(items), PREDICTION_BATCH):
            resp = self.request("POST", f"/api/projects/{int(project_id)}/import/predictions",
                                json=items[start:start + PREDICTION_BATCH], timeout=600)
            created += int((resp or {}).get("created", 0))
        return created

    def model_versions(self, project_id: int) -> dict[str, int]:
        """Prediction counts by model_version (Label Studio also lists connected backends, at 0)."""
        return self.request("GET", f"/api/projects/{int(project_id)}/model-versions/") or {}

    def delete_predictions(self, project_id: int, model_version_prefix: str = OUR_VERSIONS, *,
                           keep_version: str | None = None) -> list[str]:
        """Delete the predictions whose model_version starts with ``model_version_prefix`` (ours),
        except ``keep_version``; others' predictions stay. Returns the versions removed."""
        if not model_version_prefix:
            raise ValueError("model_version_prefix must not be empty: it keeps other models' predictions safe")
        removed = []
        for version, count in self.model_versions(project_id).items():
            if version.startswith(model_version_prefix) and version != keep_version and count:
                self.request("DELETE", f"/api/projects/{int(project_id)}/model-versions/",
                             json={"model_version": version})
                removed.append(version)
        return removed

    # --- our task fields ------------------------------------------------------------------------
    # Label Studio replaces ``data`` wholesale on PATCH and offers no conditional write, so every
    # write re-reads its task right before it and sends back the user's keys as just read: an edit
    # made while we publish (minutes for a big project) is kept. What is left is one request's
    # latency between that GET and the PATCH; an export is only used to pick the tasks to touch.
    def merge_task_fields(self, project_id: int, updates: Mapping[int, Mapping[str, Any]], *,
                          prefix: str = OWN_PREFIX) -> int:
        """Add or replace our ``prefix`` keys in a few tasks' data (``updates[task_id]``), keeping
        every user key as it is, WORKERS tasks at a time. Returns how many tasks changed."""
        for fields in updates.values():
            _check_own_keys(fields, prefix)

        def merge(item: tuple[int, Mapping[str, Any]]) -> bool:
            task_id, fields = item
            return self._rewrite_data(task_id, lambda data: {**data, **fields})
        return sum(self._parallel(merge, list(updates.items())))

    def sync_task_fields(self, project_id: int, wanted: Mapping[int, Mapping[str, Any]], *,
                         prefix: str = OWN_PREFIX) -> int:
        """Make every task of the project carry exactly ``wanted[task_id]`` as its ``prefix``
        keys (none when absent); PATCH only tasks that change. Returns how many changed."""
        for fields in wanted.values():
            _check_own_keys(fields, prefix)
        stale = [int(task["id"]) for task in self.export_tasks(project_id)
                 if _own_keys(task.get("data") or {}, prefix) != wanted.get(int(task["id"]), {})]

        def rewrite(task_id: int) -> bool:
            ours = wanted.get(task_id, {})
            return self._rewrite_data(task_id, lambda data: {
                **{k: v for k, v in data.items() if not k.startswith(prefix)}, **ours})
        return sum(self._parallel(rewrite, stale))

    def _rewrite_data(self, task_id: int, change: Callable[[dict], dict]) -> bool:
        """Read the task's data now, PATCH ``change(data)`` if it differs; whether it changed."""
        before = self.get_task(task_id).get("data") or {}
        after = change(before)
        if after == before:
            return False
        self.request("PATCH", f"/api/tasks/{int(task_id)}/", json={"data": after})
        return True

    @staticmethod
    def _parallel(fn: Callable[[Any], Any], items: list) -> list:
        if len(items) <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            return list(pool.map(fn, items))

    # --- Data Manager tabs ------------------------------------------------------------------
    def list_views(self, project_id: int) -> list[dict]:
        """The project's tabs as ``{"id", "title", "data"}`` (data: filters, ordering, ...)."""
        views = self.request("GET", "/api/dm/views/", params={"project": int(project_id)}) or []
        return [{"id": int(v["id"]), "title": (v.get("data") or {}).get("title", ""), "data": v.get("data") or {}}
                for v in views]

    def create_view(self, project_id: int, title: str, filters: Sequence[tuple | Mapping] = (),
                    ordering: str | Sequence[str] | None = None, hidden_columns: Iterable[str] | Mapping | None = None,
                    *, numeric_fields: Iterable[str] = (), conjunction: str = "and") -> int:
        """A Data Manager tab; returns its id.

        filters : ``(field, operator, type, value)`` tuples on task-data fields, e.g.
            ``("dc_candidate", "equal", "Number", 1)``, or Label Studio filter dicts
            (``{"filter": "filter:tasks:data.dc_cell", "operator": "equal", "type": "String", "value": ...}``).
        ordering : a field, ``-`` for descending (``"-dc_error_score"``), or a list of them.
        hidden_columns : fields hidden in both the list and the labeling view, or Label Studio's
            ``{"explore": [...], "labeling": [...]}`` with column ids.
        numeric_fields : fields shown, and sorted, as numbers (Label Studio otherwise sorts task-data
            fields as text, "10" before "9"); fields filtered with type "Number" are added.
        """
        items = [_filter_item(f) for f in filters]
        numeric = {_column(f) for f in numeric_fields} | {i["filter"][len("filter:"):] for i in items
                                                           if i.get("type") == "Number"}
        orders = [ordering] if isinstance(ordering, str) else list(ordering or [])
        data: dict[str, Any] = {
            "title": title,
            "filters": {"conjunction": conjunction, "items": items},
            "ordering": [("-" if o.startswith("-") else "") + _column(o.lstrip("-+")) for o in orders],
            "columnsDisplayType": {column: "Number" for column in sorted(numeric)},
        }
        if hidden_columns is not None:
            if isinstance(hidden_columns, Mapping):
                data["hiddenColumns"] = {k: list(v) for k, v in hidden_columns.items()}
            else:
                hidden = [_column(c) for c in hidden_columns]
                data["hiddenColumns"] = {"explore": hidden, "labeling": hidden}
        return int(self.request("POST", "/api/dm/views/", json={"project": int(project_id), "data": data})["id"])

    def delete_views(self, project_id: int, title_prefix: str) -> int:
        """Delete the tabs whose title starts with ``title_prefix`` (ours); returns how many."""
        if not title_prefix:
            raise ValueError("title_prefix must not be empty: it keeps the user's own tabs safe")
        ours = [v for v in self.list_views(project_id) if v["title"].startswith(title_prefix)]
        for view in ours:
            self.request("DELETE", f"/api/dm/views/{view['id']}/")
        return len(ours)

# --- pure helpers ----------------------------------------------------------------------------

def newest_label(annotations: list[dict], spec: ClassSpec) -> str | None:
    """The class chosen in the newest non-cancelled annotation that picks one, or None.
    Newest: latest updated_at (created_at if missing), then highest id."""
    best_key, best = None, None
    for annotation in annotations:
        if annotation.get("was_cancelled"):
            continue
        label = _choice(annotation.get("result") or [], spec)
        if label is None:
            continue
        key = (_when(annotation.get("updated_at") or annotation.get("created_at")), int(annotation.get("id") or 0))
        if best_key is None or key > best_key:
            best_key, best = key, label
    return best


def _choice(result: list[dict], spec: ClassSpec) -> str | None:
    for item in result:
        choices = (item.get("value") or {}).get("choices") or []
        if item.get("from_name") == spec.choices_name and choices:
            return str(choices[0])
    return None


def _when(stamp: Any) -> datetime:
    try:
        when = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _own_keys(data: Mapping[str, Any], prefix: str) -> dict:
    return {k: v for k, v in data.items() if k.startswith(prefix)}


def _check_own_keys(keys: Iterable[str], prefix: str) -> None:
    if not prefix:
        raise ValueError("prefix must not be empty: it keeps the user's task-data keys safe")
    foreign = sorted(k for k in keys if not str(k).startswith(prefix))
    if foreign:
        raise ValueError(f"task-data keys {foreign} do not start with {prefix!r}; only our own keys may be written")


def _column(field: str) -> str:
    """'dc_error_score' -> 'tasks:data.dc_error_score'; full column ids pass through."""
    return field if ":" in field else f"tasks:data.{field}"


def _filter_item(spec: tuple | Mapping) -> dict:
    if isinstance(spec, Mapping):
        item = dict(spec)
        if not str(item.get("filter", "")).startswith("filter:"):
            item["filter"] = "filter:" + _column(str(item.get("filter", "")))
        return item
    field, operator, kind, value = spec
    return {"filter": "filter:" + _column(field), "operator": operator, "type": kind, "value": value}


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


def _json_or_text(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return resp.text


def _detail(body: Any) -> str:
    """Label Studio's error text: its ``detail``/validation messages, else the body, shortened."""
    if isinstance(body, dict):
        detail, errors = body.get("detail"), body.get("validation_errors")
        if errors:  # {"detail": "Validation error", "validation_errors": {"title": [...]}}
            return f"{detail or 'validation error'}: {errors}"[:500]
        if detail:
            return str(detail)[:300]
    return str(body)[:300] or "no details"
