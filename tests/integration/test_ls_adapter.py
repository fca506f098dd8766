"""The Label Studio adapter against a real Label Studio 1.23 (no mocks): labeled records and
image downloads from every kind of source, token handling, predictions, our task fields,
Data Manager tabs, webhooks and the ML-backend connection."""

from __future__ import annotations

import io
import json
import shutil
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from ml_backend.config import Settings
from ml_backend.errors import LabelStudioRejected, LabelStudioTokenRejected, LabelStudioUnavailable
from ml_backend.ls import media as media_module
from ml_backend.ls.admin import add_local_storage, connect_ml_backend, ensure_webhook, start_training
from ml_backend.ls.client import LabelStudioClient
from ml_backend.ls.media import ImageFetchError
from ml_backend.ls.schema import parse_label_config
from ml_backend.vocabulary import OUR_TABS
from tests.components import missing
from tests.integration.labelstudio import (LOOPBACK, ImageHost, Route, create_annotation, create_user, free_port,
                                           png_bytes, upload_images, view_task_ids, whoami)

CONFIG = """<View>
  <Image name="picture" value="$img"/>
  <Choices name="shape" toName="picture" choice="single">
    <Choice value="circle"/><Choice value="square"/><Choice value="triangle"/>
  </Choices>
</View>"""
MAX_BYTES = 100_000
TIMEOUT = 1.5


def pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (12, 10, 3), dtype=np.uint8)


def choice(label: str) -> list[dict]:
    return [{"from_name": "shape", "to_name": "picture", "type": "choices", "value": {"choices": [label]}}]


@pytest.fixture(scope="module")
def host():
    """Another origin: good PNGs, a 404, an HTML page, an oversized and a slow file, redirects."""
    routes = {
        "/url-good.png": Route(body=png_bytes(pixels(10)), etag='"good-1"'),
        "/url-octet.png": Route(content_type="application/octet-stream", body=png_bytes(pixels(11))),
        "/redirect": Route(status=302, location="/url-target.png", content_type="text/plain"),
        "/url-target.png": Route(body=png_bytes(pixels(12)), etag='"target-1"'),
        "/page.html": Route(content_type="text/html; charset=utf-8", body=b"<html>login</html>"),
        "/huge.png": Route(body=b"\x89PNG\r\n\x1a\n" + bytes(MAX_BYTES * 2)),
        "/slow.png": Route(body=png_bytes(pixels(13)), delay=TIMEOUT + 2),
    }
    with ImageHost(routes) as running:
        yield running


@pytest.fixture(scope="module")
def world(label_studio, host, tmp_path_factory):
    settings = Settings(label_studio_url=label_studio.url, label_studio_api_key=label_studio.token,
                        download_timeout=TIMEOUT, max_image_bytes=MAX_BYTES, download_allow=LOOPBACK)
    client = LabelStudioClient(settings)  # closed at the end of the module
    pid = client.create_project("adapter", CONFIG)
    spec = parse_label_config(client.get_project(pid)["label_config"])

    uploaded = upload_images(client, pid, [(f"up{i}.png", png_bytes(pixels(i))) for i in range(5)])
    folder = label_studio.files / "adapter"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "local.png").write_bytes(png_bytes(pixels(20)))
    add_local_storage(client, pid, folder)
    names = ["url-good", "url-octet", "redirect", "missing", "html", "huge", "slow", "s3", "local"]
    urls = [f"{host.url}/url-good.png", f"{host.url}/url-octet.png", f"{host.url}/redirect",
            f"{host.url}/missing.png", f"{host.url}/page.html", f"{host.url}/huge.png", f"{host.url}/slow.png",
            "s3://no-such-bucket/x.png", "/data/local-files/?d=adapter/local.png"]
    imported = client.import_tasks(pid, [{"data": {"img": url, "note": name, "split": "val" if n % 2 else "train"}}
                                         for n, (name, url) in enumerate(zip(names, urls))])
    tasks = dict(zip([f"up{i}" for i in range(5)] + names, uploaded + imported))
    assert len(tasks) == 14 and len(set(tasks.values())) == 14

    client.request("PATCH", f"/api/tasks/{tasks['up1']}/", json={"data": {
        **client.get_task(tasks["up1"])["data"], "split": "val"}})
    create_annotation(client, tasks["up0"], choice("circle"))
    create_annotation(client, tasks["up1"], choice("square"))  # older
    create_annotation(client, tasks["up1"], choice("circle"))  # newer: wins
    first = create_annotation(client, tasks["up2"], choice("square"))
    create_annotation(client, tasks["up2"], choice("circle"))
    time.sleep(0.05)
    client.request("PATCH", f"/api/annotations/{first}/", json={"result": choice("triangle")})  # updated last: wins
    create_annotation(client, tasks["up3"], choice("circle"), was_cancelled=True)  # cancelled only: unlabeled
    create_annotation(client, tasks["up4"], choice("triangle"))
    create_annotation(client, tasks["up4"], choice("circle"), was_cancelled=True)  # newer but cancelled
    second_annotator = create_user(client, "second.annotator@example.org")
    create_annotation(client, tasks["url-good"], choice("circle"), completed_by=second_annotator)  # older: loses
    for name in names:
        create_annotation(client, tasks[name], choice("square"))
    cache = tmp_path_factory.mktemp("cache")
    seen_before = len(host.seen)
    first = client.labeled_records(pid, spec, cache)
    records, skipped = first.records, first.skipped
    yield {"client": client, "pid": pid, "spec": spec, "tasks": tasks, "records": records, "skipped": skipped,
           "first_fetched": first.fetched,
           "cache": cache, "settings": settings, "host_requests": len(host.seen) - seen_before}
    client.close()


def by_task(world) -> dict[str, object]:
    names = {v: k for k, v in world["tasks"].items()}
    return {names[r.task_id]: r for r in world["records"]}


def test_each_annotators_label_comes_with_who_made_it(world):
    record = by_task(world)["url-good"]
    names = world["client"].user_names()
    authors = {names[str(author)]: label for _, author, label in record.annotations}
    admin = whoami(world["client"])["email"]
    assert authors == {"second.annotator@example.org": "circle", admin: "square"}
    assert record.label == "square"  # the newest annotation still gives the label
    # every labeling annotation, each once: up1 and up2 were labeled twice, up3 only cancelled
    counts = {name: len(r.annotations) for name, r in by_task(world).items() if name.startswith("up")}
    assert counts == {"up0": 1, "up1": 2, "up2": 2, "up4": 1}


def test_labels_follow_the_newest_non_cancelled_annotation(world):
    records = by_task(world)
    assert {name: r.label for name, r in records.items() if name.startswith("up")} == {
        "up0": "circle", "up1": "circle", "up2": "triangle", "up4": "triangle"}
    assert "up3" not in records


def test_records_carry_item_split_task_id_and_a_decodable_cached_image(world):
    records = by_task(world)
    assert set(records) == {"up0", "up1", "up2", "up4", "url-good", "url-octet", "redirect", "local"}
    expected = {"up0": pixels(0), "up1": pixels(1), "up2": pixels(2), "up4": pixels(4), "url-good": pixels(10),
                "url-octet": pixels(11), "redirect": pixels(12), "local": pixels(20)}
    for name, record in records.items():
        assert record.item == f"task-{record.task_id}" and record.task_id == world["tasks"][name]
        assert str(record.source).startswith(str(world["cache"]))
        with Image.open(record.source) as img:
            assert np.array_equal(np.asarray(img), expected[name]), name
    assert records["up1"].split == "val" and records["up0"].split == "train"
    assert records["url-octet"].split == "val" and records["url-good"].split == "train"


@pytest.mark.parametrize("name, cause", [
    ("missing", "HTTP 404"),
    ("html", "not an image (Content-Type text/html)"),
    ("huge", f"MAX_IMAGE_BYTES={MAX_BYTES}"),
    ("slow", "timed out"),
    ("s3", "connect the cloud storage"),
])
def test_bad_images_become_skipped_items_naming_task_url_and_cause(world, name, cause):
    task_id = world["tasks"][name]
    reasons = {s.item: s.reason for s in world["skipped"]}
    reason = reasons[f"task-{task_id}"]
    assert f"task {task_id}" in reason and cause in reason
    assert ("no-such-bucket" if name == "s3" else name.split("-")[0]) in reason


def test_token_goes_only_to_label_studio(world, host):
    assert host.seen, "the image host was never asked"
    assert not [path for path, headers in host.seen if any(k.lower() in ("authorization", "cookie") for k in headers)]
    assert host.requests_for("/url-target.png")  # the redirect was followed, without the token


def test_cookies_label_studio_sets_never_reach_another_host(host):
    """Cookies ignore ports: one Label Studio set on 127.0.0.1 would ride along to every other
    127.0.0.1 host an image URL names, unless the download client keeps none."""
    media = {"/data/upload/1/a.png": Route(body=png_bytes(pixels(30)), cookie="sessionid=secret; Path=/")}
    with ImageHost(media) as label_studio:
        client = LabelStudioClient(Settings(label_studio_url=label_studio.url, label_studio_api_key="0" * 40,
                                            download_allow=LOOPBACK))
        assert client.media.download("/data/upload/1/a.png", task_id=1) == media["/data/upload/1/a.png"].body
        before = len(host.seen)
        client.media.download(f"{host.url}/url-good.png", task_id=2)
    assert [k for _, headers in host.seen[before:] for k in headers if k.lower() in ("cookie", "authorization")] == []


def elsewhere(port: int = 0) -> Settings:
    """Settings for downloads from ``host`` alone: Label Studio (never asked) on another port."""
    return Settings(label_studio_url=f"http://127.0.0.1:{port or free_port()}", label_studio_api_key="0" * 40,
                    download_timeout=TIMEOUT, max_image_bytes=MAX_BYTES)


def test_private_hosts_are_refused_unless_download_allow_names_them(host):
    url = f"{host.url}/url-good.png"
    before = len(host.requests_for("/url-good.png"))
    with pytest.raises(ImageFetchError, match=r"127\.0\.0\.1 is not a public address \(loopback\).*DOWNLOAD_ALLOW"):
        LabelStudioClient(elsewhere()).media.download(url, task_id=1)
    assert len(host.requests_for("/url-good.png")) == before  # refused before connecting
    localhost = url.replace("127.0.0.1", "localhost")
    with pytest.raises(ImageFetchError, match=r"localhost resolves to (127\.0\.0\.1|::1), which is not a public"):
        LabelStudioClient(elsewhere()).media.download(localhost, task_id=1)
    for allow, target in [("127.0.0.1", url), ("127.0.0.0/8", url), ("10.0.0.0/8, localhost", localhost)]:
        client = LabelStudioClient(elsewhere().replace(download_allow=allow))
        assert client.media.download(target, task_id=1) == host.routes["/url-good.png"].body, allow
    assert host.requests_for("/url-good.png")[-1]["Host"] == localhost.split("/")[2]  # the name, not the address


def test_every_redirect_hop_is_checked(host):
    """A host the policy allows (here by name) redirects into loopback, or to a cloud metadata
    service: the next hop is refused, unasked. The same holds for Label Studio's own origin."""
    host.routes["/to-loopback"] = Route(status=302, location=f"{host.url}/url-good.png", content_type="text/plain")
    host.routes["/to-metadata"] = Route(status=307, location="http://169.254.169.254/latest/meta-data/",
                                        content_type="text/plain")
    allowed_by_name = host.url.replace("127.0.0.1", "localhost")
    client = LabelStudioClient(elsewhere().replace(download_allow="localhost"))
    before = len(host.requests_for("/url-good.png"))
    with pytest.raises(ImageFetchError, match=r"^127\.0\.0\.1 is not a public address \(loopback\)"):
        client.media.download(f"{allowed_by_name}/to-loopback", task_id=1)
    with pytest.raises(ImageFetchError, match="169.254.169.254 is a cloud metadata service"):
        client.media.download(f"{allowed_by_name}/to-metadata", task_id=1)
    assert host.requests_for("/to-loopback") and len(host.requests_for("/url-good.png")) == before
    as_label_studio = LabelStudioClient(elsewhere(port=int(host.url.rsplit(":", 1)[1])))  # host is its own origin
    with pytest.raises(ImageFetchError, match="169.254.169.254 is a cloud metadata service"):
        as_label_studio.media.download("/to-metadata", task_id=1)


def test_download_timeout_bounds_a_server_that_trickles(host):
    """One byte every 0.2 s: no read ever times out, yet the call ends at DOWNLOAD_TIMEOUT."""
    host.routes["/trickle.png"] = Route(body=png_bytes(pixels(40))[:60], trickle=0.2)
    client = LabelStudioClient(elsewhere().replace(download_allow=LOOPBACK, download_timeout=2))
    started = time.monotonic()
    with pytest.raises(ImageFetchError, match="timed out after 2 s"):
        client.media.download(f"{host.url}/trickle.png", task_id=1)
    assert time.monotonic() - started < 3


def test_https_at_the_checked_address_still_verifies_the_certificate_for_the_name(tmp_path, monkeypatch):
    """Downloads connect to the address the policy checked, but TLS (SNI and the certificate
    check) and the Host header still use the name in the URL."""
    if shutil.which("openssl") is None:
        missing("the openssl command", "apt-get install openssl (it makes the test certificate)")
    image = png_bytes(pixels(41))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(image)))
            self.send_header("X-Host-Seen", self.headers["Host"])
            self.end_headers()
            self.wfile.write(image)

        def log_message(self, *args):
            pass

    def served_with_certificate_for(name: str) -> tuple[ThreadingHTTPServer, ssl.SSLContext]:
        cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}", "-keyout", str(key), "-out",
                        str(cert)], check=True, capture_output=True)
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)
        server.socket = tls.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server, ssl.create_default_context(cafile=str(cert))

    for name, works in [("localhost", True), ("other.test", False)]:
        server, trust = served_with_certificate_for(name)
        monkeypatch.setattr(media_module, "_tls", lambda context=trust: context)  # trust this certificate alone
        client = LabelStudioClient(elsewhere().replace(download_allow="localhost"))
        url = f"https://localhost:{server.server_address[1]}/a.png"
        try:
            if works:
                assert client.media.download(url, task_id=1) == image
            else:
                with pytest.raises(ImageFetchError, match="CERTIFICATE_VERIFY_FAILED.*not valid for 'localhost'"):
                    client.media.download(url, task_id=1)
        finally:
            server.shutdown()


def test_token_goes_only_to_label_studios_media_routes(world, host, label_studio):
    """An image URL naming Label Studio's API, directly or through a redirect, is fetched without
    the token, so Label Studio refuses it: no API answer becomes an "image"."""
    client = world["client"]
    host.routes["/to-api"] = Route(status=302, location=f"{label_studio.url}/api/projects/", content_type="text/plain")
    for url in ("/api/projects/", f"{label_studio.url}/api/projects/", f"{host.url}/to-api",
                "/data/upload/../../api/projects/", "/data/upload/%2e%2e/%2e%2e/api/projects/"):
        with pytest.raises(ImageFetchError, match=r"HTTP 401: \S*/api/projects/ is not one of Label Studio's "
                                                  "media routes.*so it gets no token"):
            client.media.download(url, task_id=1)
    tasks = {t["id"]: t for t in client.iter_tasks(world["pid"])}
    for name, seed in (("up0", 0), ("local", 20)):  # its media routes still get the token
        data = client.fetch_image(tasks[world["tasks"][name]], world["spec"])
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), pixels(seed)), name


def test_a_second_run_asks_whether_images_changed_and_downloads_only_those_that_did(world, host, label_studio):
    """Label Studio's local files and hosts that send an ETag answer 304 to the second run; an image
    replaced on its host is fetched again; one deleted since is reported and skipped."""
    assert world["first_fetched"] == len(world["records"])
    local = label_studio.files / "adapter" / "local.png"
    kept, target = local.read_bytes(), host.routes["/url-target.png"]
    before = len(host.seen)
    try:
        host.routes["/url-target.png"] = Route(body=png_bytes(pixels(30)), etag='"target-2"')
        local.unlink()
        again = world["client"].labeled_records(world["pid"], world["spec"], world["cache"])
    finally:
        local.write_bytes(kept)
        host.routes["/url-target.png"] = target
    asked = dict(host.seen[before:])
    assert asked["/url-good.png"].get("If-None-Match") == '"good-1"'  # asked, answered 304, not downloaded
    assert asked["/url-target.png"].get("If-None-Match") == '"target-1"'
    by_name = {name: r for name, r in by_task({**world, "records": again.records}).items()}
    with Image.open(by_name["redirect"].source) as img:
        assert np.array_equal(np.asarray(img), pixels(30))  # the replaced image, not the cached one
    reason = {s.item: s.reason for s in again.skipped}[f"task-{world['tasks']['local']}"]
    assert "local.png" in reason and "HTTP 404" in reason
    # fetched: the replaced image and url-octet, whose host sends no ETag; the rest answered 304 or,
    # uploads to Label Studio (named uniquely, never rewritten), were not asked for
    assert (again.fetched, again.unchanged) == (2, len(world["records"]) - 3)
    restored = world["client"].labeled_records(world["pid"], world["spec"], world["cache"])
    assert "local" in by_task({**world, "records": restored.records})  # back, fetched again


def test_local_files_read_from_disk_are_the_files_label_studio_serves(world, label_studio, tmp_path):
    """With LOCAL_FILES_DOCUMENT_ROOT the backend reads Label Studio's local files itself: the same
    bytes as over HTTP, and on the second run nothing is read or asked about for them."""
    settings = world["settings"].replace(local_files_root=str(label_studio.files))
    with LabelStudioClient(settings) as client:
        first = client.labeled_records(world["pid"], world["spec"], tmp_path)
        again = client.labeled_records(world["pid"], world["spec"], tmp_path)
    from_disk = by_task({**world, "records": first.records})["local"]
    with open(from_disk.source, "rb") as disk, open(by_task(world)["local"].source, "rb") as http:
        assert disk.read() == http.read()
    assert first.fetched == len(first.records) and len(first.skipped) == len(world["skipped"])
    assert again.fetched == 1  # url-octet, whose host sends no ETag; the local file is unchanged on disk


def test_iter_tasks_pages_through_every_task_with_raw_data(world):
    client = world["client"]
    tasks = list(client.iter_tasks(world["pid"], page_size=4))
    assert sorted(t["id"] for t in tasks) == sorted(world["tasks"].values())
    s3 = next(t for t in tasks if t["id"] == world["tasks"]["s3"])
    assert s3["data"]["img"] == "s3://no-such-bucket/x.png"  # not resolved into a proxy URL
    assert {"data", "annotations", "predictions", "meta"} <= set(s3)
    exported = client.export_tasks(world["pid"])  # the fast path labeled_records and sync_task_fields use
    assert [(t["id"], t["data"]) for t in exported] == sorted((t["id"], t["data"]) for t in tasks)
    annotated = [t["id"] for t in client.export_tasks(world["pid"], labeled_only=True)]
    assert annotated == sorted(t["id"] for t in tasks if t["annotations"])
    assert world["tasks"]["up3"] in annotated  # cancelled annotations count here; newest_label drops them


def test_class_spec_matches_the_config(world):
    assert world["spec"] == parse_label_config(CONFIG)
    assert world["spec"].image_key == "img" and world["spec"].labels == ["circle", "square", "triangle"]


def test_predictions_are_created_in_bulk_and_only_ours_are_deleted(world):
    client, pid, tasks = world["client"], world["pid"], world["tasks"]
    ours = [{"task": tasks[n], "result": choice("circle"), "score": 0.5, "model_version": "deconfusion-v7"}
            for n in ("up0", "up1", "up2")]
    theirs = [{"task_id": tasks["up4"], "result": choice("square"), "score": 0.9, "model_version": "their-model"}]
    assert client.create_predictions(pid, ours + theirs) == 4
    kept = {"task": tasks["up0"], "result": choice("square"), "score": 0.1, "model_version": "deconfusion-v8"}
    client.create_predictions(pid, [kept])
    assert {v: n for v, n in client.model_versions(pid).items() if n} == {
        "deconfusion-v7": 3, "deconfusion-v8": 1, "their-model": 1}
    assert client.delete_predictions(pid, keep_version="deconfusion-v8") == ["deconfusion-v7"]
    assert client.delete_predictions(pid) == ["deconfusion-v8"]
    assert {v: n for v, n in client.model_versions(pid).items() if n} == {"their-model": 1}
    with pytest.raises(ValueError):
        client.delete_predictions(pid, "")


def test_predictions_of_tasks_deleted_since_the_analysis_read_them_are_skipped(world):
    client = world["client"]
    pid = client.create_project("deleted meanwhile", CONFIG)
    tasks = client.import_tasks(pid, [{"data": {"img": f"/data/{n}.png"}} for n in range(3)])
    client.request("DELETE", f"/api/tasks/{tasks[1]}/")  # a user deletes a task while the analysis runs
    predictions = [{"task": t, "result": choice("circle"), "score": 0.5, "model_version": "deconfusion-v9"}
                   for t in tasks]
    assert client.create_predictions(pid, predictions) == 2  # Label Studio refuses the batch naming it
    assert client.deleted_tasks & set(tasks) == {tasks[1]}
    assert {v: n for v, n in client.model_versions(pid).items() if n} == {"deconfusion-v9": 2}


def test_merged_task_fields_keep_user_keys(world):
    client, pid, task_id = world["client"], world["pid"], world["tasks"]["url-good"]
    # a user's own key that merely looks like ours is the user's: never rewritten or removed
    client.request("PATCH", f"/api/tasks/{task_id}/", json={"data": {**client.get_task(task_id)["data"],
                                                                        "dc_site": "plant 2"}})
    before = client.get_task(task_id)["data"]
    assert client.merge_task_fields(pid, {task_id: {"dc_error_score": 0.5, "dc_cell": "a → b"}}) == 1
    assert client.get_task(task_id)["data"] == {**before, "dc_error_score": 0.5, "dc_cell": "a → b"}
    assert client.merge_task_fields(pid, {task_id: {"dc_cell": "a → b"}}) == 0  # unchanged: no PATCH
    with pytest.raises(ValueError, match="note"):
        client.merge_task_fields(pid, {task_id: {"note": "overwritten"}})
    with pytest.raises(ValueError, match="img"):
        client.sync_task_fields(pid, {task_id: {"img": "elsewhere.png"}})
    with pytest.raises(ValueError, match="dc_site"):
        client.merge_task_fields(pid, {task_id: {"dc_site": "plant 3"}})
    many = {world["tasks"][n]: {"dc_candidate": 1} for n in ("up0", "up1", "up2", "up3")}
    assert client.merge_task_fields(pid, many) == 4
    assert client.sync_task_fields(pid, {}) == 5  # ours cleared again
    assert client.get_task(task_id)["data"] == before
    assert all("dc_candidate" not in client.get_task(t)["data"] and "img" in client.get_task(t)["data"] for t in many)


def test_sync_task_fields_sets_exactly_our_wanted_fields(world):
    client, pid, tasks = world["client"], world["pid"], world["tasks"]
    client.merge_task_fields(pid, {tasks["up3"]: {"dc_leakage": 1}})
    wanted = {tasks["up0"]: {"dc_error_score": 1, "dc_version": "v1"}, tasks["up1"]: {"dc_error_score": 2, "dc_version": "v1"}}
    changed = client.sync_task_fields(pid, wanted)
    assert changed == 3
    data = {t["id"]: t["data"] for t in client.iter_tasks(pid)}
    assert data[tasks["up0"]]["dc_error_score"] == 1 and data[tasks["up1"]]["dc_error_score"] == 2 and "dc_leakage" not in data[tasks["up3"]]
    assert all("img" in d for d in data.values())
    assert client.own_keys_by_task(pid) == wanted
    assert client.sync_task_fields(pid, {}) == 2
    assert client.own_keys_by_task(pid) == {}


RACE_TASKS = 2000
RACE_FLAGGED = 300


def test_user_edits_made_while_we_publish_fields_survive(label_studio):
    """A user edits task data after we chose the tasks to write and before our write (the old
    lost-edit race): every write re-reads its task, so the edit and our fields both end up in the
    task. A task deleted meanwhile is skipped."""
    client = LabelStudioClient(Settings(label_studio_url=label_studio.url, label_studio_api_key=label_studio.token))
    pid = client.create_project("race", CONFIG)
    ids = client.import_tasks(pid, [{"img": f"/data/{i}.png", "note": "original"} for i in range(RACE_TASKS)])
    flagged = ids[-RACE_FLAGGED:]  # written last, so the edits below land between export and write
    edited = flagged[::3] + ids[:5]  # tasks we write and tasks we only read
    wanted = {t: {"dc_error_score": 0.5, "dc_version": "deconfusion-v1"} for t in flagged}
    user = LabelStudioClient(Settings(label_studio_url=label_studio.url, label_studio_api_key=label_studio.token))
    choose = client.own_keys_by_task

    def choose_then_user_edits(*args, **kwargs):
        tasks = choose(*args, **kwargs)
        for t in edited:  # what the Data Manager sends: the whole data, the user's change in it
            user.request("PATCH", f"/api/tasks/{t}/", json={"data": {"img": f"/data/{t}.png", "note": "edited"}})
        return tasks

    client.own_keys_by_task = choose_then_user_edits
    try:
        assert client.sync_task_fields(pid, wanted) == RACE_FLAGGED
    finally:
        client.own_keys_by_task = choose
    data = {t["id"]: t["data"] for t in client.export_tasks(pid)}
    assert all(data[t]["note"] == "edited" for t in edited)
    assert all(data[t]["dc_version"] == "deconfusion-v1" for t in flagged)
    assert sum(d["note"] == "original" for d in data.values()) == RACE_TASKS - len(edited)
    assert set(client.own_keys_by_task(pid)) == set(flagged)
    gone, kept = flagged[0], flagged[1]
    user.request("DELETE", f"/api/tasks/{gone}/")
    newer = {"dc_error_score": 0.7, "dc_version": "deconfusion-v2"}
    assert client.sync_task_fields(pid, {gone: newer, kept: newer}) == RACE_FLAGGED - 1  # ours off the rest
    assert client.own_keys_by_task(pid) == {kept: newer}
    client.delete_project(pid)


def test_views_filter_and_sort_numerically(world):
    client, pid = world["client"], world["pid"]
    scores = {"up0": 10.0, "up1": 9.0, "up2": 100.0, "up3": 0.25, "up4": 2.5}
    cells = {"up0": "circle → square", "up1": "circle → square", "up2": "square → circle",
             "up3": "circle → square", "up4": "circle → square"}
    client.merge_task_fields(pid, {world["tasks"][n]: {"dc_error_score": s, "dc_cell": cells[n], "dc_disagreement_rank": str(s)}
                                   for n, s in scores.items()})
    ids = {world["tasks"][n]: n for n in scores}
    user_view = client.request("POST", "/api/dm/views/", json={"project": pid, "data": {"title": "My own tab"}})
    user_notes = client.request("POST", "/api/dm/views/",
                                json={"project": pid, "data": {"title": "De-Confusion notes (Alice)"}})
    cell = client.create_view(pid, "De-Confusion: circle → square",
                              [("dc_cell", "equal", "String", "circle → square")], "-dc_error_score",
                              hidden_columns=["dc_disagreement_rank"], numeric_fields=["dc_error_score"])
    assert [ids[t] for t in view_task_ids(client, pid, cell)] == ["up0", "up1", "up4", "up3"]
    # Values stored as text sort as text unless the tab declares the column a Number.
    as_text = client.create_view(pid, "De-Confusion: text", [("dc_disagreement_rank", "empty", "String", False)], "-dc_disagreement_rank")
    as_number = client.create_view(pid, "De-Confusion: number", [("dc_disagreement_rank", "empty", "String", False)], "-dc_disagreement_rank",
                                   numeric_fields=["dc_disagreement_rank"])
    assert [ids[t] for t in view_task_ids(client, pid, as_number)] == ["up2", "up0", "up1", "up4", "up3"]
    assert [ids[t] for t in view_task_ids(client, pid, as_text)] == ["up1", "up4", "up2", "up0", "up3"]
    candidates = client.create_view(pid, "De-Confusion: big", [("dc_error_score", "greater", "Number", 5)],
                                    ["-dc_error_score"])
    assert [ids[t] for t in view_task_ids(client, pid, candidates)] == ["up2", "up0", "up1"]
    views = {v["title"]: v for v in client.list_views(pid)}
    saved = views["De-Confusion: circle → square"]["data"]
    assert saved["ordering"] == ["-tasks:data.dc_error_score"]
    assert saved["columnsDisplayType"] == {"tasks:data.dc_error_score": "Number"}
    assert saved["hiddenColumns"]["explore"] == ["tasks:data.dc_disagreement_rank"]
    assert client.delete_views(pid, OUR_TABS) == 4
    assert [v["id"] for v in client.list_views(pid)] == [user_view["id"], user_notes["id"]]


def test_webhook_is_idempotent_and_widened(world):
    client, pid = world["client"], world["pid"]
    url = "http://127.0.0.1:9/webhook"
    first = ensure_webhook(client, pid, url, ["ANNOTATION_CREATED", "ANNOTATIONS_CREATED"])
    assert ensure_webhook(client, pid, url, ["ANNOTATION_CREATED"]) == first
    assert ensure_webhook(client, pid, url, ["ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"]) == first
    hooks = [h for h in client.request("GET", "/api/webhooks/", params={"project": pid}) if h["url"] == url]
    assert len(hooks) == 1 and hooks[0]["send_payload"]
    assert set(hooks[0]["actions"]) == {"ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED",
                                        "ANNOTATIONS_DELETED"}


def test_ml_backend_connects_once_and_training_reaches_it(world, host):
    host.routes["/health"] = Route(content_type="application/json", body=json.dumps(
        {"status": "UP", "model_class": "Fake"}).encode())
    host.routes["/setup"] = Route(content_type="application/json", body=b'{"model_version": "fake-1"}')
    host.routes["/webhook"] = Route(status=201, content_type="application/json", body=b"{}")
    host.routes["/train"] = Route(status=201, content_type="application/json", body=b"{}")
    client, pid = world["client"], world["pid"]
    backend = connect_ml_backend(client, pid, host.url, "Fake backend")
    assert connect_ml_backend(client, pid, host.url + "/", "Fake backend") == backend
    before = len(host.posts)
    start_training(client, backend)
    assert any(b"START_TRAINING" in body or path == "/train" for path, body in host.posts[before:])


def test_wrong_token_wrong_url_and_unreachable_server_give_clear_errors(world):
    with pytest.raises(LabelStudioTokenRejected, match="rejected the token.*LABEL_STUDIO_API_KEY"), \
            LabelStudioClient(world["settings"].replace(label_studio_api_key="0" * 40)) as bad:
        whoami(bad)
    started = time.monotonic()
    with pytest.raises(LabelStudioUnavailable, match="did not answer GET /api/current-user/whoami after 3 tries"), \
            LabelStudioClient(world["settings"].replace(label_studio_url=f"http://127.0.0.1:{free_port()}"),
                              retry_delays=(0.1, 0.2)) as down:
        whoami(down)
    assert time.monotonic() - started < 5
    with ImageHost({"/api/current-user/whoami": Route(content_type="text/html", body=b"<html>a site</html>")}) as web, \
            LabelStudioClient(world["settings"].replace(label_studio_url=web.url)) as not_ls, \
            pytest.raises(LabelStudioUnavailable, match="text/html, not JSON: is LABEL_STUDIO_URL the address"):
        whoami(not_ls)


def test_a_request_label_studio_refuses_is_rejected_not_unavailable(world):
    """A 4xx is Label Studio's answer, given at once: not retried, and not "did not answer"."""
    client = world["client"]
    started = time.monotonic()
    with pytest.raises(LabelStudioRejected, match=r"refused GET /api/projects/999999/ \(HTTP 404\)") as missing:
        client.get_project(999_999)
    assert missing.value.status == 404 and not isinstance(missing.value, LabelStudioUnavailable)
    assert client.find_project(999_999) is None and not client.project_exists(999_999)
    with pytest.raises(LabelStudioRejected, match="HTTP 400") as invalid:
        client.request("POST", "/api/projects/", json={"title": "x" * 1000})
    assert invalid.value.status == 400
    assert time.monotonic() - started < 5  # no retries with backoff (the default delays sum to 15 s)


def test_personal_access_token_works_for_api_and_media(world, personal_access_token):
    assert personal_access_token.count(".") == 2  # a JWT, not a legacy token
    with LabelStudioClient(world["settings"].replace(label_studio_api_key=personal_access_token)) as client:
        assert whoami(client)["email"] == "admin@example.com"
        upload = world["tasks"]["up0"]
        data = client.fetch_image(client.get_task(upload), world["spec"])  # /data/upload/ needs the (Bearer) token
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), pixels(0))


def _hooks(host, path: str, count: int, timeout: float = 10.0) -> list[dict]:
    """The webhook bodies posted to ``path``, once ``count`` have come (or ``timeout`` passed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and sum(p == path for p, _ in host.posts) < count:
        time.sleep(0.1)
    return [json.loads(body) for p, body in host.posts if p == path]


def test_annotation_webhooks_carry_the_payloads_the_verdict_loop_reads(world, host):
    """Label Studio 1.23's payloads for the four annotation actions, as the backend's /webhook gets them."""
    host.routes["/hook"] = Route(content_type="application/json", body=b"{}")
    client = world["client"]
    pid = client.create_project("webhooks", CONFIG)
    t1, t2, t3 = client.import_tasks(pid, [{"data": {"img": f"/x/{n}.png"}} for n in range(3)])
    ensure_webhook(client, pid, host.url + "/hook", ["ANNOTATION_CREATED", "ANNOTATIONS_CREATED",
                                                     "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"])
    first = create_annotation(client, t1, choice("circle"))
    client.request("PATCH", f"/api/annotations/{first}/", json={"result": choice("square")})
    client.create_predictions(pid, [{"task": t, "result": choice("triangle"), "model_version": "deconfusion-x"}
                                    for t in (t2, t3)])
    # "Create Annotations From Predictions" in the Data Manager
    client.request("POST", "/api/dm/actions", params={"id": "predictions_to_annotations", "project": pid},
                   json={"project": pid, "selectedItems": {"all": False, "included": [t2, t3]},
                         "model_version": "deconfusion-x"})
    client.request("DELETE", f"/api/annotations/{first}/")
    # "Delete Annotations" in the Data Manager
    client.request("POST", "/api/dm/actions", params={"id": "delete_tasks_annotations", "project": pid},
                   json={"project": pid, "selectedItems": {"all": False, "included": [t2]}})
    created, updated, bulk, deleted, bulk_deleted = _hooks(host, "/hook", 5)

    assert created["action"] == "ANNOTATION_CREATED" and set(created) >= {"annotation", "task", "project"}
    assert created["annotation"]["id"] == first and created["annotation"]["task"] == t1
    assert created["task"]["id"] == t1 and created["project"]["id"] == pid
    assert created["annotation"]["result"][0]["value"]["choices"] == ["circle"]
    assert updated["action"] == "ANNOTATION_UPDATED" and updated["annotation"]["id"] == first
    assert updated["annotation"]["result"][0]["value"]["choices"] == ["square"]
    assert bulk["action"] == "ANNOTATIONS_CREATED" and bulk["project"]["id"] == pid
    assert sorted(a["task"] for a in bulk["annotation"]) == [t2, t3]  # key "annotation", holding a list
    assert sorted(t["id"] for t in bulk["task"]) == [t2, t3]
    assert all(a["result"][0]["value"]["choices"] == ["triangle"] for a in bulk["annotation"])
    assert set(deleted) == {"action", "annotations", "project"} and deleted["action"] == "ANNOTATIONS_DELETED"
    assert deleted["annotations"] == [{"id": first}] and deleted["project"]["id"] == pid
    assert bulk_deleted["action"] == "ANNOTATIONS_DELETED" and bulk_deleted["project"]["id"] == pid
    assert bulk_deleted["annotations"] == [{"id": a["id"]} for a in bulk["annotation"] if a["task"] == t2]
    assert "task" not in deleted and "task" not in bulk_deleted  # deletions name annotation ids only
