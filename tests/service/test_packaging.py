"""Docker cannot run here, so the Dockerfile and docker-compose.yml are checked against the
code they package: the files they copy exist, the commands they run start the app, and every
variable they set is one the backend reads."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ml_backend.cli import build_parser
from ml_backend.config import Settings

ROOT = Path(__file__).resolve().parents[2]
ENV_NAMES = {f.metadata["env"] for f in dataclasses.fields(Settings)}


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [tuple(line.split(None, 1)) for line in lines]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def env_of(service: dict) -> dict[str, str]:
    return dict(item.split("=", 1) for item in service.get("environment", []))


def test_everything_the_dockerfile_copies_and_installs_exists():
    steps = dockerfile()
    for instruction, args in steps:
        if instruction == "COPY":
            *sources, _ = args.split()
            assert all((ROOT / s).exists() for s in sources), args
    assert ("RUN", "pip install --no-cache-dir -r requirements.txt") in steps
    env = dict(re.findall(r"(\w+)=(\S+)", next(a for i, a in steps if i == "ENV")))
    assert {"MODEL_DIR", "PORT"} <= set(env) and set(env) - {"PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED",
                                                             "WORKERS", "THREADS"} <= ENV_NAMES


def test_the_dockerfile_command_loads_the_app_under_gunicorn(tmp_path):
    cmd = json.loads(next(a for i, a in dockerfile() if i == "CMD"))
    assert cmd[:2] == ["sh", "-c"]
    env = {**os.environ, "PORT": "9090", "WORKERS": "1", "THREADS": "2", "MODEL_DIR": str(tmp_path)}
    line = re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], cmd[2])  # what sh expands
    args = shlex.split(line.removeprefix("exec "))
    assert args[0] == "gunicorn"
    gunicorn = Path(sys.executable).parent / "gunicorn"
    done = subprocess.run([str(gunicorn), "--check-config", *args[1:]], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_compose_runs_label_studio_backend_redis_and_a_worker_that_agree():
    services = compose()["services"]
    assert set(services) == {"label-studio", "backend", "worker", "redis"}
    ls, backend, worker = env_of(services["label-studio"]), env_of(services["backend"]), env_of(services["worker"])
    assert ls["ML_BLOCK_LOCAL_IP"] == "false" and ls["SSRF_PROTECTION_ENABLED"] == "false"
    assert backend["LABEL_STUDIO_API_KEY"] == ls["LABEL_STUDIO_USER_TOKEN"]
    assert backend["LABEL_STUDIO_URL"] == "http://label-studio:8080"
    assert set(backend) <= ENV_NAMES and worker == backend
    assert backend["REDIS_URL"].startswith("redis://redis:")
    setup = (ROOT / "scripts" / "setup").read_text()
    ls_version = re.search(r"LS_VERSION=(\S+)", setup).group(1)
    assert services["label-studio"]["image"].endswith(":" + ls_version)
    assert services["backend"]["build"] == services["worker"]["build"] == "."
    assert services["backend"]["volumes"] == services["worker"]["volumes"]  # one MODEL_DIR for both
    args = build_parser().parse_args(services["worker"]["command"][3:])
    assert services["worker"]["command"][:3] == ["python", "-m", "ml_backend"] and args.command == "worker"


def test_a_missing_component_skips_locally_and_fails_under_ci(monkeypatch):
    from tests.components import missing
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception, match="redis-server is not installed"):
        missing("redis-server", "apt-get install redis-server")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        missing("redis-server", "apt-get install redis-server")
