"""Which part of a labeling config De-Confusion analyses: one Image and one single-choice
Choices attached to it. Our own review controls (``dc_*``) are ignored."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from ..errors import LabelConfigError

OWN_PREFIX = "dc_"


@dataclass(frozen=True)
class ClassSpec:
    image_key: str       # task data key holding the image (value="$image" -> "image")
    image_name: str      # the Image tag's name (to_name of results)
    choices_name: str    # the Choices tag's name (from_name of results)
    labels: list[str]    # sorted choice values: class indices stay stable


def parse_label_config(xml: str) -> ClassSpec:
    """The project's Image + single-choice Choices; LabelConfigError says what to change."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise LabelConfigError(f"the labeling config is not valid XML ({exc}); fix it in Project Settings → "
                               "Labeling Interface") from None
    images = [el for el in root.iter("Image")]
    if not images:
        raise LabelConfigError("the labeling config has no <Image> tag: De-Confusion analyses image "
                               "classification projects (one <Image> and one <Choices>)")
    if len(images) > 1:
        names = ", ".join(el.get("name", "?") for el in images)
        raise LabelConfigError(f"the labeling config has {len(images)} <Image> tags ({names}); De-Confusion "
                               "needs exactly one image per task")
    image = images[0]
    value = image.get("value", "")
    if not value.startswith("$"):
        raise LabelConfigError(f'<Image name="{image.get("name")}"> must take its image from task data '
                               f'(value="$image"), got value="{value}"')
    choices = [el for el in root.iter("Choices") if not el.get("name", "").startswith(OWN_PREFIX)]
    if not choices:
        raise LabelConfigError("the labeling config has no <Choices> tag: add one single-choice <Choices "
                               f'toName="{image.get("name")}"> with your classes')
    attached = [el for el in choices if el.get("toName") == image.get("name")]
    if not attached:
        raise LabelConfigError(f'no <Choices> is attached to the image: set toName="{image.get("name")}"')
    if len(attached) > 1:
        raise LabelConfigError(f"{len(attached)} <Choices> tags are attached to the image; keep one class list")
    control = attached[0]
    if control.get("choice", "single") not in ("single", "single-radio"):
        raise LabelConfigError(f'<Choices name="{control.get("name")}"> allows several choices '
                               f'(choice="{control.get("choice")}"); use choice="single" for classification')
    labels = sorted({el.get("value") or el.get("alias") for el in control.iter("Choice")} - {None})
    if len(labels) < 2:
        raise LabelConfigError(f'<Choices name="{control.get("name")}"> needs at least two classes, has {labels}')
    return ClassSpec(image_key=value[1:], image_name=image.get("name"), choices_name=control.get("name"),
                     labels=labels)
