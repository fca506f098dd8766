"""Command line: ``python -m ml_backend analyze|serve|worker|unpublish``.

Every option mirrors a setting in :mod:`ml_backend.config` (flag ``--folds`` = env
``DECONFUSION_FOLDS``); flags win over environment variables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from tqdm import tqdm

from .config import ENV_NAMES, MACHINE_SETTINGS, Settings, add_cli_flags, configure_logging, settings_from_args
from .errors import DatasetError, DeConfusionError

TRAINING_FLAGS = ["folds", "epochs", "seed", "backbone", "backbone_weights", "device", "batch_size",
                  "ssim_threshold", "knn_k", "list_recall", "confirmed_weight", "verifier"]
SERVICE_FLAGS = [f.name for f in dataclasses.fields(Settings) if f.name not in TRAINING_FLAGS]
# A job carries the settings of the service that queued it; a worker chooses its queue, its log and
# what describes its own machine (config.MACHINE_SETTINGS).
WORKER_FLAGS = ["redis_url", "queue_name", "log_level", *MACHINE_SETTINGS]


class StageBar:
    """One tqdm bar per pipeline stage, fed by ``progress(stage, done, total)``."""

    def __init__(self) -> None:
        self.stage: str | None = None
        self.bar: tqdm | None = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=total, desc=f"{stage:<12}", unit="it", dynamic_ncols=True, leave=True)
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def cmd_analyze(args: argparse.Namespace) -> int:
    from .analysis import save, write_exports
    from .dataset import load_folder
    from .pipeline import run_analysis
    from .reviews import apply_reviews, read_verdicts
    from .views.overview import overview_html

    settings = settings_from_args(args)
    out = output_folder(Path(args.root), Path(args.out))
    bar = StageBar()
    try:
        dataset = load_folder(args.root, progress=lambda done, total: bar("load", done, total), scratch_dir=out)
        reviews = read_verdicts(args.verdicts, dataset) if args.verdicts else {}
        dataset, outcome = apply_reviews(dataset, reviews, settings.confirmed_weight)
        analysis, ensemble = run_analysis(dataset, settings, progress=bar, reviews=outcome if reviews else None)
    finally:
        bar.close()
    save(analysis, out)
    write_exports(analysis, out)
    ensemble.save(out / "model.pt")
    (out / "overview.html").write_text(overview_html(analysis), encoding="utf-8")
    s = analysis.summary
    print(json.dumps({
        "out": str(out), "images": s["images"], "skipped": len(s["skipped"]), "candidates": s["candidates"],
        "reviewed": s["reviewed"],
        "estimated_error_rate": s["estimated_error_rate"], "duplicate_pairs": s["duplicate_pairs"],
        "leakage_pairs": s["leakage_pairs"], "model_version": analysis.model_version,
    }, indent=1))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .service.entrypoints import serve

    serve(settings_from_args(args))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from .service.entrypoints import run_worker

    for name in MACHINE_SETTINGS:  # the jobs it forks read them from its environment
        if getattr(args, name) is not None:
            os.environ[ENV_NAMES[name]] = str(getattr(args, name))
    run_worker(settings_from_args(args))
    return 0


def cmd_unpublish(args: argparse.Namespace) -> int:
    from .publish import unpublish_project

    print(json.dumps(unpublish_project(args.project, settings_from_args(args)), indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ml_backend", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    analyze = sub.add_parser("analyze", help="Find label errors and duplicates in an image folder.")
    analyze.add_argument("root", help="ROOT/<label>/<image> or ROOT/{train,val}/<label>/<image>")
    analyze.add_argument("--out", required=True, help="Output folder (created).")
    analyze.add_argument("--verdicts", help="CSV of reviewers' verdicts (columns item, verdict, label; verdict: "
                                            "confirmed | relabeled | removed | ambiguous) to analyse with.")
    add_cli_flags(analyze, [*TRAINING_FLAGS, "log_level"])
    analyze.set_defaults(func=cmd_analyze)

    serve = sub.add_parser("serve", help="Run the Label Studio ML backend (development server).")
    add_cli_flags(serve, SERVICE_FLAGS + TRAINING_FLAGS)
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="Run an RQ worker for analyses (needs REDIS_URL).")
    add_cli_flags(worker, WORKER_FLAGS)
    worker.set_defaults(func=cmd_worker)
    unpublish = sub.add_parser("unpublish", help="Remove everything the backend wrote from a Label Studio project "
                                                 "(predictions, dc_ fields, tabs, overview project); annotations stay.")
    unpublish.add_argument("--project", type=int, required=True, help="Label Studio project id")
    add_cli_flags(unpublish, SERVICE_FLAGS)
    unpublish.set_defaults(func=cmd_unpublish)
    return parser


def output_folder(root: Path, out: Path) -> Path:
    """``out``, made, before any work: a folder inside ROOT would be read as a class by the next
    run, and a file or a folder that cannot be made would only fail once the analysis is done."""
    if out.resolve().is_relative_to(root.resolve()):
        raise DatasetError(f"--out {out} is inside ROOT {root}: the next run would read its files as images "
                           "of a class; write the analysis outside the image folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"--out {out} cannot be made a folder ({exc.strerror or exc}); give a folder path") from None
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        configure_logging(settings_from_args(args).log_level)  # --log-level, else LOG_LEVEL
        return args.func(args)
    except (DeConfusionError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
