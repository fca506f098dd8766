"""A real Label Studio server (from .venv-ls) and a real backend process, on 127.0.0.1.

Every test here is marked ``live_ls``; without Label Studio installed they skip, saying why,
and fail under CI=true (tests/components.py).
"""

import shutil

import pytest

from tests.components import missing

from tests.integration.labelstudio import (
    LOOPBACK, LS_VENV, create_personal_access_token, ls_installed, revoke_personal_access_tokens,
    running_label_studio)

from ml_backend.config import Settings
from ml_backend.ls.dev_server import free_port, start_backend


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.live_ls)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """The running server: ``.url``, ``.token`` (legacy token), ``.files`` (local-files root)."""
    if not ls_installed():
        missing("Label Studio", f"nothing in {LS_VENV} (set LS_VENV or run scripts/setup)")
    root = tmp_path_factory.mktemp("ls")
    with running_label_studio(root / "data", files_root=root / "files") as server:
        yield server


@pytest.fixture(scope="module")
def personal_access_token(label_studio):
    """A personal access token (JWT refresh token) of the admin; revoked after the module, so
    another module can make its own (Label Studio allows one per user)."""
    token = create_personal_access_token(label_studio.url, label_studio.token)
    yield token
    revoke_personal_access_tokens(label_studio.url, label_studio.token)


WEBHOOK_SECRET = "webhook-secret-for-tests"


@pytest.fixture(scope="session")
def backend(label_studio, tmp_path_factory):
    """The backend process; annotation webhooks must carry WEBHOOK_SECRET. Its downloads may reach
    the tests' image hosts on 127.0.0.1 (DOWNLOAD_ALLOW)."""
    port = free_port()
    settings = Settings.from_env({}, label_studio_url=label_studio.url, label_studio_api_key=label_studio.token,
                                 model_dir=str(tmp_path_factory.mktemp("model_dir")), port=port,
                                 public_url=f"http://127.0.0.1:{port}", webhook_secret=WEBHOOK_SECRET,
                                 download_allow=LOOPBACK)
    extra_env = {"WEBHOOK_SECRET": WEBHOOK_SECRET, "DOWNLOAD_ALLOW": LOOPBACK, "DECONFUSION_RERANK_AFTER": "5"}
    with start_backend(settings, extra_env=extra_env) as url:
        yield url, settings


@pytest.fixture(scope="session")
def chromium():
    binary = shutil.which("chromium")
    if binary is None:
        missing("Debian's chromium", "run scripts/setup as root")
    return binary
