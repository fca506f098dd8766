"""The names shared with Label Studio are written once: the shipped review config, the panel the
backend installs, the verdict handler and the report all speak :mod:`ml_backend.vocabulary`."""

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from ml_backend.ls.schema import ClassSpec
from ml_backend.service.verdicts import classify_verdict
from ml_backend.views.configs import review_config
from ml_backend.views.report import report_json
from ml_backend.vocabulary import EVIDENCE_FIELD, REVIEW_PANEL_ID, VERDICT_CONTROL, Verdict

REVIEW_XML = Path(__file__).resolve().parents[2] / "label_studio_config" / "review.xml"
SPEC = ClassSpec(image_key="image", image_name="image", choices_name="label", labels=["cat", "dog"])


def verdict_choices(xml: str) -> tuple[list[str], ET.Element]:
    root = ET.fromstring(xml)
    control = next(el for el in root.iter("Choices") if el.get("name") == VERDICT_CONTROL)
    return [c.get("value") for c in control.iter("Choice")], root


def test_the_shipped_review_xml_offers_exactly_the_verdicts_the_backend_understands():
    template = REVIEW_XML.read_text()
    filled = (template.replace("{{IMAGE_NAME}}", "image").replace("{{IMAGE_VALUE}}", "$image")
              .replace("{{CHOICES_BLOCK}}", '<Choices name="label" toName="image"><Choice value="cat"/></Choices>'))
    choices, root = verdict_choices(re.sub(r"<!--.*?-->", "", filled, flags=re.S))
    assert choices == [v.choice for v in Verdict]
    assert any(el.get("idAttr") == REVIEW_PANEL_ID for el in root.iter())
    assert any(el.get("value") == f"${EVIDENCE_FIELD}" for el in root.iter())


def test_the_installed_panel_matches_the_shipped_review_xml():
    installed = review_config('<View><Image name="image" value="$image"/>'
                              '<Choices name="label" toName="image"><Choice value="cat"/></Choices></View>')
    assert verdict_choices(installed)[0] == verdict_choices(re.sub(
        r"<!--.*?-->|\{\{[A-Z_]+\}\}", lambda m: "image" if m.group(0) == "{{IMAGE_NAME}}" else "",
        REVIEW_XML.read_text(), flags=re.S))[0]


def test_every_verdict_choice_is_read_back_as_that_verdict():
    for verdict in (Verdict.REMOVED, Verdict.AMBIGUOUS):
        result = [{"from_name": VERDICT_CONTROL, "value": {"choices": [verdict.choice]}}]
        assert classify_verdict(result, SPEC, human_label="cat", suggested="dog") == (verdict.value, "cat")
    relabel = [{"from_name": "label", "value": {"choices": ["dog"]}}]
    assert classify_verdict(relabel, SPEC, "cat", "dog") == (Verdict.RELABELED_TO_MODEL.value, "dog")


def test_the_report_lists_every_verdict_kind():
    assert report_json([])["verdict_kinds"] == [v.value for v in Verdict]
