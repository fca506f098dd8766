"""Add the review panel to a project's labeling config, and take it out again.

The added block sits between two marker comments, inside the root <View>, after everything
of the user's: an evidence panel (HyperText of the task's ``dc_evidence`` field) and a
``dc_verdict`` Choices. Nothing of the user's config is changed or removed.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from ..errors import LabelConfigError

BEGIN, END = "<!-- de-confusion:begin -->", "<!-- de-confusion:end -->"
VERDICTS = ("Keep human label", "Take model label", "Other label", "Remove (duplicate/unusable)", "Ambiguous")


def _image_name(xml: str) -> str:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise LabelConfigError(f"labeling config is not valid XML: {exc}") from None
    images = [el.get("name") for el in root.iter("Image")]
    if len(images) != 1:
        raise LabelConfigError(f"the review panel needs exactly one <Image>; the config has {len(images)}")
    return images[0]


def panel(image_name: str) -> str:
    choices = "\n".join(f'      <Choice value="{v}"/>' for v in VERDICTS)
    return (f'{BEGIN}\n  <View style="margin-top:12px;padding:8px;border-top:2px solid #2962ff">\n'
            f'    <Header value="De-Confusion evidence" size="5"/>\n'
            f'    <HyperText name="dc_evidence" value="$dc_evidence" inline="true"/>\n'
            f'    <Header value="Your verdict (fix the label above too when it is wrong)" size="6"/>\n'
            f'    <Choices name="dc_verdict" toName="{image_name}" choice="single" showInline="true">\n'
            f'{choices}\n    </Choices>\n  </View>\n  {END}')


def review_config(original_xml: str) -> str:
    """The user's config plus the review panel; applying it twice changes nothing."""
    if BEGIN in original_xml:
        return original_xml
    name = _image_name(original_xml)
    close = original_xml.rstrip().rfind("</View>")
    if close < 0:
        raise LabelConfigError("labeling config has no closing </View> root tag")
    return original_xml[:close].rstrip() + "\n  " + panel(name) + "\n" + original_xml[close:]


def remove_review_config(xml: str) -> str:
    """Exactly the user's config again."""
    return re.sub(r"\n  " + re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n", "\n", xml, flags=re.S)
