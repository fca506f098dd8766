"""The local demo's servers: Label Studio bound to loopback only, the demo's admin with a random
password and a personal access token (legacy tokens off), and a demo that stops both servers on
SIGTERM and on SIGINT, also as a background job (which inherits SIGINT ignored)."""

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.components import missing
from tests.integration.labelstudio import LS_VENV, ROOT, LabelStudioServer, free_port, ls_installed, whoami

from ml_backend.config import Settings
from ml_backend.errors import LabelStudioTokenRejected
from ml_backend.ls.client import LabelStudioClient
from ml_backend.ls.dev_server import wait_http


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on ``port`` (IPv4 dotted, IPv6 as hex)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as rows:
            for row in list(rows)[1:]:
                local, state = row.split()[1], row.split()[3]
                address, port_hex = local.split(":")
                if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                    found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]) if len(address) == 8 else address)
    return found


def outward_address() -> str | None:
    """This machine's address on its default route (a UDP connect sends nothing), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("203.0.113.1", 9))
        except OSError:
            return None
        address = sock.getsockname()[0]
    return None if address.startswith("127.") else address


def test_label_studio_listens_on_loopback_only(label_studio):
    assert listening_addresses(label_studio.port) == {"127.0.0.1"}
    address = outward_address()
    if address is not None:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address, label_studio.port), timeout=5).close()


@pytest.fixture(scope="module")
def demo_workdir(tmp_path_factory):
    """A workdir whose Label Studio data dir a first, PAT-mode start has set up (the slow
    migration); the demo runs below reuse it. Yields the workdir and that start's credentials."""
    if not ls_installed():
        missing("Label Studio", f"nothing in {LS_VENV} (set LS_VENV or run scripts/setup)")
    workdir = tmp_path_factory.mktemp("demo")
    with LabelStudioServer(data_dir=workdir / "label-studio", files_root=workdir, legacy_token=False) as ls:
        first = {"password": ls.password, "token": ls.token}
    return workdir, first


def children_groups(pid: int) -> set[int]:
    """Process groups of ``pid``'s children (the demo starts each server in its own session)."""
    groups = set()
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:  # fields after "(comm)": state, ppid, pgrp, ...
                groups.add(int(fields[2]))
    return groups


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def background_demo(workdir: Path, *, ignore_sigint: bool = False, from_its_parent: bool = False):
    """``scripts/demo.py --servers-only`` started like ``scripts/demo &`` (``from_its_parent``: in
    the workdir's parent folder, the workdir given relative to it); yields (process, Label Studio
    URL, backend settings) once both servers answer, and finally kills whatever of it is left."""
    ls_port, backend_port = free_port(), free_port()
    log = workdir / "demo.out"
    with open(log, "ab") as out:
        demo = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "demo.py"), "--servers-only",
             "--workdir", workdir.name if from_its_parent else str(workdir),
             "--ls-port", str(ls_port), "--backend-port", str(backend_port)],
            cwd=workdir.parent if from_its_parent else ROOT, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None)
    groups: set[int] = set()
    try:
        wait_http(f"http://127.0.0.1:{backend_port}/health", 240, demo, log)
        groups = children_groups(demo.pid)
        saved = json.loads((workdir / "label-studio" / "token.json").read_text())
        settings = Settings.from_env({}, label_studio_url=f"http://127.0.0.1:{ls_port}",
                                     label_studio_api_key=saved["token"], model_dir=str(workdir / "model_dir"),
                                     port=backend_port, public_url=f"http://127.0.0.1:{backend_port}")
        yield demo, groups, settings
    finally:
        for pgid in (groups or children_groups(demo.pid)) | {demo.pid}:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        demo.wait()


def assert_stops(demo: subprocess.Popen, groups: set[int], signum: int) -> None:
    assert len(groups) == 2, f"expected Label Studio and the backend as children, found groups {groups}"
    demo.send_signal(signum)
    assert demo.wait(timeout=30) == 128 + signum
    deadline = time.monotonic() + 30
    while any(map(group_alive, groups)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [pgid for pgid in groups if group_alive(pgid)], "a server outlived the demo"


def test_demo_uses_a_random_password_and_a_personal_access_token_and_stops_on_sigterm(demo_workdir):
    workdir, first = demo_workdir
    with background_demo(workdir) as (demo, groups, settings):
        token_file = workdir / "label-studio" / "token.json"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        saved = json.loads(token_file.read_text())
        assert saved["password"] == first["password"] != "deconfusion-demo"  # kept with the data dir
        assert len(saved["password"]) >= 20
        assert saved["token"].count(".") == 2 and saved["token"] != first["token"]  # a new JWT
        with LabelStudioClient(settings) as client:
            assert whoami(client)["email"] == "admin@example.com"
            assert client.request("GET", "/api/jwt/settings")["legacy_api_tokens_enabled"] is False
        with pytest.raises(LabelStudioTokenRejected), \
                LabelStudioClient(settings.replace(label_studio_api_key=first["token"])) as revoked:
            whoami(revoked)  # the previous start's token was revoked
        assert_stops(demo, groups, signal.SIGTERM)


def test_background_demo_stops_on_sigint(demo_workdir):
    workdir, _ = demo_workdir
    with background_demo(workdir, ignore_sigint=True) as (demo, groups, _settings):
        assert_stops(demo, groups, signal.SIGINT)


def test_a_demo_started_elsewhere_beside_an_operators_exported_settings_runs_on_its_own(demo_workdir, monkeypatch):
    # An operator who exported the production settings (README, step 1) then tries the demo.
    workdir, _ = demo_workdir
    for name, value in {"BASIC_AUTH_USER": "ops", "BASIC_AUTH_PASS": "s3cret", "WEBHOOK_SECRET": "hook"}.items():
        monkeypatch.setenv(name, value)
    with background_demo(workdir, from_its_parent=True) as (demo, groups, settings):  # /health answered, no auth
        assert (workdir / "model_dir" / "backend.log").exists()  # the workdir named relative to where it started
        event = {"action": "ANNOTATION_CREATED", "project": {"id": 999}, "annotation": {"id": 1}}
        with urllib.request.urlopen(urllib.request.Request(
                f"{settings.backend_url}/webhook", data=json.dumps(event).encode(),
                headers={"Content-Type": "application/json"}), timeout=30) as answer:
            assert json.loads(answer.read())["status"] == "ignored"  # no secret asked: the demo's webhook has none
        assert_stops(demo, groups, signal.SIGTERM)
