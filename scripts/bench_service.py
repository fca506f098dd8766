"""Service benchmark: time from "Start Training" to the review tab, and /predict latency,
on a real Label Studio with a project of a few thousand images.

    .venv/bin/python scripts/bench_service.py --mnist ../shared/datasets/mnist --images 3000

Without --mnist it uses scikit-learn's digits (1,797 images).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demo import CONFIG, digits, mnist, plant_errors, write_images  # noqa: E402  (scripts/ is this script's folder)

from ml_backend.config import Settings  # noqa: E402
from ml_backend.ls.admin import add_local_storage, connect_ml_backend, start_training  # noqa: E402
from ml_backend.ls.client import LabelStudioClient  # noqa: E402
from ml_backend.ls.dev_server import LabelStudioServer, free_port, start_backend, wait_for_job  # noqa: E402


def post(url: str, body: dict) -> tuple[float, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as resp:
        data = json.loads(resp.read())
    return time.perf_counter() - start, data


def percentiles(seconds: list[float]) -> str:
    ms = np.array(seconds) * 1000
    return f"p50 {np.percentile(ms, 50):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms"


def timed_run(client: LabelStudioClient, backend: str, backend_id: int, pid: int) -> dict:
    """Press Start Training and wait: seconds to the review tab, to every prediction, stage starts."""
    start = time.perf_counter()
    stages: dict[str, float] = {}  # stage -> seconds after Start Training when it began
    tab_at: list[float] = []

    def watch(state: dict) -> None:
        stages.setdefault(str(state.get("stage")), time.perf_counter() - start)
        if not tab_at and state.get("stage") == "predictions":  # the review tab is published
            tab_at.append(time.perf_counter() - start)

    start_training(client, backend_id)
    time.sleep(1)  # the previous run's "done" must not end the wait
    job = wait_for_job(backend, pid, timeout=3600, on_progress=watch)
    to_all = time.perf_counter() - start
    while "De-Confusion: review queue" not in {v["title"] for v in client.list_views(pid)}:
        time.sleep(0.5)
    return {"job": job, "to_tab": tab_at[0] if tab_at else time.perf_counter() - start, "to_all": to_all,
            "stages": stages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rerun", action="store_true", help="press Start Training a second time, nothing changed")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-service-"))
    images, truth = mnist(args.mnist, args.images) if args.mnist else digits()
    noisy, _ = plant_errors(truth, np.random.default_rng(0))
    names = write_images(images, work / "images")
    with LabelStudioServer(data_dir=work / "ls", files_root=work) as ls:
        port = free_port()
        settings = Settings.from_env({}, label_studio_url=ls.url, label_studio_api_key=ls.token,
                                     model_dir=str(work / "model_dir"), port=port, public_url=f"http://127.0.0.1:{port}")
        with start_backend(settings) as backend, LabelStudioClient(settings) as client:
            pid = client.create_project("bench", CONFIG.format(choices="\n".join(
                f'<Choice value="{d}"/>' for d in range(10))))
            add_local_storage(client, pid, work / "images")
            client.import_tasks(pid, [{"data": {"image": f"/data/local-files/?d=images/{n}"},
                                       "annotations": [{"result": [{"from_name": "label", "to_name": "image",
                                                                    "type": "choices", "value": {"choices": [str(y)]}}]}]}
                                      for n, y in zip(names, noisy)])
            backend_id = connect_ml_backend(client, pid, backend)
            runs = [timed_run(client, backend, backend_id, pid)]
            if args.rerun:
                runs.append(timed_run(client, backend, backend_id, pid))
            tasks = list(client.iter_tasks(pid))
            label_config = client.get_project(pid)["label_config"]
            known = [post(f"{backend}/predict", {"tasks": [tasks[i % len(tasks)]], "project": f"{pid}.0",
                                                 "label_config": label_config})[0] for i in range(args.requests)]
            new_task = {"id": 10 ** 9, "data": {"image": f"/data/local-files/?d=images/{names[0]}"}}
            new = [post(f"{backend}/predict", {"tasks": [new_task], "project": f"{pid}.0",
                                               "label_config": label_config})[0] for _ in range(20)]
    downloads = [json.loads((work / "model_dir" / "projects" / str(pid) / "versions" / r["job"]["model_version"] /
                             "analysis.json").read_text())["summary"].get("downloads", {}) for r in runs]
    print(f"\n{len(names)} images, jobs {[r['job']['status'] for r in runs]}\n")
    print("| measure | " + " | ".join(["first run", "second run, nothing changed"][:len(runs)]) + " |")
    print("|---|" + "---|" * len(runs))
    row = lambda name, values: print(f"| {name} | " + " | ".join(values) + " |")  # noqa: E731
    row("Start Training → review tab published", [f"{r['to_tab']:.0f} s" for r in runs])
    row("Start Training → every task has its prediction (job done)", [f"{r['to_all']:.0f} s" for r in runs])
    row("images downloaded / confirmed unchanged", [f"{d.get('fetched')} / {d.get('unchanged')}" for d in downloads])
    for stage in runs[0]["stages"]:
        row(f"stage `{stage}` began", [f"{r['stages'][stage]:.0f} s" if stage in r["stages"] else "—" for r in runs])
    print(f"| /predict, analysed task ({args.requests} requests) | {percentiles(known)} |")
    print(f"| /predict, new task (download + classify, 20 requests) | {percentiles(new)} |")


if __name__ == "__main__":
    main()
