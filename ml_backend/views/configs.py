"""Add De-Confusion's review panel to a project's labeling config, and take it out again.

The panel sits between two marker comments just before the root ``</View>``, after everything
of the user's: a header, the evidence panel showing the task's ``dc_evidence`` field (HTML the
backend writes, see ``views.review``) and a ``dc_verdict`` Choices on the project's Image. Nothing
of the user's config is changed; :func:`remove_review_config` restores it character for character.
``label_studio_config/review.xml`` is the same panel as a template.

Evidence tag (``evidence_tag``):

- ``"Markdown"`` (default; Label Studio >= 1.20): renders the HTML (raw HTML allowed, http(s)
  images, inline styles). It has no ``name``, so ``dc_evidence`` does not become a required
  data key: tasks imported later without the field still import.
- ``"HyperText"``: works in older Label Studio, but Label Studio then requires a
  ``dc_evidence`` key in *every* task's data ('"dc_evidence" key is expected in task data'
  on import of tasks that lack it).
"""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET

from ..errors import LabelConfigError
from ..vocabulary import EVIDENCE_FIELD, REVIEW_PANEL_ID, VERDICT_CONTROL, Verdict

BEGIN, END = "<!-- de-confusion:begin -->", "<!-- de-confusion:end -->"
EVIDENCE_TAGS = ("Markdown", "HyperText")
_ROOT_CLOSE = re.compile(r"</View>(?=\s*(?:<!--.*?-->\s*)*\Z)", re.S)


def _parse(xml: str) -> ET.Element:
    try:
        return ET.fromstring(xml, parser=ET.XMLParser(target=ET.TreeBuilder(insert_comments=True)))
    except ET.ParseError as exc:
        raise LabelConfigError(f"labeling config is not valid XML: {exc}") from None


def _image_name(root: ET.Element) -> str:
    images = [el.get("name") for el in root.iter("Image")]
    if len(images) != 1 or not images[0]:
        raise LabelConfigError(f"the review panel needs exactly one named <Image>; the config has {len(images)}: "
                               "add the panel by hand from label_studio_config/review.xml")
    return images[0]


def panel(image_name: str, *, evidence_tag: str = "Markdown") -> str:
    """The block :func:`review_config` adds (markers included), indented for a root child."""
    if evidence_tag not in EVIDENCE_TAGS:
        raise ValueError(f"evidence_tag must be one of {', '.join(EVIDENCE_TAGS)}, got {evidence_tag!r}")
    evidence = (f'<Markdown value="${EVIDENCE_FIELD}"/>' if evidence_tag == "Markdown" else
                f'<HyperText name="{EVIDENCE_FIELD}" value="${EVIDENCE_FIELD}" inline="true" '
                'selectionEnabled="false" clickableLinks="true"/>')
    choices = "\n".join(f'      <Choice value="{html.escape(v)}"/>' for v in (verdict.choice for verdict in Verdict))
    return (f'{BEGIN}\n'
            f'  <View idAttr="{REVIEW_PANEL_ID}" style="margin-top:12px;padding:8px 12px;border-top:3px solid #2962ff;'
            'background:#fafbff">\n'
            '    <Header value="De-Confusion: why this image was flagged" size="5"/>\n'
            f'    {evidence}\n'
            '    <Header value="Your verdict (if the label is wrong, also fix it above)" size="6"/>\n'
            f'    <Choices name="{VERDICT_CONTROL}" toName="{html.escape(image_name, quote=True)}" choice="single" '
            'showInline="true">\n'
            f'{choices}\n'
            '    </Choices>\n'
            '  </View>\n'
            f'  {END}')


def _installed_without_markers(root: ET.Element) -> bool:
    return any(el.get("name") == VERDICT_CONTROL or el.get("idAttr") == REVIEW_PANEL_ID for el in root.iter())


def review_config(original_xml: str, *, evidence_tag: str = "Markdown") -> str:
    """``original_xml`` plus the review panel before the root ``</View>``.

    Idempotent: a config that has the panel gets the current panel again (so applying twice
    changes nothing); one with a ``dc_verdict`` control but no markers is returned unchanged.
    LabelConfigError: not XML, root is not ``<View>``, or not exactly one named ``<Image>``.
    """
    if BEGIN in original_xml:
        original_xml = remove_review_config(original_xml)
    root = _parse(original_xml)
    if root.tag != "View":
        raise LabelConfigError(f"labeling config root must be <View>, got <{root.tag}>")
    if _installed_without_markers(root):
        return original_xml
    block = panel(_image_name(root), evidence_tag=evidence_tag)
    match = _ROOT_CLOSE.search(original_xml)
    if match is None:
        raise LabelConfigError("labeling config has no closing </View> root tag")
    close = match.start()
    # After a newline: an indented block on its own lines; else inline, so removal restores exactly.
    insert = f"  {block}\n" if original_xml[:close].endswith("\n") else block
    return original_xml[:close] + insert + original_xml[close:]


def remove_review_config(xml: str) -> str:
    """``xml`` without what :func:`review_config` added: exactly the user's config again.

    Without markers (an editor dropped the comments) it removes, by parsing (which may reformat
    the XML), the panel ``<View>`` and any element named like the panel's controls (``dc_verdict``,
    ``dc_evidence``) or showing ``$dc_evidence``; the user's own ``dc_*`` controls stay.
    """
    begin, end = re.escape(BEGIN), re.escape(END)
    if BEGIN in xml:
        out, n = re.subn(rf"\n  {begin}.*?{end}\n", "\n", xml, count=1, flags=re.S)
        if not n:
            out = re.sub(rf"{begin}.*?{end}", "", xml, count=1, flags=re.S)
        return out
    root = _parse(xml)
    if not _installed_without_markers(root) and f"${EVIDENCE_FIELD}" not in xml:
        return xml
    _drop_ours(root)
    return ET.tostring(root, encoding="unicode")


def _ours(el: ET.Element) -> bool:
    return (el.get("idAttr") == REVIEW_PANEL_ID or el.get("name") in (VERDICT_CONTROL, EVIDENCE_FIELD)
            or el.get("value") == f"${EVIDENCE_FIELD}")


def _drop_ours(parent: ET.Element) -> None:
    for child in list(parent):
        if isinstance(child.tag, str) and _ours(child):
            parent.remove(child)
        else:
            _drop_ours(child)
