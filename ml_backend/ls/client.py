"""Everything De-Confusion asks of Label Studio. The only module that speaks to it.

Authentication comes from label-studio-sdk 2.x (legacy tokens and personal access tokens,
whose JWT it refreshes); calls go to Label Studio's REST API with retries. The token is only
ever sent to Label Studio's own origin, never to another host named in task data.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import urljoin, urlsplit

import requests
from label_studio_sdk.client import LabelStudio

from ..config import Settings
from ..dataset import Record, SkippedItem
from ..errors import LabelStudioUnavailable
from .schema import ClassSpec, parse_label_config

log = logging.getLogger(__name__)

RETRY_DELAYS = (0.5, 1.5, 4.0, 8.0)  # ~14 s of retries before Label Studio counts as down
WORKERS = 8
OWN_PREFIX = "dc_"
OUR_VERSIONS = "deconfusion"
CLOUD_SCHEMES = ("s3", "gs", "azure-blob", "azure-spi")
IMAGE_TYPES = ("image/", "application/octet-stream", "binary/octet-stream")


class LabelStudioClient:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.base = settings.label_studio_url.rstrip("/")
        self.origin = _origin(self.base)
        self._sdk = LabelStudio(base_url=self.base, api_key=settings.label_studio_api_key)
        self._session = requests.Session()

    # --- transport ----------------------------------------------------------------------
    def _auth(self) -> dict[str, str]:
        try:
            return {"Authorization": self._sdk._client_wrapper.get_headers()["Authorization"]}
        except Exception as exc:  # the SDK refreshes a PAT here; a refused or unreachable refresh lands here
            raise LabelStudioUnavailable(
                f"could not authenticate at {self.base} ({type(exc).__name__}: {exc}); check LABEL_STUDIO_URL "
                "and LABEL_STUDIO_API_KEY") from None

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """JSON of a Label Studio API call; retried on connection errors and 5xx."""
        url = urljoin(self.base + "/", path.lstrip("/"))
        kwargs.setdefault("timeout", 60)
        last = ""
        for attempt, delay in enumerate((*RETRY_DELAYS, None)):
            try:
                resp = self._session.request(method, url, headers=self._auth(), allow_redirects=False, **kwargs)
            except requests.RequestException as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status_code in (401, 403):
                    raise LabelStudioUnavailable(
                        f"Label Studio at {self.base} rejected the token ({resp.status_code} on {path}): check "
                        "LABEL_STUDIO_API_KEY (a personal access token or a legacy token of a project member)")
                if resp.status_code < 500:
                    if resp.status_code >= 400:
                        raise LabelStudioUnavailable(f"{method} {path} failed ({resp.status_code}): {resp.text[:300]}")
                    return resp.json() if resp.content and "json" in resp.headers.get("content-type", "") else None
                last = f"HTTP {resp.status_code}"
            if delay is None:
                break
            log.warning("Label Studio %s %s: %s; retrying in %.1f s", method, path, last, delay)
            time.sleep(delay)
        raise LabelStudioUnavailable(f"Label Studio at {self.base} did not answer {method} {path} after "
                                     f"{len(RETRY_DELAYS) + 1} tries ({last}); is it running?")

    def check(self) -> dict:
        return self.request("GET", "/api/current-user/whoami")

    # --- projects and tasks -----------------------------------------------------------------
    def get_project(self, project_id: int) -> dict:
        return self.request("GET", f"/api/projects/{int(project_id)}/")

    def project_exists(self, project_id: int) -> bool:
        try:
            self.get_project(project_id)
            return True
        except LabelStudioUnavailable as exc:
            if "(404" in str(exc):
                return False
            raise

    def class_spec(self, project_id: int) -> ClassSpec:
        return parse_label_config(self.get_project(project_id)["label_config"])

    def create_project(self, title: str, label_config: str) -> int:
        return int(self.request("POST", "/api/projects/", json={"title": title, "label_config": label_config})["id"])

    def update_label_config(self, project_id: int, label_config: str) -> None:
        self.request("PATCH", f"/api/projects/{int(project_id)}/", json={"label_config": label_config})

    def all_tasks(self, project_id: int) -> list[dict]:
        """Every task with data, annotations and predictions, in one export call."""
        return self.request("GET", f"/api/projects/{int(project_id)}/export",
                            params={"exportType": "JSON", "download_all_tasks": "true"}, timeout=600) or []

    def import_tasks(self, project_id: int, tasks: list[dict]) -> None:
        for start in range(0, len(tasks), 1000):
            self.request("POST", f"/api/projects/{int(project_id)}/import", json=tasks[start:start + 1000],
                         params={"commit_to_project": "true"}, timeout=600)

    def replace_tasks(self, project_id: int, tasks_data: list[dict]) -> None:
        """For backend-owned projects only (the overview): drop all tasks, import new ones."""
        self.request("DELETE", f"/api/projects/{int(project_id)}/tasks/")
        if tasks_data:
            self.import_tasks(project_id, [{"data": data} for data in tasks_data])

    def create_annotation(self, task_id: int, result: list[dict]) -> int:
        return int(self.request("POST", f"/api/tasks/{int(task_id)}/annotations/", json={"result": result})["id"])

    def add_local_storage(self, project_id: int, path: str | Path) -> int:
        """Serve files under ``path`` as /data/local-files/ (needs LOCAL_FILES_SERVING_ENABLED)."""
        body = {"project": int(project_id), "path": str(Path(path).resolve()), "title": "images",
                "use_blob_urls": True, "regex_filter": ".*"}
        return int(self.request("POST", "/api/storages/localfiles", json=body)["id"])

    # --- labeled images -------------------------------------------------------------------
    def labeled_records(self, project_id: int, spec: ClassSpec, cache_dir: str | Path,
                        progress: Callable[[int, int], None] | None = None) -> tuple[list[Record], list[SkippedItem]]:
        """One Record per task whose newest non-cancelled annotation picks a class; images
        downloaded into ``cache_dir``. Failures become SkippedItems, never exceptions."""
        labeled: list[tuple[dict, str]] = []
        for task in self.all_tasks(project_id):
            label = newest_label(task.get("annotations") or [], spec)
            if label is not None:
                labeled.append((task, label))
        cache = Path(cache_dir)
        cache.mkdir(parents=True, exist_ok=True)
        records, skipped = [], []

        def fetch(item: tuple[dict, str]) -> Record | SkippedItem:
            task, label = item
            name = f"task-{task['id']}"
            try:
                path = self._cached_image(task, spec, cache)
            except (ValueError, OSError, requests.RequestException, LabelStudioUnavailable) as exc:
                url = (task.get("data") or {}).get(spec.image_key)
                return SkippedItem(name, f"task {task['id']}: image {url!r} could not be downloaded: {exc}")
            split = str((task.get("data") or {}).get("split", "train")).lower()
            return Record(item=name, source=path, label=label, split=split if split in ("train", "val") else "train",
                          task_id=int(task["id"]))

        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            for done, result in enumerate(pool.map(fetch, labeled), 1):
                (skipped if isinstance(result, SkippedItem) else records).append(result)
                if progress:
                    progress(done, len(labeled))
        return records, skipped

    def _cached_image(self, task: dict, spec: ClassSpec, cache: Path) -> Path:
        url = (task.get("data") or {}).get(spec.image_key)
        if not isinstance(url, str) or not url:
            raise ValueError(f"task data has no {spec.image_key!r} field")
        path = cache / hashlib.sha1(url.encode()).hexdigest()
        if not path.exists():
            data = self.download(url, task_id=int(task["id"]))
            tmp = path.with_suffix(".part")
            tmp.write_bytes(data)
            tmp.replace(path)
        return path

    def fetch_image(self, task: dict, spec: ClassSpec) -> bytes:
        return self.download((task.get("data") or {}).get(spec.image_key) or "", task_id=int(task.get("id", 0)))

    def download(self, url: str, *, task_id: int) -> bytes:
        """Image bytes from Label Studio (uploads, local files, cloud storage) or any http(s) URL."""
        scheme = urlsplit(url).scheme
        if scheme in CLOUD_SCHEMES:  # presigned through Label Studio's storage proxy
            token = base64.urlsafe_b64encode(url.encode()).decode()
            url = f"/tasks/{task_id}/resolve/?fileuri={token}"
        absolute = urljoin(self.base + "/", url)
        if urlsplit(absolute).scheme not in ("http", "https"):
            raise ValueError(f"unsupported image URL scheme in {url!r}")
        for _ in range(5):  # follow redirects by hand: the token never leaves Label Studio's origin
            headers = self._auth() if _origin(absolute) == self.origin else {}
            with self._session.get(absolute, headers=headers, stream=True, allow_redirects=False,
                                   timeout=self.settings.download_timeout) as resp:
                if resp.is_redirect:
                    absolute = urljoin(absolute, resp.headers["location"])
                    continue
                resp.raise_for_status()
                kind = resp.headers.get("content-type", "").split(";")[0].strip().lower()
                if kind and not kind.startswith(IMAGE_TYPES):
                    raise ValueError(f"not an image (Content-Type {kind})")
                return _read_limited(resp, self.settings.max_image_bytes)
        raise ValueError("too many redirects")

    # --- predictions ------------------------------------------------------------------------
    def create_predictions(self, project_id: int, predictions: list[dict]) -> None:
        for start in range(0, len(predictions), 1000):
            self.request("POST", f"/api/projects/{int(project_id)}/import/predictions",
                         json=predictions[start:start + 1000], timeout=600)

    def model_versions(self, project_id: int) -> dict[str, int]:
        return self.request("GET", f"/api/projects/{int(project_id)}/model-versions/") or {}

    def delete_predictions(self, project_id: int, *, keep_version: str | None = None) -> list[str]:
        """Remove our predictions (model versions starting 'deconfusion') except ``keep_version``."""
        removed = []
        for version in self.model_versions(project_id):
            if version.startswith(OUR_VERSIONS) and version != keep_version:
                self.request("DELETE", f"/api/projects/{int(project_id)}/model-versions/", json={"model_version": version})
                removed.append(version)
        return removed

    # --- our task fields ------------------------------------------------------------------------
    def _patch_data(self, task: dict, fields: dict, prefix: str) -> None:
        """Label Studio replaces ``data`` wholesale: send the user's keys back untouched."""
        user = {k: v for k, v in (task.get("data") or {}).items() if not k.startswith(prefix)}
        self.request("PATCH", f"/api/tasks/{int(task['id'])}/", json={"data": {**user, **fields}})

    def sync_task_fields(self, project_id: int, wanted: dict[int, dict], *, prefix: str = OWN_PREFIX) -> int:
        """Make every task carry exactly ``wanted[task_id]`` as its ``prefix`` fields (none if
        absent); PATCH only the tasks that change. Returns how many changed."""
        changes = []
        for task in self.all_tasks(project_id):
            current = {k: v for k, v in (task.get("data") or {}).items() if k.startswith(prefix)}
            target = wanted.get(int(task["id"]), {})
            if current != target:
                changes.append((task, target))
        self._parallel(lambda change: self._patch_data(change[0], change[1], prefix), changes)
        return len(changes)

    def merge_task_fields(self, project_id: int, updates: dict[int, dict], *, prefix: str = OWN_PREFIX) -> None:
        """Change some of our fields on a few tasks, keeping the rest of their data."""
        def merge(item):
            task_id, fields = item
            task = self.request("GET", f"/api/tasks/{int(task_id)}/")
            own = {k: v for k, v in (task.get("data") or {}).items() if k.startswith(prefix)}
            self._patch_data(task, {**own, **fields}, prefix)
        self._parallel(merge, list(updates.items()))

    @staticmethod
    def _parallel(fn: Callable, items: Iterable) -> None:
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            list(pool.map(fn, items))

    # --- Data Manager tabs ------------------------------------------------------------------
    def list_views(self, project_id: int) -> list[dict]:
        views = self.request("GET", "/api/dm/views/", params={"project": int(project_id)}) or []
        return [{"id": v["id"], "title": (v.get("data") or {}).get("title", ""), "data": v.get("data")} for v in views]

    def delete_views(self, project_id: int, title_prefix: str) -> int:
        ours = [v for v in self.list_views(project_id) if v["title"].startswith(title_prefix)]
        for view in ours:
            self.request("DELETE", f"/api/dm/views/{view['id']}/")
        return len(ours)

    def create_view(self, project_id: int, title: str, filters: list[tuple[str, str, str, Any]], ordering: str,
                    *, numeric_fields: Iterable[str] = ()) -> int:
        """A tab filtered on our data fields; numeric fields sort as numbers, not strings."""
        column = lambda field: f"tasks:data.{field}"  # noqa: E731
        data = {
            "title": title,
            "filters": {"conjunction": "and", "items": [
                {"filter": f"filter:{column(f)}", "operator": op, "type": kind, "value": value}
                for f, op, kind, value in filters]},
            "ordering": [("-" if ordering.startswith("-") else "") + column(ordering.lstrip("-+"))],
            "columnsDisplayType": {column(f): "Number" for f in numeric_fields},
        }
        return int(self.request("POST", "/api/dm/views/", json={"project": int(project_id), "data": data})["id"])

    def view_task_ids(self, project_id: int, view_id: int) -> list[int]:
        ids, page = [], 1
        while True:
            resp = self.request("GET", "/api/tasks/", params={"project": int(project_id), "view": int(view_id),
                                                              "page": page, "page_size": 500, "fields": "task_only"})
            tasks = resp.get("tasks", []) if isinstance(resp, dict) else []
            ids += [int(t["id"]) for t in tasks]
            if len(tasks) < 500:
                return ids
            page += 1

    # --- the ML backend ---------------------------------------------------------------------
    def connect_ml_backend(self, project_id: int, url: str, title: str = "De-Confusion") -> int:
        existing = self.request("GET", "/api/ml/", params={"project": int(project_id)}) or []
        for backend in existing:
            if backend.get("url", "").rstrip("/") == url.rstrip("/"):
                return int(backend["id"])
        body = {"project": int(project_id), "url": url, "title": title, "is_interactive": False}
        return int(self.request("POST", "/api/ml/", json=body)["id"])

    def start_training(self, backend_id: int) -> None:
        self.request("POST", f"/api/ml/{int(backend_id)}/train", json={})

    def ensure_webhook(self, project_id: int, url: str) -> int:
        """Label Studio adds ``<backend>/webhook`` when a backend connects; make sure it is there."""
        for hook in self.request("GET", "/api/webhooks/", params={"project": int(project_id)}) or []:
            if hook.get("url") == url:
                return int(hook["id"])
        body = {"project": int(project_id), "url": url, "send_payload": True, "send_for_all_actions": True}
        return int(self.request("POST", "/api/webhooks/", json=body)["id"])


def newest_label(annotations: list[dict], spec: ClassSpec) -> str | None:
    """The class chosen in the newest non-cancelled annotation, or None."""
    usable = [a for a in annotations if not a.get("was_cancelled")]
    for annotation in sorted(usable, key=lambda a: (a.get("updated_at") or a.get("created_at") or "", a.get("id", 0)),
                             reverse=True):
        for item in annotation.get("result") or []:
            choices = (item.get("value") or {}).get("choices") or []
            if item.get("from_name") == spec.choices_name and choices:
                return choices[0]
    return None


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(parts.scheme)


def _read_limited(resp: requests.Response, limit: int) -> bytes:
    chunks, size = [], 0
    for chunk in resp.iter_content(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise ValueError(f"image larger than MAX_IMAGE_BYTES={limit}")
        chunks.append(chunk)
    return b"".join(chunks)
