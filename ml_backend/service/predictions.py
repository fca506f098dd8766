"""/predict: the stored analysis answers for analysed tasks; a task the analysis did not see
gets the saved fold models' answer for its downloaded image."""

from __future__ import annotations

import logging

from .. import publish
from ..config import Settings
from ..dataset import decode_image, fit_to_shape
from ..ls.client import LabelStudioClient
from ..ls.schema import ClassSpec, parse_label_config
from ..model.ensemble import ModelSet
from ..store import ProjectStore
from ..vocabulary import UNTRAINED_VERSION

log = logging.getLogger(__name__)


class Predictor:
    """Answers /predict: stored analysis for analysed tasks, the current model for new ones."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._cache: dict[int, tuple[str, dict[int, tuple[str, float]], list[str]]] = {}
        self._models: dict[int, tuple[str, ModelSet]] = {}  # project id -> (version, its fold models)

    def current_version(self, project_id: int) -> str | None:
        return ProjectStore(self.settings.model_dir, project_id).current_version()

    def _answers(self, project_id: int) -> tuple[str, dict[int, tuple[str, float]]] | None:
        store = ProjectStore(self.settings.model_dir, project_id)
        version = store.current_version()
        if version is None:
            return None
        cached = self._cache.get(project_id)
        if cached is None or cached[0] != version:
            analysis = store.load_analysis(version)
            best = analysis.pred_probs.max(axis=1)
            by_task = {int(t): (analysis.class_names[analysis.predicted[i]], float(best[i]))
                       for i, t in enumerate(analysis.task_ids) if t >= 0}
            self._cache[project_id] = cached = (version, by_task, analysis.class_names)
        return cached[0], cached[1]

    def __call__(self, project_id: int, tasks: list[dict], label_config: str | None) -> list[dict]:
        answers = self._answers(project_id)
        if answers is None:
            return [{"result": [], "score": 0.0, "model_version": UNTRAINED_VERSION} for _ in tasks]
        version, by_task = answers
        spec = parse_label_config(label_config) if label_config else ClassSpec(
            **ProjectStore(self.settings.model_dir, project_id).project_info()["spec"])
        results = []
        for task in tasks:
            known = by_task.get(int(task.get("id", -1)))
            label, score = known if known else self._classify(project_id, version, task, spec)
            results.append({"result": [publish.choice_result(spec, label)] if label else [],
                            "score": round(score, 6), "model_version": version})
        return results

    def _classify(self, project_id: int, version: str, task: dict, spec: ClassSpec) -> tuple[str | None, float]:
        """A task the analysis did not see: download its image and ask the fold models."""
        store = ProjectStore(self.settings.model_dir, project_id)
        held = self._models.get(project_id)
        if held is None or held[0] != version:  # one model set per project: the current version's
            held = self._models[project_id] = (version, ModelSet.load(store.version_dir(version) / "model.pt"))
        model = held[1]
        try:
            with LabelStudioClient(self.settings) as client:
                data = client.fetch_image(task, spec)
            pixels, _ = decode_image(data, name=f"task {task.get('id')}")
        except Exception as exc:  # an unreadable new image gets an empty answer, not a failed request
            log.warning("predict: task %s: %s", task.get("id"), exc)
            return None, 0.0
        probs = model.predict_proba(fit_to_shape(pixels, model.input_shape)[None])[0]
        k = int(probs.argmax())
        return model.class_names[k], float(probs[k])
