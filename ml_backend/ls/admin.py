"""Project set-up the backend itself never does, as a user would in Label Studio's UI: local
storage, the ML backend connection, webhooks, Start Training, the labeling config. Used by the
demo, the review-panel script, the benchmarks and the tests; each call takes a LabelStudioClient.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

from .client import LabelStudioClient


def add_local_storage(client: LabelStudioClient, project_id: int, path: str | os.PathLike) -> int:
    """Serve files under ``path`` as /data/local-files/?d=<path relative to
    LOCAL_FILES_DOCUMENT_ROOT> (needs LOCAL_FILES_SERVING_ENABLED=true on the server)."""
    body = {"project": int(project_id), "path": str(Path(path).resolve()), "title": "images",
            "use_blob_urls": True, "regex_filter": ".*"}
    return int(client.request("POST", "/api/storages/localfiles", json=body)["id"])


def update_label_config(client: LabelStudioClient, project_id: int, label_config: str) -> None:
    client.request("PATCH", f"/api/projects/{int(project_id)}/", json={"label_config": label_config})


def connect_ml_backend(client: LabelStudioClient, project_id: int, url: str, title: str = "De-Confusion") -> int:
    """Connect the backend at ``url`` to the project (once); returns its id. Label Studio calls
    <url>/setup to validate and adds a <url>/webhook webhook for all actions."""
    for backend in client.request("GET", "/api/ml/", params={"project": int(project_id)}) or []:
        if str(backend.get("url", "")).rstrip("/") == url.rstrip("/"):
            return int(backend["id"])
    body = {"project": int(project_id), "url": url, "title": title, "is_interactive": False}
    return int(client.request("POST", "/api/ml/", json=body)["id"])


def start_training(client: LabelStudioClient, backend_id: int) -> None:
    """What the "Start Training" button does: Label Studio posts START_TRAINING to the backend."""
    client.request("POST", f"/api/ml/{int(backend_id)}/train", json={})


def ensure_webhook(client: LabelStudioClient, project_id: int, url: str, actions: Iterable[str] | None = None, *,
                   headers: Mapping[str, str] | None = None) -> int:
    """A project webhook to ``url`` with payloads for ``actions`` (None: all actions) that
    sends ``headers`` (e.g. the backend's WEBHOOK_SECRET). Idempotent: an existing webhook to
    ``url`` is reused, widened to ``actions`` and given ``headers`` if needed."""
    wanted = None if actions is None else sorted(set(actions))
    for hook in client.request("GET", "/api/webhooks/", params={"project": int(project_id)}) or []:
        if hook.get("url") != url or hook.get("project") not in (None, int(project_id)):
            continue
        patch = _webhook_patch(hook, wanted, headers)
        if patch:
            client.request("PATCH", f"/api/webhooks/{int(hook['id'])}/", json=patch)
        return int(hook["id"])
    body = {"project": int(project_id), "url": url, "send_payload": True, "is_active": True,
            "send_for_all_actions": wanted is None, "actions": wanted or [], "headers": dict(headers or {})}
    return int(client.request("POST", "/api/webhooks/", json=body)["id"])


def _webhook_patch(hook: dict, wanted: list[str] | None, headers: Mapping[str, str] | None) -> dict:
    """What an existing webhook lacks: payloads, being active, the ``wanted`` actions, ``headers``."""
    covered = hook.get("send_for_all_actions") or (
        wanted is not None and set(wanted) <= set(hook.get("actions") or []))
    patch = {}
    if not (covered and hook.get("send_payload") and hook.get("is_active", True)):
        patch = {"send_payload": True, "is_active": True}
        if wanted is None:
            patch["send_for_all_actions"] = True
        elif not hook.get("send_for_all_actions"):
            patch["actions"] = sorted(set(wanted) | set(hook.get("actions") or []))
    if headers and not dict(headers).items() <= (hook.get("headers") or {}).items():
        patch["headers"] = {**(hook.get("headers") or {}), **headers}
    return patch
