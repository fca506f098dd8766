"""An unchanged project is not analysed again: the inputs' fingerprint decides."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ml_backend.config import Settings
from ml_backend.dataset import Record, build_dataset
from ml_backend.service.analyze import input_fingerprint


def dataset(labels: list[str], pixels: int = 0):
    def png(value: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.full((9, 9), value, np.uint8)).save(buf, format="PNG")
        return buf.getvalue()
    return build_dataset([Record(f"task-{n}", png(n + pixels), label, task_id=n) for n, label in enumerate(labels)])


def test_the_fingerprint_follows_every_input_of_an_analysis():
    settings = Settings()
    base = input_fingerprint(dataset(["a", "b", "a"]), {}, settings)
    assert input_fingerprint(dataset(["a", "b", "a"]), {}, settings) == base  # same inputs, same analysis
    changed = [
        input_fingerprint(dataset(["a", "b", "b"]), {}, settings),  # a label
        input_fingerprint(dataset(["a", "b", "a"], pixels=50), {}, settings),  # the pixels
        input_fingerprint(dataset(["a", "b", "a"]), {"2": {"verdict": "confirmed", "label": "a"}}, settings),
        input_fingerprint(dataset(["a", "b", "a"]), {}, settings.replace(folds=5)),  # an analysis setting
    ]
    assert len({base, *changed}) == 5
