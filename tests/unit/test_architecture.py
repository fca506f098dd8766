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


# Each part of the package, and the parts it may import from (the data flows downwards:
# Label Studio adapter and data set -> model -> detectors -> analysis -> publish -> service).
LAYERS = {
    "vocabulary": set(), "errors": set(), "config": set(),
    "detectors": {"vocabulary"},
    "ls": {"errors", "config", "vocabulary", "dataset"},
    "dataset": {"errors", "vocabulary"},
    "reviews": {"errors", "dataset"},
    "store": {"errors", "analysis"},
    "model": {"errors", "vocabulary"},
    "analysis": {"errors"},
    "pipeline": {"analysis", "config", "dataset", "detectors", "model", "reviews", "vocabulary", "errors"},
    "views": {"analysis", "errors", "vocabulary", "detectors"},
    "publish": {"analysis", "config", "ls", "store", "views", "vocabulary", "errors"},
    "service": {"analysis", "config", "dataset", "detectors", "errors", "ls", "model", "pipeline", "publish", "reviews",
                "store", "views", "vocabulary"},
}


def package_imports(path: Path) -> set[str]:
    """The top-level parts of ml_backend that ``path`` imports (relative imports resolved)."""
    here = path.relative_to(PACKAGE).parts[:-1]
    parts = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here[:len(here) - node.level + 1]
            target = [*base, *(node.module.split(".") if node.module else [])]
            names = [target[0]] if target else [a.name for a in node.names if not a.name.startswith("__")]
            parts |= set(names)
        elif isinstance(node, ast.ImportFrom) and node.module.startswith("ml_backend."):
            parts.add(node.module.split(".")[1])
    return parts


def test_each_part_imports_only_the_parts_below_it():
    for path in PACKAGE.rglob("*.py"):
        part = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if part in ("__init__", "__main__", "cli"):
            continue
        assert part in LAYERS, f"{part}: add the new part of the package to LAYERS"
        assert package_imports(path) - {part} <= LAYERS[part], (path.name, package_imports(path) - LAYERS[part] - {part})
