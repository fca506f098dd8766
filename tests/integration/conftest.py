"""A real Label Studio server (from .venv-ls) and a real backend process, on 127.0.0.1."""

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from lsserver import LS_VENV, LabelStudioServer, free_port, start_backend  # noqa: E402

from ml_backend.config import Settings  # noqa: E402


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.live_ls)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    if not (LS_VENV / "bin" / "label-studio").exists():
        pytest.skip(f"Label Studio is not installed in {LS_VENV}: run scripts/setup")
    root = tmp_path_factory.mktemp("ls")
    with LabelStudioServer(data_dir=root / "data", files_root=root / "files") as server:
        (root / "files").mkdir(exist_ok=True)
        server.files = root / "files"
        yield server


@pytest.fixture(scope="session")
def backend(label_studio, tmp_path_factory):
    port = free_port()
    settings = Settings.from_env({}, label_studio_url=label_studio.url, label_studio_api_key=label_studio.token,
                                 model_dir=str(tmp_path_factory.mktemp("model_dir")), port=port,
                                 public_url=f"http://127.0.0.1:{port}")
    with start_backend(settings) as url:
        yield url, settings


@pytest.fixture(scope="session")
def chromium():
    binary = shutil.which("chromium")
    if binary is None:
        pytest.skip("Debian's chromium is not installed: run scripts/setup as root")
    return binary
