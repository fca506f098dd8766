"""parse_label_config: the one Image + single-choice Choices pair, or a message saying what to change."""

from pathlib import Path

import pytest

from ml_backend.errors import LabelConfigError
from ml_backend.ls.schema import ClassSpec, parse_label_config
from ml_backend.views.configs import review_config

CHOICES = '<Choice value="dog"/><Choice value="cat"/><Choice value="bird"/>'


def config(body: str) -> str:
    return f"<View>{body}</View>"


def test_plain_classification_config():
    spec = parse_label_config(config(f'<Image name="img" value="$picture" zoom="true"/>'
                                     f'<Choices name="animal" toName="img" choice="single">{CHOICES}</Choices>'))
    assert spec == ClassSpec(image_key="picture", image_name="img", choices_name="animal",
                             labels=["bird", "cat", "dog"])


def test_labels_are_what_results_hold_aliases_included_and_sorted():
    spec = parse_label_config(config('<Image name="i" value="$i"/><Choices name="c" toName="i">'
                                     '<Choice value="Zebra"/><Choice value="Cat" alias="c1"/></Choices>'))
    assert spec.labels == ["Zebra", "c1"]


def test_our_review_controls_and_other_objects_are_ignored():
    xml = config('<Header value="Look"/><Image name="image" value="$image"/>'
                 f'<Choices name="label" toName="image" choice="single-radio">{CHOICES}</Choices>'
                 '<Text name="caption" value="$caption"/>'
                 '<View><Markdown value="$dc_evidence"/><Choices name="dc_verdict" toName="image">'
                 '<Choice value="Keep human label"/><Choice value="Take model label"/></Choices></View>')
    spec = parse_label_config(xml)
    assert (spec.choices_name, spec.image_name, spec.image_key) == ("label", "image", "image")


def test_the_shipped_example_config_parses():
    xml = (Path(__file__).resolve().parents[2] / "label_studio_config" / "image_classification.xml").read_text()
    assert parse_label_config(xml).labels == ["cat", "dog"]


@pytest.mark.parametrize("xml, message", [
    ('<View><Image name="i" value="$i"></View>', r"not valid XML .*Labeling Interface"),
    ("", r"no labeling config"),
    (config(f'<Text name="t" value="$t"/><Choices name="c" toName="t">{CHOICES}</Choices>'),
     r'no <Image> tag.*add <Image name="image" value="\$image"/>'),
    (config('<Image name="a" value="$a"/><Image name="b" value="$b"/>'
            f'<Choices name="c" toName="a">{CHOICES}</Choices>'),
     r"2 <Image> tags \('a', 'b'\).*exactly one image per task.*keep one <Image>"),
    (config('<Image name="i" value="$i"/><Labels name="l" toName="i"><Label value="x"/></Labels>'),
     r'no <Choices> tag: add one single-choice class list, e\.g\. <Choices name="label" toName="i"'),
    (config(f'<Image name="i" value="$i"/><Choices name="c" toName="i" choice="multiple">{CHOICES}</Choices>'),
     r'<Choices name="c"> allows several choices per image \(choice="multiple"\).*set choice="single"'),
    (config(f'<Image name="i" value="$i"/><Text name="t" value="$t"/><Choices name="c" toName="t">{CHOICES}</Choices>'),
     r'no <Choices> is attached to the image: <Choices name="c" toName="t"> should have toName="i"'),
    (config(f'<Image name="i" value="$i"/><Choices name="c">{CHOICES}</Choices>'),
     r'<Choices name="c"> is not attached to the image: add toName="i"'),
    (config(f'<Image name="i" value="$i"/><Choices name="a" toName="i">{CHOICES}</Choices>'
            f'<Choices name="b" toName="i">{CHOICES}</Choices>'),
     r"2 <Choices> tags are attached to the image \('a', 'b'\).*keep one"),
    (config(f'<Image name="i" valueList="$images"/><Choices name="c" toName="i">{CHOICES}</Choices>'),
     r'several images per task \(valueList="\$images"\)'),
    (config(f'<Image name="i" value="http://x/a.png"/><Choices name="c" toName="i">{CHOICES}</Choices>'),
     r'must have a name and take its image from task data'),
    (config('<Image name="i" value="$i"/><Choices name="c" toName="i" value="$options"/>'),
     r'takes its choices from task data.*list the classes in the config'),
    (config('<Image name="i" value="$i"/><Choices name="c" toName="i"><Choice value="only"/></Choices>'),
     r"needs at least two <Choice> classes, has \['only'\]"),
    (config(f'<Image name="i" value="$i"/><Choices name="c" toName="i" perRegion="true">{CHOICES}</Choices>'),
     r'perRegion="true".*remove perRegion'),
    (config(f'<Image name="i" value="$dc_evidence"/><Choices name="c" toName="i">{CHOICES}</Choices>'),
     r"reads the task field 'dc_evidence', which De-Confusion writes its own results to: rename"),
], ids=["invalid_xml", "empty", "no_image", "two_images", "no_choices", "multiple_choice", "not_attached",
        "no_to_name", "two_choices", "value_list", "fixed_image_url", "dynamic_choices", "one_class", "per_region",
        "image_in_our_field"])
def test_unusable_configs_say_what_to_change(xml, message):
    with pytest.raises(LabelConfigError, match=message):
        parse_label_config(xml)


@pytest.mark.parametrize("evidence_tag", ["Markdown", "HyperText"])
def test_the_review_panel_we_install_changes_nothing(evidence_tag):
    xml = (Path(__file__).resolve().parents[2] / "label_studio_config" / "image_classification.xml").read_text()
    reviewed = review_config(xml, evidence_tag=evidence_tag)
    assert "dc_verdict" in reviewed and ("HyperText" in reviewed) == (evidence_tag == "HyperText")
    assert parse_label_config(reviewed) == parse_label_config(xml)
