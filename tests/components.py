"""What a tier does when a component it needs (Label Studio, redis-server, Chromium) is missing:
skip on a developer's machine, fail under ``CI=true``, so a run can never go green by skipping."""

from __future__ import annotations

import os

import pytest


def missing(component: str, how_to_get_it: str) -> None:
    message = f"{component} is not installed: {how_to_get_it}"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"{message} (CI=true: a missing component fails the run instead of skipping a tier)")
    pytest.skip(message)
