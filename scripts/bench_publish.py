"""Where publishing spends its time in a real Label Studio: bulk prediction import by request
size, deleting a model version, writing our fields on the flagged share of the tasks, and
finding the tasks that carry our fields (the export of every task against a Data Manager filter).

    .venv/bin/python scripts/bench_publish.py --tasks 20000 --batches 1000 50000

Starts its own Label Studio (from .venv-ls, SQLite) on 127.0.0.1 with a project of image-less
tasks, and prints one table row per measurement.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ml_backend.config import Settings  # noqa: E402
from ml_backend.ls import client as client_module  # noqa: E402
from ml_backend.ls.client import LabelStudioClient  # noqa: E402
from ml_backend.ls.dev_server import LabelStudioServer  # noqa: E402

CONFIG = ('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
          '<Choice value="a"/><Choice value="b"/></Choices></View>')


def task(i: int) -> dict:
    """An image-less task with one annotation, as a labeled project has."""
    return {"data": {"image": f"/x/{i}.png"}, "annotations": [{"result": [
        {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["ab"[i % 2]]}}]}]}


def prediction(task_id: int, version: str) -> dict:
    return {"task": task_id, "score": 0.5, "model_version": version,
            "result": [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["a"]}}]}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--batches", type=int, nargs="+", default=[1000, client_module.PREDICTION_BATCH],
                        help="predictions per import request")
    parser.add_argument("--flagged", type=float, default=0.15, help="share of tasks that get our fields")
    parser.add_argument("--workers", type=int, nargs="+", default=[client_module.WORKERS],
                        help="concurrent requests while writing fields (one measurement each)")
    args = parser.parse_args()
    with LabelStudioServer(data_dir=Path(tempfile.mkdtemp(prefix="bench-publish-"))) as ls, \
            LabelStudioClient(Settings.from_env({}, label_studio_url=ls.url, label_studio_api_key=ls.token)) as client:
        pid = client.create_project("publish benchmark", CONFIG)
        rows = []
        ids: list[int] = []
        rows.append((f"import {args.tasks} tasks, one annotation each", timed(lambda: ids.extend(
            client.import_tasks(pid, [task(i) for i in range(args.tasks)])))))
        rows.append(("find the tasks that carry our fields, none yet: Data Manager filter",
                     timed(lambda: client.own_keys_by_task(pid))))
        for batch in args.batches:
            client_module.PREDICTION_BATCH = batch
            version = f"deconfusion-bench-{batch}"
            rows.append((f"create {len(ids)} predictions, {batch} per request",
                         timed(lambda: client.create_predictions(pid, [prediction(t, version) for t in ids]))))
            rows.append(("delete that model version", timed(lambda: client.delete_predictions(pid))))
        for workers in args.workers:
            client_module.WORKERS = workers
            # a value that differs from the previous measurement's, so every run writes every task
            flagged = {t: {"dc_error_score": 0.9, "dc_candidate": workers} for t in ids[:int(args.flagged * len(ids))]}
            rows.append((f"write fields on {len(flagged)} tasks (re-read + PATCH each), {workers} at a time",
                         timed(lambda: client.sync_task_fields(pid, flagged))))
        found: dict = {}
        rows.append((f"find the tasks that carry our fields: export of all {len(ids)} (before)",
                     timed(lambda: client.export_tasks(pid))))
        rows.append(("find the tasks that carry our fields: Data Manager filter (now)",
                     timed(lambda: found.update(client.own_keys_by_task(pid)))))
        assert len(found) == len(flagged), f"the filter found {len(found)} of {len(flagged)} tasks with fields"
    print("\n| step | seconds |\n|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
