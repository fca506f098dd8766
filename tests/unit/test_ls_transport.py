"""The Label Studio transport (ml_backend/ls/transport.py) against a tiny local HTTP server that
answers as scripted: which failures are retried, and how each answer is classified. A server
that did not answer is LabelStudioUnavailable, a refused token LabelStudioTokenRejected, a
refused request LabelStudioRejected. Requests go through the real SDK client and httpx. The
client's task paging runs against the same server."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest

from ml_backend.config import Settings
from ml_backend.errors import LabelStudioRejected, LabelStudioTokenRejected, LabelStudioUnavailable
from ml_backend.ls.client import LabelStudioClient
from ml_backend.ls.transport import Transport

NO_WAIT = (0.0, 0.0)  # three tries, no sleeping


@dataclass
class Answer:
    status: int = 200
    body: object = None  # JSON, or bytes sent as they are
    content_type: str = "application/json"
    location: str = ""
    delay: float = 0.0  # seconds before answering


@dataclass
class FakeLabelStudio:
    """Answers each path with its scripted answers in turn (the last one repeats); ``seen`` keeps
    (method, path, Authorization header) of every request."""
    url: str = ""
    answers: dict[str, list[Answer]] = field(default_factory=dict)
    seen: list[tuple[str, str, str | None]] = field(default_factory=list)
    bodies: list[tuple[str, str, object]] = field(default_factory=list)  # (method, path, JSON sent)

    def tries(self, path: str) -> int:
        return sum(p == path for _, p, _ in self.seen)


@pytest.fixture
def fake():
    script = FakeLabelStudio()

    class Handler(BaseHTTPRequestHandler):
        def answer(self):
            sent = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            path = self.path.split("?")[0]
            script.seen.append((self.command, path, self.headers.get("Authorization")))
            script.bodies.append((self.command, path, json.loads(sent) if sent else None))
            queue = script.answers.get(path) or [Answer(404, {"detail": "Not found."})]
            reply = queue.pop(0) if len(queue) > 1 else queue[0]
            time.sleep(reply.delay)
            body = reply.body if isinstance(reply.body, bytes) else (
                b"" if reply.body is None else json.dumps(reply.body).encode())
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(body)))
            if reply.location:
                self.send_header("Location", reply.location)
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PATCH = do_DELETE = answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    script.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield script
    server.shutdown()
    server.server_close()


def transport(url: str, token: str = "0" * 40, delays=NO_WAIT) -> Transport:
    return Transport(Settings(label_studio_url=url, label_studio_api_key=token), retry_delays=delays)


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_gets_are_retried_through_5xx_until_label_studio_answers(fake):
    fake.answers["/api/x"] = [Answer(503, {"detail": "busy"}), Answer(500, b"oops", "text/plain"), Answer(200, {"ok": 1})]
    with transport(fake.url) as ls:
        assert ls.request("GET", "/api/x") == {"ok": 1}
    assert fake.tries("/api/x") == 3


def test_label_studio_failing_every_try_is_unavailable(fake):
    fake.answers["/api/x"] = [Answer(500, {"detail": "boom"})]
    with transport(fake.url) as ls, pytest.raises(
            LabelStudioUnavailable, match=r"did not answer GET /api/x after 3 tries \(HTTP 500: boom\)"):
        ls.request("GET", "/api/x")
    assert fake.tries("/api/x") == 3


@pytest.mark.parametrize("status", [500, 502, 504])
def test_a_post_that_may_have_run_is_not_sent_twice(fake, status):
    # a 504 from a proxy while Label Studio goes on importing: a second try would store it twice
    fake.answers["/api/ran"] = [Answer(status, b"gateway timeout", "text/html"), Answer(201, {"created": 5})]
    with transport(fake.url) as ls, pytest.raises(LabelStudioUnavailable, match="after 1 tries"):
        ls.request("POST", "/api/ran", json={})
    assert fake.tries("/api/ran") == 1


def test_a_post_refused_before_it_ran_is_retried(fake):
    fake.answers["/api/busy"] = [Answer(503, b"service unavailable", "text/html"), Answer(201, {"id": 7})]
    with transport(fake.url) as ls:
        assert ls.request("POST", "/api/busy", json={}) == {"id": 7}
    assert fake.tries("/api/busy") == 2


def test_connection_errors_are_retried_for_every_method_then_unavailable():
    delays = (0.05, 0.05)
    started = time.monotonic()
    with transport(f"http://127.0.0.1:{unused_port()}", delays=delays) as ls, pytest.raises(
            LabelStudioUnavailable, match=r"did not answer POST /api/projects/ after 3 tries \(ConnectError"):
        ls.request("POST", "/api/projects/", json={})
    assert time.monotonic() - started >= sum(delays)


@pytest.mark.parametrize("answer, status, message", [
    (Answer(404, {"detail": "Not found."}), 404, r"refused GET /api/x \(HTTP 404\): Not found\."),
    (Answer(400, {"detail": "Validation error", "validation_errors": {"title": ["too long"]}}), 400,
     r"HTTP 400\): Validation error: \{'title': \['too long'\]\}"),
    (Answer(302, b"", "text/html", location="https://ls.example/api/x"), 302,
     "redirected GET /api/x to 'https://ls.example/api/x': set LABEL_STUDIO_URL"),
])
def test_a_refused_request_is_rejected_at_once_not_unavailable(fake, answer, status, message):
    fake.answers["/api/x"] = [answer]
    with transport(fake.url) as ls, pytest.raises(LabelStudioRejected, match=message) as refused:
        ls.request("GET", "/api/x")
    assert refused.value.status == status and not isinstance(refused.value, LabelStudioUnavailable)
    assert fake.tries("/api/x") == 1


@pytest.mark.parametrize("status, message", [
    (401, r"rejected the token \(HTTP 401 on GET /api/x: bad token\): check LABEL_STUDIO_API_KEY"),
    (403, r"HTTP 403: bad token\): check that LABEL_STUDIO_API_KEY belongs to a user"),
])
def test_a_refused_token_is_a_configuration_error_raised_at_once(fake, status, message):
    fake.answers["/api/x"] = [Answer(status, {"detail": "bad token"})]
    with transport(fake.url) as ls, pytest.raises(LabelStudioTokenRejected, match=message) as refused:
        ls.request("GET", "/api/x")
    assert not isinstance(refused.value, (LabelStudioUnavailable, LabelStudioRejected))
    assert fake.tries("/api/x") == 1


def test_json_is_decoded_and_anything_else_is_not_label_studio(fake):
    fake.answers["/api/empty"] = [Answer(204)]
    fake.answers["/api/site"] = [Answer(200, b"<html>a site</html>", "text/html")]
    with transport(fake.url) as ls:
        assert ls.request("DELETE", "/api/empty") is None
        with pytest.raises(LabelStudioUnavailable, match="text/html, not JSON: is LABEL_STUDIO_URL the address"):
            ls.request("GET", "/api/site")


def jwt_token(token_type: str, seconds: int) -> str:
    return jwt.encode({"token_type": token_type, "exp": int(time.time()) + seconds}, "a test key, at least 32 bytes long", algorithm="HS256")


def test_an_empty_or_expired_token_is_refused_before_any_request(fake):
    for token, message in [("  ", "LABEL_STUDIO_API_KEY is empty"),
                           (jwt_token("refresh", -60), "rejected the token .*expired")]:
        with transport(fake.url, token) as ls, pytest.raises(LabelStudioTokenRejected, match=message):
            ls.request("GET", "/api/x")
    assert fake.seen == []


def test_a_legacy_token_is_sent_as_is(fake):
    fake.answers["/api/x"] = [Answer(200, {})]
    with transport(fake.url, "abc123") as ls:
        ls.request("GET", "/api/x")
        assert ls.auth_headers() == {"Authorization": "Token abc123"}
    assert fake.seen == [("GET", "/api/x", "Token abc123")]


def test_a_personal_access_token_is_exchanged_for_an_access_token(fake):
    access = jwt_token("access", 300)
    fake.answers["/api/token/refresh/"] = [Answer(200, {"access": access})]
    fake.answers["/api/x"] = [Answer(200, {})]
    with transport(fake.url, jwt_token("refresh", 3600)) as ls:
        ls.request("GET", "/api/x")
        assert ls.auth_headers() == {"Authorization": f"Bearer {access}"}
    assert fake.seen[-1] == ("GET", "/api/x", f"Bearer {access}")
    assert fake.tries("/api/token/refresh/") == 1  # the access token is reused until it expires


@pytest.mark.parametrize("status, error, message, refreshes", [
    (401, LabelStudioTokenRejected, "rejected the token .*blacklisted", 1),
    (500, LabelStudioUnavailable, r"after 3 tries \(token refresh answered HTTP 500\)", 3),
])
def test_a_failed_refresh_is_classified_like_any_answer(fake, status, error, message, refreshes):
    fake.answers["/api/token/refresh/"] = [Answer(status, {"detail": "Token is blacklisted"})]
    with transport(fake.url, jwt_token("refresh", 3600)) as ls:
        with pytest.raises(error, match=message):
            ls.request("GET", "/api/x")
        with pytest.raises(error):  # as media downloads ask for it
            ls.auth_headers()
    assert fake.tries("/api/token/refresh/") == refreshes + 1 and fake.tries("/api/x") == 0


def tasks_page(ids, total):
    return Answer(200, {"tasks": [{"id": i, "data": {}} for i in ids], "total": total})


def test_task_paging_goes_on_when_label_studio_caps_the_page_size(fake):
    # TASK_API_PAGE_SIZE_MAX=2 on Label Studio's side: we ask for 1,000 a page and get 2
    fake.answers["/api/tasks/"] = [tasks_page([1, 2], 5), tasks_page([3, 4], 5), tasks_page([5], 5)]
    with LabelStudioClient(Settings(label_studio_url=fake.url, label_studio_api_key="0" * 40),
                           retry_delays=NO_WAIT) as client:
        assert [t["id"] for t in client.iter_tasks(1)] == [1, 2, 3, 4, 5]
    assert fake.tries("/api/tasks/") == 3


def test_task_paging_reads_again_when_tasks_were_deleted_meanwhile(fake):
    # task 2 is deleted after page 1 was read: task 3 moves to page 1, and page 2 holds task 4 only
    fake.answers["/api/tasks/"] = [tasks_page([1, 2], 4), tasks_page([4], 3),
                                   tasks_page([1, 3], 3), tasks_page([4], 3)]
    with LabelStudioClient(Settings(label_studio_url=fake.url, label_studio_api_key="0" * 40),
                           retry_delays=NO_WAIT) as client:
        assert [t["id"] for t in client.iter_tasks(1)] == [1, 2, 4, 3]  # each once, none skipped
        # a page gone missing (the last tasks deleted) also reads the pages again
        fake.answers["/api/tasks/"] = [tasks_page([5, 6], 5), Answer(404, {"detail": "Invalid page."}),
                                       tasks_page([5, 6], 2)]
        assert [t["id"] for t in client.iter_tasks(1)] == [5, 6]
    assert fake.tries("/api/tasks/") == 7


def test_an_export_that_keeps_failing_falls_back_to_paging(fake):
    fake.answers["/api/projects/1/export"] = [Answer(500, b"Server Error (500)", "text/html")]
    fake.answers["/api/tasks/"] = [tasks_page([1, 2], 2)]
    with LabelStudioClient(Settings(label_studio_url=fake.url, label_studio_api_key="0" * 40),
                           retry_delays=NO_WAIT) as client:
        assert [t["id"] for t in client.export_tasks(1)] == [1, 2]


def test_an_export_that_does_not_answer_in_time_is_not_asked_again(fake, monkeypatch):
    # a 20,000-task export that ran out of BULK_TIMEOUT (600 s) once would run out again, four times
    monkeypatch.setattr("ml_backend.ls.client.BULK_TIMEOUT", 1.0)
    fake.answers["/api/projects/1/export"] = [Answer(200, [{"id": 1, "data": {}}], delay=1.5)]
    fake.answers["/api/tasks/"] = [tasks_page([1, 2], 2)]
    with LabelStudioClient(Settings(label_studio_url=fake.url, label_studio_api_key="0" * 40),
                           retry_delays=NO_WAIT) as client:
        assert [t["id"] for t in client.export_tasks(1)] == [1, 2]
    assert fake.tries("/api/projects/1/export") == 1


def task_answers(refused: bool) -> list[Answer]:
    """GET /api/tasks/N/, then its PATCH: taken, or refused as a proxy refuses a big body."""
    return [Answer(200, {"id": 1, "data": {"image": "x.png", "note": "user's"}}),
            Answer(413, b"<html>413 Request Entity Too Large</html>", "text/html") if refused
            else Answer(200, {"id": 1, "data": {}})]


def test_a_task_whose_fields_label_studio_refuses_does_not_stop_the_others(fake):
    for task in range(1, 6):
        fake.answers[f"/api/tasks/{task}/"] = task_answers(refused=task == 3)
    with LabelStudioClient(Settings(label_studio_url=fake.url, label_studio_api_key="0" * 40),
                           retry_delays=NO_WAIT) as client:
        changed = client.write_task_fields(1, {task: {"dc_error_score": 0.5} for task in range(1, 6)})
        assert changed == 4
        assert list(client.refused_writes) == [3] and "413" in client.refused_writes[3]
    assert [m for m, p, _ in fake.seen if p == "/api/tasks/5/"] == ["GET", "PATCH"]


def test_a_task_deleted_before_its_fields_are_written_is_noted_not_refused(fake):
    fake.answers["/api/tasks/1/"] = task_answers(refused=False)
    fake.answers["/api/tasks/2/"] = [Answer(404, {"detail": "Not found."})]
    with LabelStudioClient(Settings(label_studio_url=fake.url, label_studio_api_key="0" * 40),
                           retry_delays=NO_WAIT) as client:
        assert client.write_task_fields(1, {task: {"dc_error_score": 0.5} for task in (1, 2)}) == 1
        assert client.deleted_tasks == {2} and not client.refused_writes


def test_a_field_write_that_failed_is_retried_on_the_data_as_it_is_then(fake):
    # the PATCH meets a 503; meanwhile a user edits the task: the retry must not put back the old note
    fake.answers["/api/tasks/1/"] = [Answer(200, {"id": 1, "data": {"image": "x.png", "note": "original"}}),
                                     Answer(503, {"detail": "restarting"}),
                                     Answer(200, {"id": 1, "data": {"image": "x.png", "note": "user's edit"}}),
                                     Answer(200, {"id": 1, "data": {}})]
    with LabelStudioClient(Settings(label_studio_url=fake.url, label_studio_api_key="0" * 40),
                           retry_delays=NO_WAIT) as client:
        assert client.write_task_fields(1, {1: {"dc_error_score": 0.5}}) == 1
    assert [m for m, p, _ in fake.seen if p == "/api/tasks/1/"] == ["GET", "PATCH", "GET", "PATCH"]
    assert fake.bodies[-1][2] == {"data": {"image": "x.png", "note": "user's edit", "dc_error_score": 0.5}}


def test_a_field_write_to_a_label_studio_that_is_down_gives_up_after_the_usual_tries(fake):
    fake.answers["/api/tasks/1/"] = [Answer(500, {"detail": "down"})]
    with LabelStudioClient(Settings(label_studio_url=fake.url, label_studio_api_key="0" * 40),
                           retry_delays=NO_WAIT) as client:
        with pytest.raises(LabelStudioUnavailable, match="after 3 tries"):
            client.write_task_fields(1, {1: {"dc_error_score": 0.5}})
    assert fake.tries("/api/tasks/1/") == 3  # the read's own tries, not three times over


def test_field_writes_refused_for_every_task_are_an_error(fake):
    for task in range(1, 13):
        fake.answers[f"/api/tasks/{task}/"] = task_answers(refused=True)
    with LabelStudioClient(Settings(label_studio_url=fake.url, label_studio_api_key="0" * 40),
                           retry_delays=NO_WAIT) as client:
        with pytest.raises(LabelStudioRejected, match=r"refused the De-Confusion fields of all 12 tasks .*413"):
            client.write_task_fields(1, {task: {"dc_error_score": 0.5} for task in range(1, 13)})
