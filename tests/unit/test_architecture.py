"""The stage boundaries the README promises: detectors are pure array code, and only the
Label Studio adapter speaks the SDK."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "ml_backend"


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add("." if node.level else node.module.split(".")[0])
    return roots


def test_only_the_label_studio_adapter_imports_the_sdk():
    users = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if "label_studio_sdk" in imported_roots(p)}
    assert users and all(u.startswith("ls/") for u in users), users


def test_detectors_import_only_array_libraries():
    allowed = {"__future__", "numpy", "scipy", "cleanlab", "threadpoolctl", "openTSNE", "math", "dataclasses",
               "typing", "warnings", "."}
    for path in (PACKAGE / "detectors").glob("*.py"):
        assert imported_roots(path) <= allowed, (path.name, imported_roots(path) - allowed)


def test_importing_every_detector_loads_neither_torch_nor_the_sdk():
    code = ("import sys, ml_backend.detectors.label_errors, ml_backend.detectors.duplicates, "
            "ml_backend.detectors.overview, ml_backend.detectors.maps, ml_backend.detectors.annotators; "
            "print(sorted(m for m in ('torch', 'label_studio_sdk', 'flask') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
