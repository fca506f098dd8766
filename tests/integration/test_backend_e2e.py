"""End to end against a real Label Studio: connect the backend, press Start Training through
the API, then check what a reviewer sees; submit verdicts; analyse again."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import json
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.integration.browser import Browser, login_label_studio
from tests.integration.labelstudio import LOOPBACK, create_annotation, create_user, view_task_ids, whoami

from tests.shapes import CLASSES, pattern
from ml_backend.config import Settings
from ml_backend.errors import LabelStudioTokenRejected
from ml_backend.ls.admin import add_local_storage, connect_ml_backend, ensure_webhook, start_training, \
    update_label_config
from ml_backend.ls.client import LabelStudioClient
from ml_backend.ls.dev_server import free_port, start_backend, wait_for_job
from ml_backend.service.contract import SECRET_HEADER
from ml_backend.views.configs import review_config

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Choices name="label" toName="image" choice="single">
    <Choice value="horizontal"/><Choice value="vertical"/><Choice value="diagonal"/><Choice value="ring"/>
  </Choices>
</View>"""
ROOT = Path(__file__).resolve().parents[2]
PER_CLASS = 45
SWAPPED = 12  # rings labeled "diagonal"
SECOND_ANNOTATOR = "second.labeler@example.org"
DISAGREED = 4  # of the swapped rings, the second annotator labeled this many "ring" (earlier: the label stays)
AGREED = 3  # horizontals the second annotator labeled "horizontal" too


def png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


class ImageHost(http.server.BaseHTTPRequestHandler):
    """Another host serving images by URL; records the headers it receives."""
    images: dict[str, bytes] = {}
    seen_headers: list[dict] = []

    def do_GET(self):
        ImageHost.seen_headers.append(dict(self.headers))
        body = self.images.get(self.path)
        if body is None:
            self.send_error(404)
            return
        etag = f'"{hashlib.sha1(body).hexdigest()}"'
        self.send_response(304 if self.headers.get("If-None-Match") == etag else 200)
        self.send_header("ETag", etag)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        if self.headers.get("If-None-Match") != etag:
            self.wfile.write(body)

    def log_message(self, *args):
        pass


def annotation(label: str) -> dict:
    return {"result": [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]}


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.headers.get("content-type"), resp.read()


@pytest.fixture(scope="module")
def world(label_studio, backend):
    backend_url, settings = backend
    client = LabelStudioClient(settings)  # closed at the end of the module
    rng = np.random.default_rng(0)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ImageHost)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = f"http://127.0.0.1:{server.server_address[1]}"
    folder = label_studio.files / "shapes"
    folder.mkdir(parents=True, exist_ok=True)
    pid = client.create_project("Shapes", CONFIG)
    second = create_user(client, SECOND_ANNOTATOR)
    add_local_storage(client, pid, folder)
    tasks, truth = [], []
    for cls in CLASSES:
        for n in range(PER_CLASS):
            img = pattern(cls, rng)
            label = "diagonal" if cls == "ring" and n < SWAPPED else cls
            if n % 9 == 0:  # some tasks load their image from another host by URL
                ImageHost.images[f"/{cls}-{n}.png"] = png(img)
                url = f"{host}/{cls}-{n}.png"
            else:
                (folder / f"{cls}-{n}.png").write_bytes(png(img))
                url = f"/data/local-files/?d=shapes/{cls}-{n}.png"
            earlier = ([{**annotation(cls), "completed_by": second}]
                       if (cls == "ring" and n < DISAGREED) or (cls == "horizontal" and 0 < n <= AGREED) else [])
            tasks.append({"data": {"image": url, "note": f"user key {cls}-{n}", "split": "val" if n % 7 == 0 else "train"},
                          "annotations": earlier + [annotation(label)]})
            truth.append(cls)
    (folder / "copy.png").write_bytes((folder / "horizontal-1.png").read_bytes())  # an exact duplicate, in val
    tasks.append({"data": {"image": "/data/local-files/?d=shapes/copy.png", "note": "copy", "split": "val"},
                  "annotations": [annotation("horizontal")]})
    truth.append("horizontal")
    tasks.append({"data": {"image": f"{host}/missing.png", "note": "broken"}, "annotations": [annotation("ring")]})
    tasks.append({"data": {"image": "/data/local-files/?d=shapes/horizontal-2.png", "note": "unlabeled"}})
    client.import_tasks(pid, tasks)
    before = {t["id"]: t for t in client.iter_tasks(pid)}
    backend_id = connect_ml_backend(client, pid, backend_url)
    # Label Studio made a webhook to <backend>/webhook; the README tells users to add the secret to it.
    ensure_webhook(client, pid, backend_url + "/webhook", headers={SECRET_HEADER: settings.webhook_secret})
    started = time.perf_counter()
    start_training(client, backend_id)
    job = wait_for_job(backend_url, pid, timeout=600)
    yield {"client": client, "pid": pid, "backend_id": backend_id, "backend": backend_url, "settings": settings,
           "folder": folder,
           "job": job, "before": before, "truth": truth, "seconds": time.perf_counter() - started}
    server.shutdown()
    client.close()


def stored_file(world, *parts: str) -> Path:
    """A file the backend keeps for the world's project under MODEL_DIR."""
    return Path(world["settings"].model_dir).joinpath("projects", str(world["pid"]), *parts)


def stored(world, *parts: str):
    return json.loads(stored_file(world, *parts).read_text())


def predictions_by_version(world) -> dict[str, int]:
    """Label Studio also lists the connected backend's title, with no predictions."""
    return {v: n for v, n in world["client"].model_versions(world["pid"]).items() if n}


def views_by_title(world) -> dict[str, int]:
    return {v["title"]: v["id"] for v in world["client"].list_views(world["pid"])}


def test_analysis_finishes_and_reports_the_unreachable_image(world):
    job = world["job"]
    assert job["status"] == "done", job
    summary = stored(world, "versions", job["model_version"], "analysis.json")["summary"]
    assert summary["images"] == len(world["truth"])
    assert summary["downloads"] == {"fetched": len(world["truth"]), "unchanged": 0}
    assert len(summary["skipped"]) == 1 and "missing.png" in summary["skipped"][0]["reason"]


def test_token_is_never_sent_to_another_host():
    assert ImageHost.seen_headers and not any("Authorization" in h for h in ImageHost.seen_headers)


def test_every_labeled_task_gets_one_prediction_with_the_setup_model_version(world):
    pid = world["pid"]
    version = world["job"]["model_version"]
    assert predictions_by_version(world) == {version: len(world["truth"])}
    status, _, body = get_json(world["backend"] + "/health")
    setup = urllib.request.Request(world["backend"] + "/setup", data=json.dumps({"project": f"{pid}.0"}).encode(),
                                   headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(setup, timeout=3) as resp:
        assert json.loads(resp.read())["model_version"] == version


def test_review_queue_ranks_planted_errors_first_numerically(world):
    client, pid = world["client"], world["pid"]
    tabs = views_by_title(world)
    assert "De-Confusion: review queue" in tabs and "De-Confusion: duplicates" in tabs
    assert "De-Confusion: train/val leakage" in tabs
    assert any(t.startswith("De-Confusion: diagonal → ring (") for t in tabs)
    queue = view_task_ids(client, pid, tabs["De-Confusion: review queue"])
    tasks = {t["id"]: t for t in client.iter_tasks(pid)}
    scores = [tasks[t]["data"]["dc_error_score"] for t in queue]
    assert scores == sorted(scores, reverse=True)
    order = sorted(tasks)  # imported in order: task index i <-> truth[i]
    wrong = {order[i] for i, cls in enumerate(world["truth"]) if cls == "ring"} & {
        t for t in tasks if tasks[t]["annotations"] and  # the first annotator's label: the newest
        tasks[t]["annotations"][-1]["result"][0]["value"]["choices"][0] == "diagonal"}
    assert len(wrong) == SWAPPED
    assert len(wrong & set(queue[:SWAPPED + 3])) >= SWAPPED - 1  # the swapped cell is flagged whole
    leakage = view_task_ids(client, pid, tabs["De-Confusion: train/val leakage"])
    assert {tasks[t]["data"]["note"] for t in leakage} == {"user key horizontal-1", "copy"}


def test_user_data_and_annotations_are_unchanged(world):
    after = {t["id"]: t for t in world["client"].iter_tasks(world["pid"])}
    for task_id, before in world["before"].items():
        user_keys = {k: v for k, v in after[task_id]["data"].items() if not k.startswith("dc_")}
        assert user_keys == before["data"]
        assert [a["result"] for a in after[task_id]["annotations"]] == [a["result"] for a in before["annotations"]]


def test_evidence_images_and_report_are_served(world):
    tasks = [t for t in world["client"].iter_tasks(world["pid"]) if t["data"].get("dc_evidence")]
    assert tasks
    for src in re.findall(r'src="([^"]+)"', tasks[0]["data"]["dc_evidence"])[:4]:
        status, kind, body = get_json(src.replace("&amp;", "&"))
        assert status == 200 and kind == "image/png" and body[:4] == b"\x89PNG"
    status, kind, body = get_json(f"{world['backend']}/report/{world['pid']}")
    assert status == 200 and b"De-Confusion progress" in body
    # the task whose image is gone is named on the project manager's page, not only in a log
    assert b"Left out of iteration" in body and b"missing.png" in body and b"HTTP 404" in body


def test_overview_project_has_one_task_per_cell(world):
    overview = list(world["client"].iter_tasks(stored(world, "project.json")["overview_project"]))
    analysis = stored(world, "versions", world["job"]["model_version"], "analysis.json")
    assert len(overview) == len(analysis["cells"]) > 0
    first = min(overview, key=lambda t: t["data"]["dc_order"])
    assert first["data"]["dc_cell"] == "diagonal → ring" and "data:" not in first["data"]["html"]


def backend_images_loaded(page: Browser, backend: str, timeout: float = 60) -> tuple[int, int]:
    """Wait until the page shows images from the backend and every one of them has loaded."""
    probe = (f"(() => {{ const i = [...document.images].filter(x => x.src.startsWith({json.dumps(backend)}));"
             " const ok = i.filter(x => x.complete && x.naturalWidth > 0).length;"
             " return i.length > 0 && ok === i.length ? [ok, i.length] : null; })()")
    return tuple(page.wait_for(probe, timeout))


@pytest.mark.browser
def test_a_browser_shows_the_overview_a_review_task_and_the_report_with_their_images(world, label_studio, chromium,
                                                                                      tmp_path):
    """Inside the real Label Studio UI, logged in as a reviewer: the overview project's first cell,
    a flagged task with the review panel installed, then the report page. Every image they show
    must load from the backend. Screenshots go to test-artifacts/."""
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    client, pid, backend = world["client"], world["pid"], world["backend"]
    update_label_config(client, pid, review_config(client.get_project(pid)["label_config"]))
    task = next(t for t in client.iter_tasks(pid) if t["data"].get("dc_evidence"))
    info = stored(world, "project.json")
    cell = min(client.iter_tasks(info["overview_project"]), key=lambda t: t["data"]["dc_order"])
    with Browser(chromium, tmp_path / "profile") as page:
        login_label_studio(page, label_studio.url, label_studio.username, label_studio.password)
        pages = {"overview-cell": f"{label_studio.url}/projects/{info['overview_project']}/data?task={cell['id']}",
                 "review-task": f"{label_studio.url}/projects/{pid}/data?task={task['id']}",
                 "report": f"{backend}/report/{pid}"}
        for name, url in pages.items():
            page.goto(url)
            loaded, total = backend_images_loaded(page, backend)
            assert loaded == total > 0
            page.screenshot(artifacts / f"{name}.png")
        page.goto(pages["review-task"])
        # The panel renders in steps: wait until its header and the verdict control both show.
        page.wait_for("document.body.innerText.includes('why this image was flagged') && "
                      "document.body.innerText.includes('Take model label')")


def tasks_once_reviewed(client, pid: int, task_ids: list[int], timeout: float = 30) -> dict[int, dict]:
    """The project's tasks by id, once the backend has marked all of ``task_ids`` reviewed (or time is up)."""
    deadline = time.monotonic() + timeout
    while True:
        tasks = {t["id"]: t for t in client.iter_tasks(pid)}
        if all(tasks[t]["data"].get("dc_reviewed") for t in task_ids) or time.monotonic() > deadline:
            return tasks
        time.sleep(0.5)


def test_annotators_who_disagree_get_a_consensus_tab_and_the_report_names_them(world):
    client, pid = world["client"], world["pid"]
    tab = view_task_ids(client, pid, views_by_title(world)["De-Confusion: annotators disagree"])
    tasks = {t["id"]: t for t in client.iter_tasks(pid)}
    disagreed = {t for t, task in tasks.items()
                 if task["data"]["note"] in {f"user key ring-{n}" for n in range(DISAGREED)}}
    assert set(tab) == disagreed
    assert all(tasks[t]["data"]["dc_consensus"] == "ring" for t in tab)  # the model sides with the second annotator
    assert all(tasks[t]["annotations"][-1]["result"][0]["value"]["choices"] == ["diagonal"] for t in tab)  # untouched
    annotators = {a["name"]: a for a in json.loads(get_json(f"{world['backend']}/report/{pid}.json")[2])["annotators"]}
    assert annotators[SECOND_ANNOTATOR]["labels"] == DISAGREED + AGREED
    admin = annotators[whoami(client)["email"]]
    assert admin["labels"] == len(world["truth"]) and admin["flagged"] >= SWAPPED - 2


def test_verdicts_leave_the_queue_and_the_second_run_replaces_the_first(world):
    client, pid = world["client"], world["pid"]
    queue = view_task_ids(client, pid, views_by_title(world)["De-Confusion: review queue"])
    reviewed = queue[:3]
    for task_id in reviewed:  # a reviewer takes the model's label
        suggested = client.request("GET", f"/api/tasks/{task_id}/")["data"]["dc_suggested"]
        create_annotation(client, task_id, annotation(suggested)["result"])
    tasks = tasks_once_reviewed(client, pid, reviewed)
    assert all(tasks[t]["data"]["dc_reviewed"] == "relabeled_to_model" and tasks[t]["data"]["dc_candidate"] == 0
               for t in reviewed)
    # Whole-cell relabel as the README tells reviewers: the cell's tab, select all, Actions ->
    # Create Annotations From Predictions, our model version; one ANNOTATIONS_CREATED for the batch.
    first_version = world["job"]["model_version"]
    title, cell_tab = next((t, v) for t, v in views_by_title(world).items()
                           if t.startswith("De-Confusion: diagonal → ring ("))
    cell = view_task_ids(client, pid, cell_tab)
    assert len(cell) >= 5 and not set(reviewed) & set(cell)  # reviewed images left the cell's tab too
    assert "relabel together" in title  # the flagged cell's tab: only the part the model is surest about
    data = {t["id"]: t["data"] for t in client.iter_tasks(pid)}
    assert {t for t, d in data.items() if d.get("dc_together") == 1 and d.get("dc_unreviewed") == 1} == set(cell)
    client.request("POST", "/api/dm/actions", params={"id": "predictions_to_annotations", "project": pid},
                   json={"project": pid, "selectedItems": {"all": False, "included": cell},
                         "model_version": first_version})
    tasks = tasks_once_reviewed(client, pid, cell)
    assert all(tasks[t]["data"].get("dc_reviewed") == "relabeled_to_model" for t in cell)
    assert all(tasks[t]["annotations"][-1]["result"][0]["value"]["choices"] == ["ring"] for t in cell)
    # Every DECONFUSION_RERANK_AFTER (5 here) verdicts re-rank the rest without retraining; the
    # report shows how many of the reviewed labels were wrong on this ranking.
    reranks = wait_until(lambda: stored_file(world, "reranks.json").exists() and stored(world, "reranks.json"))
    assert reranks and reranks[-1]["model_version"] == first_version and reranks[-1]["verdicts"] >= 5
    first = json.loads(get_json(f"{world['backend']}/report/{pid}.json")[2])["iterations"][0]
    assert first["reviewed"] == first["found_wrong"] == len(reviewed) + len(cell) and first["queue_precision"] == 1.0
    titles_before = sorted(views_by_title(world))
    first_overview = stored(world, "project.json")["overview_project"]
    vanished = world["folder"] / "vertical-5.png"  # deleted from disk between the runs
    kept = vanished.read_bytes()
    vanished.unlink()
    try:
        start_training(client, world["backend_id"])
        time.sleep(1)
        job = wait_for_job(world["backend"], pid, timeout=600)
        assert job["status"] == "done" and job["model_version"] != first_version
        # Pressed again with nothing changed: the published analysis stands, nothing is rewritten.
        predictions = predictions_by_version(world)
        start_training(client, world["backend_id"])
        time.sleep(1)
        again = wait_for_job(world["backend"], pid, timeout=600)
    finally:
        vanished.write_bytes(kept)
    assert again["status"] == "done" and again["model_version"] == job["model_version"]
    assert "nothing changed" in again["message"] and again["duration_seconds"] < job["duration_seconds"] / 2
    assert predictions_by_version(world) == predictions
    summary = stored(world, "versions", job["model_version"], "analysis.json")["summary"]
    assert summary["downloads"] == {"fetched": 0, "unchanged": len(world["truth"]) - 1}  # only asked, 304 each
    assert any("vertical-5.png" in s["reason"] and "HTTP 404" in s["reason"] for s in summary["skipped"])
    # when the newest label it read was saved, in Label Studio's clock: verdicts saved later are newer
    newest = max(a["updated_at"] for t in client.export_tasks(pid) for a in t["annotations"])
    assert datetime.fromisoformat(summary["labels_as_of"]) <= datetime.fromisoformat(newest.replace("Z", "+00:00"))
    assert list(predictions_by_version(world)) == [job["model_version"]]  # old predictions replaced, not piled up
    titles = [v["title"] for v in client.list_views(pid)]
    fixed = ("review queue", "duplicates", "train/val leakage", "excluded")
    assert all(titles.count(f"De-Confusion: {name}") == 1 for name in fixed)  # replaced, not piled up
    assert len([t for t in titles if t.startswith("De-Confusion") and "→" in t]) <= world["settings"].max_cell_tabs
    assert len(titles) <= len(titles_before)
    queue = view_task_ids(client, pid, views_by_title(world)["De-Confusion: review queue"])
    assert not set(reviewed) & set(queue)
    cells = stored(world, "versions", job["model_version"], "analysis.json")["cells"]
    assert stored(world, "project.json")["overview_project"] == first_overview  # reused
    overview = list(client.iter_tasks(first_overview))
    assert [t["data"]["dc_version"] for t in overview] == [job["model_version"]] * max(len(cells), 1)
    assert cells or overview[0]["data"]["dc_cell"] == "No disagreements"  # a clean set says so
    history = json.loads(get_json(f"{world['backend']}/report/{pid}.json")[2])["iterations"]
    assert [h["iteration"] for h in history] == [1, 2]
    assert history[1]["verdicts"]["relabeled_to_model"] == len(reviewed) + len(cell)


def post_webhook(backend_url: str, body: dict, secret: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({SECRET_HEADER: secret} if secret else {})}
    request = urllib.request.Request(backend_url + "/webhook", data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def verdict_of(world, task_id: int) -> dict | None:
    path = stored_file(world, "verdicts.json")
    return json.loads(path.read_text()).get(str(task_id)) if path.exists() else None


def wait_until(check, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not (found := check()) and time.monotonic() < deadline:
        time.sleep(0.3)
    return found


def test_made_up_annotation_events_change_no_verdict(world, label_studio):
    client, pid, url, secret = world["client"], world["pid"], world["backend"], world["settings"].webhook_secret
    task_id = next(t["id"] for t in client.iter_tasks(pid)
                   if t["data"]["note"].startswith("user key") and verdict_of(world, t["id"]) is None)
    forged = {"action": "ANNOTATION_CREATED", "project": {"id": pid},
              "annotation": {"id": 987654, "task": task_id, "result": annotation("ring")["result"]}}
    status, answer = post_webhook(url, forged)
    assert status == 401 and SECRET_HEADER in answer["error"]
    assert post_webhook(url, forged, secret) == (200, {"status": "ok", "verdicts": 0, "ignored": 1})
    other = client.create_project("someone else's project", CONFIG)
    other_task = client.import_tasks(other, [{"data": {"image": "/data/local-files/?d=shapes/ring-1.png"}}])[0]
    foreign = create_annotation(client, other_task, annotation("ring")["result"])
    forged["annotation"]["id"] = foreign  # a real annotation, of another project
    assert post_webhook(url, forged, secret)[1]["verdicts"] == 0 and verdict_of(world, task_id) is None

    # A reviewer's real annotation counts; a made-up deletion of it does not; the real deletion does.
    label = client.request("GET", f"/api/tasks/{task_id}/")["annotations"][-1]["result"][0]["value"]["choices"][0]
    real = create_annotation(client, task_id, annotation(label)["result"])
    assert wait_until(lambda: verdict_of(world, task_id))["verdict"] == "kept"
    deleted = {"action": "ANNOTATIONS_DELETED", "project": {"id": pid}, "annotations": [{"id": real}]}
    assert post_webhook(url, deleted, secret) == (200, {"status": "ok", "forgotten": 0})
    assert verdict_of(world, task_id)["annotation_id"] == real
    assert wait_until(lambda: client.get_task(task_id)["data"].get("dc_reviewed") == "kept")
    client.request("DELETE", f"/api/annotations/{real}/")
    assert wait_until(lambda: verdict_of(world, task_id) is None)
    # the task is unreviewed again: back in the cell tabs (and the queue, were it a candidate)
    data = wait_until(lambda: (d := client.get_task(task_id)["data"]).get("dc_unreviewed") == 1 and d)
    assert data and data["dc_reviewed"] == "" and data["dc_excluded"] == 0


def test_training_for_a_project_label_studio_does_not_have_writes_nothing(world):
    status, answer = post_webhook(world["backend"], {"action": "START_TRAINING", "project": {"id": 424242}})
    assert status == 404 and "no project 424242" in answer["error"]
    assert not (Path(world["settings"].model_dir) / "projects" / "424242").exists()


def press_start_training(backend_url: str, project_id: int) -> None:
    """What Label Studio posts to the backend when someone presses Start Training."""
    request = urllib.request.Request(backend_url + "/webhook", data=json.dumps(
        {"action": "START_TRAINING", "project": {"id": project_id}}).encode(), headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=5)


@pytest.mark.parametrize("case", ["two_images", "no_labels", "wrong_token", "ls_down"])
def test_bad_projects_and_outages_give_a_clear_status_and_the_service_stays_up(case, world, label_studio, tmp_path):
    client = world["client"]
    config = CONFIG if case != "two_images" else CONFIG.replace(
        '<Image name="image" value="$image"/>', '<Image name="image" value="$image"/><Image name="b" value="$b"/>')
    pid = client.create_project(f"bad {case}", config)
    if case != "no_labels":
        client.import_tasks(pid, [{"data": {"image": "/data/local-files/?d=shapes/ring-1.png", "b": "x"},
                                   "annotations": [annotation("ring")]}])
    overrides = {"wrong_token": {"label_studio_api_key": "0" * 40},
                 "ls_down": {"label_studio_url": f"http://127.0.0.1:{free_port()}"}}.get(case, {})
    port = free_port()
    values = {"label_studio_url": label_studio.url, "label_studio_api_key": label_studio.token, **overrides}
    settings = Settings.from_env({}, model_dir=str(tmp_path), port=port, **values)
    expected = {"two_images": "2 <Image> tags", "no_labels": "no readable labeled images",
                "wrong_token": "rejected the token", "ls_down": "did not answer"}[case]
    with start_backend(settings) as url:
        press_start_training(url, pid)
        job = wait_for_job(url, pid, timeout=120)
        assert job["status"] == "failed" and expected in job["message"] and "Traceback" not in job["message"]
        assert get_json(url + "/health")[0] == 200


class CuttableProxy:
    """A TCP forwarder to Label Studio that can be cut, as a network or server outage would."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit("//", 1)[1].split(":")
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # cut
                return
            server = socket.create_connection(self.upstream)
            self.open += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.listener.close()
        for sock in self.open:
            with contextlib.suppress(OSError):
                sock.close()


def test_label_studio_going_down_mid_job_fails_the_job_clearly_and_the_service_stays_up(world, label_studio,
                                                                                         tmp_path):
    proxy = CuttableProxy(label_studio.url)
    port = free_port()
    settings = Settings.from_env({}, model_dir=str(tmp_path), port=port, label_studio_url=proxy.url,
                                 label_studio_api_key=label_studio.token, download_allow=LOOPBACK)
    with start_backend(settings, extra_env={"DOWNLOAD_ALLOW": LOOPBACK}) as url:  # the world's image host
        press_start_training(url, world["pid"])
        deadline = time.monotonic() + 120
        while json.loads(get_json(f"{url}/jobs/{world['pid']}")[2]).get("stage") in (None, "starting", "download",
                                                                                     "decode"):
            assert time.monotonic() < deadline, "the analysis never reached training"
            time.sleep(0.2)
        proxy.cut()  # images are in; Label Studio vanishes before anything is published
        job = wait_for_job(url, world["pid"], timeout=180)
        assert job["status"] == "failed" and "did not answer" in job["message"], job
        assert "Traceback" not in job["message"]
        assert get_json(url + "/health")[0] == 200


def test_personal_access_tokens_work_and_bad_tokens_are_refused(world, label_studio):
    client = world["client"]
    pat = client.request("POST", "/api/token/")
    token = pat.get("token") if isinstance(pat, dict) else None
    assert token, f"this Label Studio did not issue a personal access token: {pat}"
    settings = world["settings"].replace(label_studio_api_key=token)
    with LabelStudioClient(settings) as with_pat:
        assert with_pat.get_project(world["pid"])["id"] == world["pid"]
    with pytest.raises(LabelStudioTokenRejected, match="rejected the token"), \
            LabelStudioClient(world["settings"].replace(label_studio_api_key="f" * 40)) as refused:
        whoami(refused)


def test_a_task_added_after_the_analysis_gets_a_class_name_from_the_saved_models(world):
    """Label Studio asks the connected backend (/predict) for a task without predictions when it
    is opened; the answer comes from the saved fold models and names a class, not its index."""
    client, pid = world["client"], world["pid"]
    version = client.request("GET", f"/api/ml/{world['backend_id']}")["model_version"]
    new = client.import_tasks(pid, [{"data": {"image": "/data/local-files/?d=shapes/ring-3.png", "note": "new"}}])[0]
    client.request("GET", f"/api/tasks/{new}/")  # what opening it in the labeling view does
    predictions = wait_until(lambda: client.request("GET", "/api/predictions/", params={"task": new}))
    assert [p["model_version"] for p in predictions] == [version]
    assert predictions[0]["result"][0]["value"]["choices"][0] in CLASSES


def test_unpublish_takes_out_everything_the_backend_wrote_and_nothing_else(world):
    """Runs last: `python -m ml_backend unpublish` against the real server, first with a stale
    overview id that now names a user's project (which must survive), then for real."""
    client, pid, settings = world["client"], world["pid"], world["settings"]
    other = {"task": min(world["before"]), "result": annotation("ring")["result"], "model_version": "someone-else"}
    client.create_predictions(pid, [other])
    keep = client.create_project("user project", CONFIG)
    client.import_tasks(keep, [{"data": {"image": "/x/keep.png"}}])
    info_file = stored_file(world, "project.json")
    info = stored(world, "project.json")
    env = {"LABEL_STUDIO_URL": settings.label_studio_url, "LABEL_STUDIO_API_KEY": settings.label_studio_api_key,
           "MODEL_DIR": settings.model_dir, "PATH": "/usr/bin:/bin"}

    def unpublish() -> dict:
        done = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "ml_backend", "unpublish", "--project",
                               str(pid)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    info_file.write_text(json.dumps({**info, "overview_project": keep}))  # stale: ids were reused
    assert unpublish()["overview_project"] is None
    assert len(list(client.iter_tasks(keep))) == 1 and client.project_exists(info["overview_project"])
    info_file.write_text(json.dumps(info))
    again = unpublish()
    assert again["overview_project"] == info["overview_project"] and again["prediction_versions"] == []
    assert predictions_by_version(world) == {"someone-else": 1}
    assert not any(t.startswith("De-Confusion") for t in views_by_title(world))
    assert not client.project_exists(info["overview_project"]) and len(list(client.iter_tasks(keep))) == 1
    after = {t["id"]: t for t in client.iter_tasks(pid)}
    assert not any(k.startswith("dc_") for t in after.values() for k in t["data"])
    for task_id, before in world["before"].items():
        assert after[task_id]["data"] == before["data"]
        assert [a["result"] for a in after[task_id]["annotations"]][:len(before["annotations"])] == \
            [a["result"] for a in before["annotations"]]
