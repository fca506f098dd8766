"""Service benchmark: time from "Start Training" to the review tab, and /predict latency,
on a real Label Studio with a project of a few thousand images.

    .venv/bin/python scripts/bench_service.py --mnist ../shared/datasets/mnist --images 3000

Without --mnist it uses scikit-learn's digits (1,797 images). The images are served by Label
Studio's local-files route; with --images-from local-disk the backend reads those files from disk
(LOCAL_FILES_DOCUMENT_ROOT); with --images-from http a plain web server serves them.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import re
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demo import CONFIG, digits, mnist, plant_errors, write_images  # noqa: E402  (scripts/ is this script's folder)

from ml_backend.config import Settings  # noqa: E402
from ml_backend.ls.admin import add_local_storage, connect_ml_backend, start_training  # noqa: E402
from ml_backend.ls.client import LabelStudioClient  # noqa: E402
from ml_backend.ls.dev_server import LabelStudioServer, free_port, start_backend, wait_for_job  # noqa: E402
from ml_backend.service.jobs import STAGE_MESSAGES  # noqa: E402


def post(url: str, body: dict) -> tuple[float, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as resp:
        data = json.loads(resp.read())
    return time.perf_counter() - start, data


def percentiles(seconds: list[float]) -> str:
    ms = np.array(seconds) * 1000
    return f"p50 {np.percentile(ms, 50):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms"


def predict_load(backend: str, body_for: Callable[[int], dict], seconds: float, clients: int = 8) -> dict:
    """``clients`` threads posting /predict back to back for ``seconds``: requests/s, p50, p99 (ms)."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    def client(offset: int) -> None:
        i = offset
        while time.perf_counter() < stop:
            latencies.append(post(f"{backend}/predict", body_for(i))[0])
            i += clients

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ms = np.array(latencies) * 1000
    return {"rps": len(ms) / seconds, "p50": np.percentile(ms, 50), "p99": np.percentile(ms, 99)}


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # one line per image would drown the table
        pass


@contextlib.contextmanager
def plain_http_server(folder: Path):
    """A plain web server (Python's, threaded) for ``folder``: sends Last-Modified and answers
    If-Modified-Since with 304, as most static file servers do. Yields its base URL."""
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def timed_run(client: LabelStudioClient, backend: str, backend_id: int, pid: int,
              on_stage: Callable[[str], None] = lambda stage: None) -> dict:
    """Press Start Training and wait: seconds until review can start (the tabs up, the queue's
    first tasks final), until the whole queue is final, until every task has this version's
    prediction, until the job is done (older versions' predictions removed); stage starts.
    ``on_stage(stage)`` is called when a stage begins."""
    start = time.perf_counter()
    stages: dict[str, float] = {}  # stage -> seconds after Start Training when it began
    tab_at: list[float] = []
    queue_at: list[float] = []
    predicted_at: list[float] = []
    review_stages = list(STAGE_MESSAGES)  # queue, more fields, predictions, old predictions

    def watch(state: dict) -> None:
        if str(state.get("stage")) not in stages:
            on_stage(str(state.get("stage")))
        stages.setdefault(str(state.get("stage")), time.perf_counter() - start)
        for reached, stages_from in ((tab_at, review_stages), (queue_at, review_stages[1:]),
                                     (predicted_at, review_stages[3:])):
            if not reached and state.get("stage") in stages_from:
                reached.append(time.perf_counter() - start)

    start_training(client, backend_id)
    time.sleep(1)  # the previous run's "done" must not end the wait
    job = wait_for_job(backend, pid, timeout=3600, on_progress=watch)
    to_all = time.perf_counter() - start
    while "De-Confusion: review queue" not in {v["title"] for v in client.list_views(pid)}:
        time.sleep(0.5)
    with urllib.request.urlopen(f"{backend}/metrics", timeout=30) as resp:
        peak_mb = json.load(resp)["peak_memory_mb"]
    return {"job": job, "to_tab": tab_at[0] if tab_at else to_all, "to_queue": queue_at[0] if queue_at else to_all,
            "to_predicted": predicted_at[0] if predicted_at else to_all, "to_all": to_all, "stages": stages,
            "peak_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rerun", choices=["unchanged", "relabeled"],
                        help="press Start Training a second time: with nothing changed, or after relabeling 1%% of "
                             "the tasks (it then trains, under a /predict load)")
    parser.add_argument("--load-seconds", type=float, default=30.0, help="length of each /predict load test")
    parser.add_argument("--images-from", choices=["label-studio", "local-disk", "http"], default="label-studio",
                        help="who serves the images: Label Studio's local-files route; the same files read by the "
                             "backend from disk (LOCAL_FILES_DOCUMENT_ROOT); or a plain web server")
    parser.add_argument("--server", choices=["serve", "gunicorn"], default="serve",
                        help="the backend's HTTP server: `python -m ml_backend serve`, or gunicorn as in the Dockerfile")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-service-"))
    images, truth = mnist(args.mnist, args.images) if args.mnist else digits()
    noisy, _ = plant_errors(truth, np.random.default_rng(0))
    names = write_images(images, work / "images")
    web_server = plain_http_server(work / "images") if args.images_from == "http" else contextlib.nullcontext("")
    with LabelStudioServer(data_dir=work / "ls", files_root=work) as ls, web_server as web:
        port = free_port()
        settings = Settings.from_env({}, label_studio_url=ls.url, label_studio_api_key=ls.token,
                                     model_dir=str(work / "model_dir"), port=port, public_url=f"http://127.0.0.1:{port}")
        image_url = (f"{web}/{{}}" if args.images_from == "http" else "/data/local-files/?d=images/{}").format
        env = {"http": {"DOWNLOAD_ALLOW": "127.0.0.1"}, "local-disk": {"LOCAL_FILES_DOCUMENT_ROOT": str(work)}}
        with start_backend(settings, server=args.server, extra_env=env.get(args.images_from, {})) as backend, \
                LabelStudioClient(settings) as client:
            pid = client.create_project("bench", CONFIG.format(choices="\n".join(
                f'<Choice value="{d}"/>' for d in range(10))))
            if args.images_from != "http":
                add_local_storage(client, pid, work / "images")
            client.import_tasks(pid, [{"data": {"image": image_url(n)},
                                       "annotations": [{"result": [{"from_name": "label", "to_name": "image",
                                                                    "type": "choices", "value": {"choices": [str(y)]}}]}]}
                                      for n, y in zip(names, noisy)])
            backend_id = connect_ml_backend(client, pid, backend)
            runs = [timed_run(client, backend, backend_id, pid)]
            tasks = list(client.iter_tasks(pid))
            label_config = client.get_project(pid)["label_config"]

            def body_for(i: int) -> dict:
                return {"tasks": [tasks[i % len(tasks)]], "project": f"{pid}.0", "label_config": label_config}

            loads = {"idle": predict_load(backend, body_for, args.load_seconds)}
            if args.rerun == "relabeled":
                for task in tasks[::100]:  # a second annotator disagrees: the next analysis must train again
                    given = task["annotations"][0]["result"][0]["value"]["choices"][0]
                    client.request("POST", f"/api/tasks/{task['id']}/annotations/", json={"result": [{
                        "from_name": "label", "to_name": "image", "type": "choices",
                        "value": {"choices": [str((int(given) + 1) % 10)]}}]})
            if args.rerun:
                load_thread: list[threading.Thread] = []

                def load_while_training(stage: str) -> None:
                    if stage == "train" and not load_thread:
                        load_thread.append(threading.Thread(target=lambda: loads.update(
                            {"while an analysis trains": predict_load(backend, body_for, args.load_seconds)})))
                        load_thread[0].start()

                runs.append(timed_run(client, backend, backend_id, pid, on_stage=load_while_training))
                for t in load_thread:
                    t.join()
            known = [post(f"{backend}/predict", body_for(i))[0] for i in range(args.requests)]
            new_task = {"id": 10 ** 9, "data": {"image": image_url(names[0])}}
            new = [post(f"{backend}/predict", {"tasks": [new_task], "project": f"{pid}.0",
                                               "label_config": label_config})[0] for _ in range(20)]
    # one line per run in the backend's log (a run that keeps the published version saves no summary)
    downloads = re.findall(r"(\d+) images downloaded, (\d+) unchanged", (work / "model_dir" / "backend.log").read_text())
    print(f"\n{len(names)} images served by {args.images_from}, backend under {args.server}, jobs {[r['job']['status'] for r in runs]}\n")
    print("| measure | " + " | ".join(["first run", f"second run, {args.rerun}"][:len(runs)]) + " |")
    print("|---|" + "---|" * len(runs))
    row = lambda name, values: print(f"| {name} | " + " | ".join(values) + " |")  # noqa: E731
    row("Start Training → review can start (tabs up, the queue's first tasks final)", [f"{r['to_tab']:.0f} s" for r in runs])
    row("Start Training → the whole review queue final", [f"{r['to_queue']:.0f} s" for r in runs])
    row("Start Training → every task has this version's prediction", [f"{r['to_predicted']:.0f} s" for r in runs])
    row("Start Training → older versions' predictions removed (job done)", [f"{r['to_all']:.0f} s" for r in runs])
    row("backend peak memory so far (its /metrics)", [f"{r['peak_mb'] / 1024:.2f} GB" for r in runs])
    row("images downloaded / confirmed unchanged", [f"{fetched} / {same}" for fetched, same in downloads])
    row("job's message", [r["job"]["message"] for r in runs])
    for stage in runs[0]["stages"]:
        row(f"stage `{stage}` began", [f"{r['stages'][stage]:.0f} s" if stage in r["stages"] else "—" for r in runs])
    print(f"| /predict, analysed task ({args.requests} requests) | {percentiles(known)} |")
    print(f"| /predict, new task (download + classify, 20 requests) | {percentiles(new)} |")
    for when, load in loads.items():
        print(f"| /predict on analysed tasks, 8 clients for {args.load_seconds:.0f} s, {when} | {load['rps']:.0f} req/s, "
              f"p50 {load['p50']:.1f} ms, p99 {load['p99']:.1f} ms |")


if __name__ == "__main__":
    main()
