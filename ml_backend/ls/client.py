"""The Label Studio REST calls the backend makes: projects, tasks, predictions, our task fields,
Data Manager tabs and annotations. Requests go through ``transport``, images through ``media``.

Our task fields all start with ``dc_``; Label Studio replaces ``data`` wholesale on PATCH, so
every write sends the user's keys back untouched.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, Callable, Generator, Iterable, Iterator, Mapping, Sequence

from ..config import Settings
from ..dataset import SPLITS
from ..errors import LabelStudioError, LabelStudioRejected, LabelStudioUnavailable
from ..vocabulary import TASK_FIELDS, VERSION_FIELD, VERSION_PREFIX
from .media import Downloads, LabeledImage, Media
from .schema import ClassSpec
from .transport import RETRY_DELAYS, Transport

log = logging.getLogger(__name__)

PAGE_SIZE = 1000  # tasks per /api/tasks page: ~3 ms per task on Label Studio's side
LISTING_PASSES = 3  # passes over the task pages while tasks are deleted or added under them
IMPORT_BATCH = 1000  # tasks per import request
# Label Studio 1.23 recounts every task of the project after each prediction import request, so
# predictions go in few, large requests: 20,000 on a 20,000-task project took 127 s in requests of
# 1,000 and 14 s in one (scripts/bench_publish.py); 50,000 predictions are about 10 MB of JSON.
PREDICTION_BATCH = 50_000
IMPORT_PARAMS = {"commit_to_project": "true", "return_task_ids": "true"}
WORKERS = 8  # concurrent task reads and PATCHes
REFUSED_ALL = 10  # field writes refused, none taken: Label Studio refuses them all (an error, not a list)
BULK_TIMEOUT = 600.0
"""Seconds for one request over a whole project (export, import, predictions in bulk, deleting a
model version): Label Studio on SQLite took over 120 s to delete 70,000 predictions, and a retry
sent while the first delete still runs only finds the database locked."""


class LabelStudioClient:
    """Label Studio's REST API as the backend uses it. Thread-safe; use one per job or request,
    as a context manager (``with LabelStudioClient(settings) as client:``), which closes it.

    settings : Settings, see Transport and Media for what each reads (a bad DOWNLOAD_ALLOW entry
        raises ValueError here).
    retry_delays : seconds slept between tries of a failing call (connection error or 5xx).
    """

    def __init__(self, settings: Settings, *, retry_delays: Sequence[float] = RETRY_DELAYS) -> None:
        self.transport = Transport(settings, retry_delays=retry_delays)
        self.media = Media(settings, self.transport.auth_headers)
        # task id -> why Label Studio refused our fields for it (see _rewrite_data); read by publishing
        self.refused_writes: dict[int, str] = {}
        self.deleted_tasks: set[int] = set()  # tasks a field write found deleted (404)

    def request(self, method: str, path: str, **options: Any) -> Any:
        """JSON of one Label Studio API call; options and errors as Transport.request."""
        return self.transport.request(method, path, **options)

    def close(self) -> None:
        """Close the HTTP connections; a ``with`` block does it on exit."""
        self.media.close()
        self.transport.close()

    def __enter__(self) -> "LabelStudioClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

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

    def create_project(self, title: str, label_config: str) -> int:
        return int(self.request("POST", "/api/projects/", json={"title": title, "label_config": label_config})["id"])

    def delete_project(self, project_id: int) -> None:
        """Only for the backend's own companion projects (the overview)."""
        self.request("DELETE", f"/api/projects/{int(project_id)}/")

    # --- annotations ------------------------------------------------------------------------
    def user_names(self) -> dict[str, str]:
        """user id -> e-mail (or username) of the organization's users, for the report's annotator
        table; empty when this token may not list users (only managers may)."""
        try:
            users = self.request("GET", "/api/users/")
        except LabelStudioError as exc:  # names are a nicety: never fail an analysis for them
            log.info("Label Studio would not list its users (%s); the report shows user ids", exc)
            return {}
        users = users.get("results", []) if isinstance(users, dict) else users or []
        return {str(u["id"]): u.get("email") or u.get("username") or f"user {u['id']}" for u in users if "id" in u}

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
        return dict(zip(ids, _parallel(find, ids)))

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
        export endpoint is missing, refuses the request, keeps failing or does not answer in BULK_TIMEOUT.
        """
        params = {"exportType": "JSON", "download_resources": "false",
                  "download_all_tasks": "false" if labeled_only else "true"}
        try:  # an export that took BULK_TIMEOUT once would take as long again: page instead
            tasks = self.request("GET", f"/api/projects/{int(project_id)}/export", params=params, timeout=BULK_TIMEOUT,
                                 retry_timeouts=False)
        except (LabelStudioRejected, LabelStudioUnavailable) as exc:  # refused, or failing with 5xx: page instead
            if getattr(exc, "status", None) == 404 and not self.project_exists(project_id):
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
        page, with raw data, each task once. Tasks deleted or added while it pages shift the pages
        under it (a task of page 2 moves to page 1, already read), so a pass that saw ``total``
        change or a page go missing is followed by another from the first page, up to
        LISTING_PASSES: else the tasks it skipped would keep an older analysis' fields."""
        listed: set[int] = set()
        for _ in range(LISTING_PASSES):
            shifted = yield from self._listing_pass(params, page_size, listed)
            if not shifted:
                return

    def _listing_pass(self, params: Mapping[str, Any], page_size: int, listed: set[int]
                      ) -> Generator[dict, None, bool]:
        """One pass over the pages, yielding the tasks not ``listed`` yet (and adding them); returns
        whether the pages shifted under it. Pages until ``total`` tasks came or a page is empty:
        Label Studio may cap the page size (TASK_API_PAGE_SIZE_MAX), so a short page is not the last."""
        seen, page, first_total = 0, 1, None
        while True:
            try:
                resp = self.request("GET", "/api/tasks/", params={
                    **params, "page": page, "page_size": page_size, "resolve_uri": "false"})
            except LabelStudioRejected as exc:
                if exc.status == 404 and page > 1:  # past the last page: tasks deleted while paging
                    return True
                raise
            tasks = resp.get("tasks", []) if isinstance(resp, dict) else []
            total = int(resp.get("total", 0)) if isinstance(resp, dict) else 0
            first_total = total if first_total is None else first_total
            for task in tasks:
                if int(task["id"]) not in listed:
                    listed.add(int(task["id"]))
                    yield task
            seen += len(tasks)
            if not tasks or seen >= total:
                return total != first_total
            page += 1

    def import_tasks(self, project_id: int, tasks: list[dict]) -> list[int]:
        """Create tasks (``{"data": {...}, "annotations": [...], ...}`` each); returns their ids."""
        ids: list[int] = []
        for start in range(0, len(tasks), IMPORT_BATCH):
            resp = self.request("POST", f"/api/projects/{int(project_id)}/import",
                                json=tasks[start:start + IMPORT_BATCH], params=IMPORT_PARAMS, timeout=BULK_TIMEOUT)
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

    # --- labeled images ---------------------------------------------------------------------
    def labeled_records(self, project_id: int, spec: ClassSpec, cache_dir: str | os.PathLike,
                        progress: Callable[[int, int], None] | None = None) -> Downloads:
        """One Record per labeled task, image downloaded into ``cache_dir`` (see Media.records).

        A task is labeled when it has a non-cancelled annotation whose result picks a class in
        ``spec.choices_name``; the newest such annotation (updated_at, then id) gives the label.
        ``split`` comes from task data ('train' or 'val', anything else counts as 'train');
        ``annotations`` holds every labeling annotation (:func:`labeling_annotations`).
        ``labels_as_of``: when the newest annotation the export held was saved (Label Studio's
        clock, ISO); an annotation saved later was not seen (a reviewer's verdict meanwhile).
        progress : called as progress(done, total) after each download.
        """
        wanted, saved = [], []
        for task in self.export_tasks(project_id, labeled_only=True):
            annotations = task.get("annotations") or []
            saved.extend(map(annotation_time, annotations))
            label = newest_label(annotations, spec)
            if label is not None:
                data = task.get("data") or {}
                split = str(data.get("split", "train")).strip().lower()
                wanted.append(LabeledImage(int(task["id"]), data.get(spec.image_key), label, split if split in SPLITS
                                           else "train", labeling_annotations(annotations, spec)))
        downloads = self.media.records(wanted, spec.image_key, cache_dir, progress)
        newest = max(saved, default=None)  # the earliest datetime stands for "no timestamp": not known
        return downloads._replace(labels_as_of=newest.isoformat() if newest and newest.year > 1 else "")

    def fetch_image(self, task: dict, spec: ClassSpec) -> bytes:
        """Bytes of a task's image (see Media.fetch_image)."""
        return self.media.fetch_image(task, spec)

    # --- predictions ------------------------------------------------------------------------
    def create_predictions(self, project_id: int, predictions: list[dict]) -> int:
        """Bulk-create predictions ``{"task", "result", "score", "model_version"}`` (``task_id``
        is accepted for ``task``) through /api/projects/<id>/import/predictions. Returns the count.
        Tasks deleted since they were read are skipped and noted in ``deleted_tasks``."""
        items = [{**{k: v for k, v in p.items() if k != "task_id"}, "task": int(p.get("task", p.get("task_id")))}
                 for p in predictions]
        return sum(self._import_predictions(project_id, items[start:start + PREDICTION_BATCH])
                   for start in range(0, len(items), PREDICTION_BATCH))

    def _import_predictions(self, project_id: int, batch: list[dict]) -> int:
        """One import. Label Studio refuses a whole batch that names a task it no longer holds
        (400): the batch goes again without the tasks the project's task list lacks."""
        path = f"/api/projects/{int(project_id)}/import/predictions"
        try:
            resp = self.request("POST", path, json=batch, timeout=BULK_TIMEOUT)
        except LabelStudioRejected as exc:
            if exc.status != 400:
                raise
            held = {int(task["id"]) for task in self.paged_tasks({"project": int(project_id), "fields": "task_only"})}
            gone = {p["task"] for p in batch} - held
            if not gone:
                raise
            log.info("project %s: %d task(s) were deleted while we published; their predictions are skipped",
                     project_id, len(gone))
            self.deleted_tasks |= gone
            batch = [p for p in batch if p["task"] in held]
            resp = self.request("POST", path, json=batch, timeout=BULK_TIMEOUT) if batch else None
        return int((resp or {}).get("created", 0))

    def model_versions(self, project_id: int) -> dict[str, int]:
        """Prediction counts by model_version (Label Studio also lists connected backends, at 0)."""
        return self.request("GET", f"/api/projects/{int(project_id)}/model-versions/") or {}

    def delete_predictions(self, project_id: int, model_version_prefix: str = VERSION_PREFIX, *,
                           keep_version: str | None = None) -> list[str]:
        """Delete the predictions whose model_version starts with ``model_version_prefix`` (ours),
        except ``keep_version``; others' predictions stay. Returns the versions removed."""
        if not model_version_prefix:
            raise ValueError("model_version_prefix must not be empty: it keeps other models' predictions safe")
        removed = []
        for version, count in self.model_versions(project_id).items():
            if version.startswith(model_version_prefix) and version != keep_version and count:
                self.request("DELETE", f"/api/projects/{int(project_id)}/model-versions/",
                             json={"model_version": version}, timeout=BULK_TIMEOUT)
                removed.append(version)
        return removed

    # --- our task fields ------------------------------------------------------------------------
    # Label Studio replaces ``data`` wholesale on PATCH and offers no conditional write, so every
    # write re-reads its task right before it and sends back the user's keys as just read: an edit
    # made while we publish (minutes for a big project) is kept. What is left is one request's
    # latency between that GET and the PATCH; a Data Manager filter only picks the tasks to touch.
    def merge_task_fields(self, project_id: int, updates: Mapping[int, Mapping[str, Any]]) -> int:
        """Add or replace our keys (``TASK_FIELDS``) in a few tasks' data (``updates[task_id]``), keeping
        every user key as it is, WORKERS tasks at a time. Returns how many tasks changed."""
        for fields in updates.values():
            _check_own_keys(fields)

        def merge(item: tuple[int, Mapping[str, Any]]) -> bool:
            task_id, fields = item
            return self._rewrite_data(task_id, lambda data: {**data, **fields})
        return self._count_writes(updates, _parallel(merge, list(updates.items())))

    def sync_task_fields(self, project_id: int, wanted: Mapping[int, Mapping[str, Any]], *,
                         progress: Callable[[int, int], None] | None = None) -> int:
        """Make every task of the project carry exactly ``wanted[task_id]`` as its keys of
        ``TASK_FIELDS`` (none when absent); PATCH only tasks that change. Returns how many changed.
        progress : called as progress(done, total) over the tasks to rewrite."""
        stale = self.stale_task_fields(project_id, wanted)
        return self.write_task_fields(project_id, {t: wanted.get(t, {}) for t in stale}, progress=progress)

    def stale_task_fields(self, project_id: int, wanted: Mapping[int, Mapping[str, Any]]) -> dict[int, dict]:
        """task id -> our keys it carries now, for every task whose keys differ from
        ``wanted[task_id]`` (none when absent): the tasks that carry ours (:meth:`own_keys_by_task`)
        and the wanted tasks that carry none yet."""
        for fields in wanted.values():
            _check_own_keys(fields)
        keys = {VERSION_FIELD, *(key for fields in wanted.values() for key in fields)}
        now = self.own_keys_by_task(project_id, also=keys)
        stale = {task_id: ours for task_id, ours in now.items() if ours != wanted.get(task_id, {})}
        stale.update({int(task_id): {} for task_id, fields in wanted.items() if fields and int(task_id) not in now})
        return stale

    def own_keys_by_task(self, project_id: int, also: Iterable[str] = (VERSION_FIELD,)) -> dict[int, dict]:
        """task id -> its keys of ``TASK_FIELDS``, for every task of the project that carries any.

        Label Studio keeps the data keys its tasks carry (the project summary, where the Data
        Manager's columns come from), so a Data Manager filter on ours lists just those tasks:
        none before the first analysis, the flagged share after it, instead of exporting every
        task with its annotations (20,000 tasks, 600 carrying ours: 1.3 s against 42.7 s).
        The summary's per-key counts are read, changed and saved by each task write, so parallel
        writes lose counts (200 tasks written 8 at a time: 170 counted) and a key can drop out
        while tasks carry it; the filter therefore also asks for the keys in ``also`` (the
        version key every task we give fields carries). Falls back to the export where this
        Label Studio has no summary to read."""
        try:
            summary = self.request("GET", f"/api/projects/{int(project_id)}/summary/")
            columns = summary["all_data_columns"] or {}
        except (LabelStudioRejected, KeyError, TypeError):
            tasks: Iterable[dict] = self.export_tasks(project_id)
        else:
            keys = sorted(k for k in {*columns, *also} if k in TASK_FIELDS)
            if not keys:
                return {}
            carries = [{"filter": f"filter:tasks:data.{key}", "operator": "empty", "type": "String", "value": False}
                       for key in keys]
            query = json.dumps({"filters": {"conjunction": "or", "items": carries}})
            tasks = self.paged_tasks({"project": int(project_id), "query": query})
        return {int(task["id"]): ours for task in tasks if (ours := _own_keys(task.get("data") or {}))}

    def write_task_fields(self, project_id: int, fields: Mapping[int, Mapping[str, Any]], *,
                          progress: Callable[[int, int], None] | None = None) -> int:
        """Make each task ``fields`` names carry exactly ``fields[task_id]`` as its keys of ``TASK_FIELDS``
        (an empty mapping removes ours), keeping every user key as it is, WORKERS tasks at a time.
        Returns how many tasks changed. progress : progress(done, total) over these tasks."""
        for ours in fields.values():
            _check_own_keys(ours)

        def rewrite(task_id: int) -> bool:
            return self._rewrite_data(task_id, lambda data: {
                **{k: v for k, v in data.items() if k not in TASK_FIELDS}, **fields[task_id]})
        return self._count_writes(fields, _parallel(rewrite, list(fields), progress))

    def _rewrite_data(self, task_id: int, change: Callable[[dict], dict]) -> bool:
        """Read the task's data now, PATCH ``change(data)`` if it differs; whether it changed.
        A failed PATCH is retried by reading the data again: resent as it was, it would put back
        what a user changed since the first read (seconds later, after Label Studio's 503).
        A task deleted meanwhile is left alone; one whose write Label Studio refuses (4xx) is
        recorded in ``refused_writes`` and left as it is, so it does not cost every other task
        its fields (a proxy's body-size limit on a task whose data embeds an image, a validation
        rule of a customised Label Studio)."""
        delays = iter(self.transport.retry_delays)
        try:
            while True:
                before = self.get_task(task_id).get("data") or {}  # the transport retries a read
                after = change(before)
                if after == before:
                    return False
                try:
                    self.request("PATCH", f"/api/tasks/{int(task_id)}/", json={"data": after}, once=True)
                    break
                except LabelStudioUnavailable as exc:
                    delay = next(delays, None)
                    if delay is None:
                        raise
                    log.warning("task %s: %s; reading it again in %.1f s", task_id, exc, delay)
                    time.sleep(delay)
        except LabelStudioRejected as exc:
            if exc.status == 404:
                log.info("task %s was deleted while we published; its fields are skipped", task_id)
                self.deleted_tasks.add(int(task_id))
            else:
                log.warning("Label Studio refused the De-Confusion fields of task %s (%s); the other tasks go on",
                            task_id, exc)
                self.refused_writes[int(task_id)] = str(exc)
            return False
        self.refused_writes.pop(int(task_id), None)
        return True

    def _count_writes(self, tasks: Iterable[int], changed: list[bool]) -> int:
        """How many of ``tasks`` changed; LabelStudioRejected when Label Studio refused the writes
        of REFUSED_ALL or more of them and took none: a systematic refusal (our payload, a
        permission) is an error, not a list of tasks to report."""
        refused = [int(t) for t in tasks if int(t) in self.refused_writes]
        if len(refused) >= REFUSED_ALL and not any(changed):
            raise LabelStudioRejected(
                f"Label Studio refused the De-Confusion fields of all {len(refused)} tasks it was sent "
                f"(task {refused[0]}: {self.refused_writes[refused[0]]})", 400)
        return sum(changed)

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
        """Delete the tabs whose title starts with ``title_prefix`` (ours: ``"De-Confusion: "``,
        colon included, so a user's "De-Confusion notes" stays); returns how many."""
        if not title_prefix:
            raise ValueError("title_prefix must not be empty: it keeps the user's own tabs safe")
        ours = [v for v in self.list_views(project_id) if v["title"].startswith(title_prefix)]
        for view in ours:
            self.request("DELETE", f"/api/dm/views/{view['id']}/")
        return len(ours)


# --- pure helpers ----------------------------------------------------------------------------

def newest_label(annotations: list[dict], spec: ClassSpec) -> str | None:
    """The class chosen in the newest non-cancelled annotation that picks one, or None.
    Newest: latest updated_at (created_at if missing), then highest id (:func:`labeling_annotations`)."""
    labels = labeling_annotations(annotations, spec)
    return labels[-1][2] if labels else None


def labeling_annotations(annotations: list[dict], spec: ClassSpec) -> tuple[tuple[int, int | None, str], ...]:
    """(annotation id, annotator id or None, class) of every non-cancelled annotation that picks a
    class, oldest first (updated_at, else created_at, then id), so the last gives the task's label;
    ``completed_by`` as Label Studio exports it (an id, or a user object with ``id``). All of them,
    not each author's newest: which of them are reviews only the service knows."""
    found = []
    for annotation in annotations:
        label = None if annotation.get("was_cancelled") else _choice(annotation.get("result") or [], spec)
        if label is None:
            continue
        key = (annotation_time(annotation), int(annotation.get("id") or 0))
        found.append((key, (int(annotation.get("id") or 0), annotation_author(annotation), label)))
    return tuple(entry for _, entry in sorted(found, key=lambda kv: kv[0]))


def annotation_author(annotation: Mapping[str, Any]) -> int | None:
    """Who made ``annotation``: ``completed_by`` as Label Studio exports it (an id, or a user
    object with ``id``); None for a deleted user."""
    author = annotation.get("completed_by")
    author = author.get("id") if isinstance(author, dict) else author
    return int(author) if isinstance(author, int) and not isinstance(author, bool) else None


def _choice(result: list[dict], spec: ClassSpec) -> str | None:
    for item in result:
        choices = (item.get("value") or {}).get("choices") or []
        if item.get("from_name") == spec.choices_name and choices:
            return str(choices[0])
    return None


def annotation_time(annotation: Mapping[str, Any]) -> datetime:
    """When Label Studio last saved ``annotation`` (updated_at, else created_at; its own clock)."""
    return timestamp(annotation.get("updated_at") or annotation.get("created_at"))


def timestamp(stamp: Any) -> datetime:
    """An ISO timestamp as an aware datetime; the earliest one for a missing or bad stamp."""
    try:
        when = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _own_keys(data: Mapping[str, Any]) -> dict:
    return {k: v for k, v in data.items() if k in TASK_FIELDS}


def _check_own_keys(keys: Iterable[str]) -> None:
    foreign = sorted(str(k) for k in keys if k not in TASK_FIELDS)
    if foreign:
        raise ValueError(f"task-data keys {foreign} are not the backend's (vocabulary.TASK_FIELDS); "
                         "only its own keys may be written")


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


def _parallel(fn: Callable[[Any], Any], items: list, progress: Callable[[int, int], None] | None = None) -> list:
    """``fn`` over ``items``, WORKERS at a time, results in order; progress(done, total) as they finish."""
    results = []
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        for done, result in enumerate(pool.map(fn, items), 1):
            results.append(result)
            if progress:
                progress(done, len(items))
    return results
