"""The backend's edge: the HTTP app (:mod:`.app` and its blueprints), the analysis jobs and
their runners, and what a job, a webhook or /predict does with a Label Studio project
(:mod:`.analyze`, :mod:`.verdicts`, :mod:`.predictions`). ``app_from_env`` is gunicorn's target.
"""

from .entrypoints import app_from_env

__all__ = ["app_from_env"]
