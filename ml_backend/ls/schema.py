"""Which part of a labeling config De-Confusion analyses: one Image and one single-choice
Choices attached to it. Our own review controls (named ``dc_*``) are ignored.

Parsed with the SDK's :class:`LabelInterface`, so choice aliases count as Label Studio writes
them into annotation results (``alias`` when set, else ``value``).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from label_studio_sdk._legacy.exceptions import LabelStudioXMLSyntaxErrorSentryIgnored
from label_studio_sdk.label_interface import LabelInterface

from ..errors import LabelConfigError
from ..vocabulary import FIELD_PREFIX as OWN_PREFIX, TASK_FIELDS

SINGLE_CHOICE = ("single", "single-radio")
WHERE = "Project Settings → Labeling Interface → Code"


@dataclass(frozen=True)
class ClassSpec:
    image_key: str       # task data key holding the image (value="$image" -> "image")
    image_name: str      # the Image tag's name (to_name of results)
    choices_name: str    # the Choices tag's name (from_name of results)
    labels: list[str]    # sorted choice values as stored in results: class indices stay stable


def parse_label_config(xml: str) -> ClassSpec:
    """The project's Image + single-choice Choices; LabelConfigError says what to change."""
    if not isinstance(xml, str) or not xml.strip():
        raise LabelConfigError(f"the project has no labeling config; set one in {WHERE}: one <Image "
                               'name="image" value="$image"/> and one <Choices toName="image" choice="single">')
    try:
        interface = LabelInterface(xml)
        root = ET.fromstring(xml)
    except (LabelStudioXMLSyntaxErrorSentryIgnored, ET.ParseError) as exc:
        raise LabelConfigError(f"the labeling config is not valid XML ({exc}); fix it in {WHERE}") from None

    images = [el for el in root.iter("Image") if not el.get("name", "").startswith(OWN_PREFIX)]
    if not images:
        raise LabelConfigError(
            "the labeling config has no <Image> tag: De-Confusion analyses image classification projects; "
            f'add <Image name="image" value="$image"/> and a <Choices toName="image"> in {WHERE}')
    if len(images) > 1:
        names = ", ".join(repr(el.get("name", "?")) for el in images)
        raise LabelConfigError(
            f"the labeling config has {len(images)} <Image> tags ({names}); De-Confusion needs exactly one image "
            f"per task: keep one <Image> in {WHERE} (or use a separate project per image)")
    image = images[0]
    image_name = image.get("name", "")
    value = image.get("value", "")
    if image.get("valueList"):
        raise LabelConfigError(
            f'<Image name="{image_name}"> shows several images per task (valueList="{image.get("valueList")}"); '
            'De-Confusion needs one image per task: use value="$image" with one image URL per task')
    if not image_name or not value.startswith("$") or len(value) < 2:
        raise LabelConfigError(
            f'<Image name="{image_name}" value="{value}"> must have a name and take its image from task data, '
            'e.g. <Image name="image" value="$image"/>')
    if value[1:] in TASK_FIELDS:
        raise LabelConfigError(
            f'<Image value="{value}"> reads the task field {value[1:]!r}, which De-Confusion writes its own results '
            f"to: rename that task-data key (and the value) to another name, e.g. $image")

    choices = [c for c in interface.controls if c.tag.lower() == "choices" and not c.name.startswith(OWN_PREFIX)]
    loose = [el for el in root.iter("Choices")
             if not el.get("toName") and not el.get("name", "").startswith(OWN_PREFIX)]
    if not choices and loose:
        raise LabelConfigError(
            f'<Choices name="{loose[0].get("name", "")}"> is not attached to the image: add toName="{image_name}" '
            f'(the name of <Image name="{image_name}">) in {WHERE}')
    if not choices:
        raise LabelConfigError(
            "the labeling config has no <Choices> tag: add one single-choice class list, e.g. "
            f'<Choices name="label" toName="{image_name}" choice="single"><Choice value="cat"/>'
            f'<Choice value="dog"/></Choices>, in {WHERE}')
    attached = [c for c in choices if image_name in (c.to_name or [])]
    if not attached:
        found = ", ".join(f'<Choices name="{c.name}" toName="{",".join(c.to_name or [])}">' for c in choices)
        raise LabelConfigError(
            f"no <Choices> is attached to the image: {found} should have toName=\"{image_name}\" "
            f'(the name of <Image name="{image_name}">)')
    if len(attached) > 1:
        names = ", ".join(repr(c.name) for c in attached)
        raise LabelConfigError(
            f"{len(attached)} <Choices> tags are attached to the image ({names}); De-Confusion needs one class "
            "list: keep one, or rename the others with a dc_ prefix if they are not classes")
    control = attached[0]
    mode = control.attr.get("choice", "single")
    if mode not in SINGLE_CHOICE:
        raise LabelConfigError(
            f'<Choices name="{control.name}"> allows several choices per image (choice="{mode}"); '
            'De-Confusion analyses one class per image: set choice="single"')
    if control.attr.get("perRegion") in ("true", "True", "1"):
        raise LabelConfigError(
            f'<Choices name="{control.name}"> is perRegion="true" (one choice per region); De-Confusion needs '
            "one class per image: remove perRegion")
    if control.dynamic_value or control.attr.get("value"):
        raise LabelConfigError(
            f'<Choices name="{control.name}"> takes its choices from task data (value="{control.attr.get("value")}"); '
            "list the classes in the config as <Choice value=\"...\"/> so every task has the same classes")
    labels = sorted(set(control.labels))
    if len(labels) < 2:
        raise LabelConfigError(
            f'<Choices name="{control.name}"> needs at least two <Choice> classes, has {labels}')
    return ClassSpec(image_key=value[1:], image_name=image_name, choices_name=control.name, labels=labels)
