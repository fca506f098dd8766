"""Local demo: Label Studio + De-Confusion on an offline image set with planted label errors.

Run through ``scripts/demo`` (which sets up the virtualenvs first). Starts Label Studio
(from .venv-ls) and the backend on 127.0.0.1, creates a project from scikit-learn's bundled
digits (or MNIST with ``--mnist PATH``), plants class-interpretation and instance errors and
duplicates, connects the backend, presses "Start Training", waits for the analysis and
prints where to look. ``--servers-only`` starts just the two servers, for your own projects.
Ctrl-C or SIGTERM (``kill PID``, also of a background ``scripts/demo &``) stops both servers.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ml_backend.config import Settings  # noqa: E402
from ml_backend.ls.admin import add_local_storage, connect_ml_backend, ensure_webhook, start_training  # noqa: E402
from ml_backend.ls.client import LabelStudioClient  # noqa: E402
from ml_backend.ls.dev_server import LabelStudioServer, start_backend, wait_for_job  # noqa: E402
from ml_backend.store import ProjectStore  # noqa: E402

CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <Choices name="label" toName="image" choice="single" showInline="true">
{choices}
  </Choices>
</View>"""


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16.0 * 255).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(img).resize((32, 32), Image.BILINEAR)) for img in images])
    return big, data.target.astype(np.int64)


def mnist(folder: Path, limit: int) -> tuple[np.ndarray, np.ndarray]:
    def idx(name):
        raw = gzip.open(folder / name).read()
        dims = raw[3]
        shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
        return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)
    images, labels = idx("train-images-idx3-ubyte.gz"), idx("train-labels-idx1-ubyte.gz")
    if limit > len(images):  # all 70,000: the test images follow the training ones
        images = np.concatenate([images, idx("t10k-images-idx3-ubyte.gz")])
        labels = np.concatenate([labels, idx("t10k-labels-idx1-ubyte.gz")])
    return images[:limit], labels[:limit].astype(np.int64)


def plant_errors(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A labeler reads 7 as 1 for a fifth of the sevens; five single slips elsewhere."""
    noisy = labels.copy()
    sevens = np.flatnonzero(labels == 7)
    swapped = rng.choice(sevens, size=len(sevens) // 5, replace=False)
    noisy[swapped] = 1
    slips = [int(rng.choice(np.flatnonzero(labels == c))) for c in (0, 2, 4, 5, 8)]
    for i in slips:
        noisy[i] = (labels[i] + 3) % 10
    return noisy, {"class_interpretation": swapped.tolist(), "instance": slips}


def write_images(images: np.ndarray, folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, img in enumerate(images):
        name = f"{i:05d}.png"
        Image.fromarray(img).save(folder / name)
        names.append(name)
    return names


def stop_on_signals() -> None:
    """Make Ctrl-C and SIGTERM unwind main()'s with-blocks, which stop the backend and Label
    Studio (each runs in its own session, so no signal reaches them otherwise). Set explicitly:
    a background job (``scripts/demo &``) inherits SIGINT ignored, and Python's default for
    SIGTERM exits without any cleanup."""
    def stop(signum, frame):
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # a second signal must not cut the cleanup short
        print(f"{signal.Signals(signum).name}: stopping the backend and Label Studio", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)


def build_demo(args, ls: LabelStudioServer, settings: Settings, backend_url: str) -> dict:
    """The demo project: planted errors, imported, analysed; returns where to look."""
    rng = np.random.default_rng(0)
    images, truth = mnist(args.mnist, args.limit) if args.mnist else digits()
    noisy, planted = plant_errors(truth, rng)
    images = np.concatenate([images, images[:3]])  # three duplicates; the first crosses train/val
    noisy = np.concatenate([noisy, noisy[:3]])
    split = np.where(rng.random(len(noisy)) < 1 / 7, "val", "train")
    split[-3], split[0] = ("val", "train")
    image_dir = args.workdir / "images"
    names = write_images(images, image_dir)

    choices = "\n".join(f'    <Choice value="{d}"/>' for d in range(10))
    tasks = [{"data": {"image": f"/data/local-files/?d={image_dir.relative_to(args.workdir)}/{name}",
                       "split": str(s)},
              "annotations": [{"result": [{"from_name": "label", "to_name": "image", "type": "choices",
                                           "value": {"choices": [str(int(y))]}}]}]}
             for name, y, s in zip(names, noisy, split)]
    with LabelStudioClient(settings) as client:
        pid = client.create_project("Digits (demo)", CONFIG.format(choices=choices))
        add_local_storage(client, pid, image_dir)
        task_ids = client.import_tasks(pid, tasks)
        backend_id = connect_ml_backend(client, pid, backend_url, "De-Confusion")
        ensure_webhook(client, pid, f"{backend_url}/webhook")
        print(f"project {pid}: {len(tasks)} images imported; Start Training pressed", file=sys.stderr, flush=True)
        started = time.perf_counter()
        start_training(client, backend_id)
        job = wait_for_job(backend_url, pid, timeout=1800, on_progress=StageLog())
        views = {v["title"]: v["id"] for v in client.list_views(pid)}
    queue = views.get("De-Confusion: review queue")
    project = json.loads((Path(settings.model_dir) / "projects" / str(pid) / "project.json").read_text())
    return {
        "analysis": job.get("status"), "seconds": round(time.perf_counter() - started, 1),
        "review_queue": f"{ls.url}/projects/{pid}/data?tab={queue}",
        "overview_project": f"{ls.url}/projects/{project.get('overview_project')}",
        "report": f"{backend_url}/report/{pid}",
        "planted": {"class_interpretation": len(planted["class_interpretation"]),
                    "instance": len(planted["instance"]), "duplicates": 3},
        "found": found_against_planted(settings, pid, task_ids, planted, copies=[(0, len(tasks) - 3),
                                       (1, len(tasks) - 2), (2, len(tasks) - 1)]),
    }


class StageLog:
    """Prints the job's stage, counts and ETA whenever the stage changes, and every 10 s within one."""

    def __init__(self) -> None:
        self.last: tuple[str, float] = ("", 0.0)

    def __call__(self, job: dict) -> None:
        stage, now = str(job.get("stage") or job.get("status")), time.monotonic()
        if stage == self.last[0] and now - self.last[1] < 10:
            return
        self.last = (stage, now)
        eta = job.get("eta_seconds")
        counts = f" {job.get('done')}/{job.get('total')}" if job.get("total") else ""
        print(f"  {stage}{counts}" + (f", about {eta:.0f} s left in this stage" if eta else ""),
              file=sys.stderr, flush=True)


def found_against_planted(settings: Settings, pid: int, task_ids: list[int], planted: dict,
                          copies: list[tuple[int, int]]) -> dict:
    """How many planted errors are review candidates and how many planted copies were paired."""
    analysis = ProjectStore(settings.model_dir, pid).load_analysis()
    index = analysis.index_of_task()
    flagged = {int(analysis.task_ids[i]) for i in range(len(analysis)) if analysis.is_candidate[i]}
    paired = {frozenset((int(analysis.task_ids[p["a"]]), int(analysis.task_ids[p["b"]]))) for p in analysis.duplicates}
    in_queue = {kind: sum(task_ids[i] in flagged for i in members) for kind, members in planted.items()}
    return {**{kind: f"{n}/{len(planted[kind])} in the review queue" for kind, n in in_queue.items()},
            "duplicates": f"{sum(frozenset((task_ids[a], task_ids[b])) in paired for a, b in copies)}/{len(copies)} "
                          f"paired", "candidates": len(flagged), "images": len(index)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, help="MNIST idx folder (default: scikit-learn digits, offline)")
    parser.add_argument("--limit", type=int, default=3000, help="images taken from MNIST")
    parser.add_argument("--workdir", type=Path, default=ROOT / "demo-data")
    parser.add_argument("--ls-port", type=int, default=8080)
    parser.add_argument("--backend-port", type=int, default=9090)
    parser.add_argument("--exit", action="store_true", help="stop the servers after printing the results")
    parser.add_argument("--servers-only", action="store_true",
                        help="start Label Studio and the backend, without the demo project")
    args = parser.parse_args()
    # Label Studio compares a local storage's path with its document root as given: both absolute
    args.workdir = args.workdir.resolve()
    args.mnist = args.mnist.resolve() if args.mnist else None
    stop_on_signals()

    print(f"starting Label Studio (:{args.ls_port}) and the backend (:{args.backend_port}) on 127.0.0.1",
          file=sys.stderr, flush=True)
    # A personal access token, legacy tokens off; the admin's password is random per workdir.
    with LabelStudioServer(port=args.ls_port, data_dir=args.workdir / "label-studio",
                           files_root=args.workdir, legacy_token=False) as ls:
        settings = Settings.from_env({}, label_studio_url=ls.url, label_studio_api_key=ls.token,
                                     model_dir=str(args.workdir / "model_dir"), port=args.backend_port,
                                     public_url=f"http://127.0.0.1:{args.backend_port}")
        # beside Label Studio, the backend reads the demo's local files itself (LOCAL_FILES_DOCUMENT_ROOT)
        with start_backend(settings, extra_env={"LOCAL_FILES_DOCUMENT_ROOT": str(ls.files_root)}) as backend_url:
            result = {"label_studio": ls.url, "backend": backend_url}
            if not args.servers_only:
                result.update(build_demo(args, ls, settings, backend_url))
            result["login"] = {"email": ls.username, "password": ls.password}
            print(json.dumps(result, indent=1), flush=True)
            if args.exit:
                return
            print(f"Label Studio and the backend keep running; Ctrl-C or kill {os.getpid()} stops them.", flush=True)
            while True:
                time.sleep(3600)


if __name__ == "__main__":
    main()
