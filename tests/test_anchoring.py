"""Class-anchored prompts (diffubias.anchoring): a prompt that does not name its class gets it
through the template; one that does, by name or a person's synonym, is left alone."""

from __future__ import annotations

import pytest

from diffubias.anchoring import (
    DEFAULT_TEMPLATE,
    anchor_all,
    anchor_text,
    check_template,
    names_class,
    parse_synonyms,
    synonyms_for,
)
from diffubias.config import RunConfig


@pytest.mark.parametrize(("text", "name", "synonyms", "expected"), [
    ("a red three on black", "three", (), True),
    ("A RED Three", "three", (), True),  # case-insensitive
    ("a red threesome", "three", (), False),  # whole words only
    ("a red 3", "three", ("3",), True),
    ("a golden retriever on grass", "golden_retriever", (), True),  # underscores read as spaces
    ("a golden dog", "golden_retriever", (), False),
    ("a small object on the sea", "circle", ("ring", "disc"), False),
])
def test_names_class(text, name, synonyms, expected):
    assert names_class(text, name, synonyms) is expected


def test_the_template_adds_the_class_only_where_it_is_missing():
    assert anchor_text("a red digit on a black background", "three",
                       template=DEFAULT_TEMPLATE) == "a red digit on a black background, a three"
    assert anchor_text("a red digit", "eight", template=DEFAULT_TEMPLATE) == \
        "a red digit, an eight"  # the article follows the word
    assert anchor_text("a red three", "three", template=DEFAULT_TEMPLATE) == "a red three"
    assert anchor_text("grass", "cat", template="a photo of a {class}: {caption}") == \
        "a photo of a cat: grass"
    assert anchor_text("a red digit", "three", template="") == "a red digit"  # off
    # braces in the caption are text, not fields
    assert anchor_text("a {class} sign", "stop", template=DEFAULT_TEMPLATE) == \
        "a {class} sign, a stop"


def test_anchor_all_reads_the_synonyms_once_and_checks_their_classes():
    texts = [("a red 3", 0), ("a red digit", 0), ("a blue ring", 1)]
    assert anchor_all(texts, ("three", "circle"), template=DEFAULT_TEMPLATE,
                      synonyms_text="three: 3; circle: ring, disc") == [
        "a red 3", "a red digit, a three", "a blue ring"]
    with pytest.raises(ValueError, match="unknown classes: square;"):
        anchor_all(texts, ("three", "circle"), template=DEFAULT_TEMPLATE,
                   synonyms_text="square: box")


@pytest.mark.parametrize("template", ["{caption}", "{class} {class} {caption}", "a {dog}",
                                      "{caption} {class} }", "{caption}, {klass}"])
def test_a_template_without_its_two_fields_is_refused_by_the_config(template):
    with pytest.raises(ValueError, match="prompt_template must contain"):
        RunConfig(prompt_template=template)


@pytest.mark.parametrize("synonyms", ["three 3", ": 3", "three:", "three: ,"])
def test_synonyms_that_are_not_class_words_pairs_are_refused_by_the_config(synonyms):
    with pytest.raises(ValueError, match="class_synonyms"):
        RunConfig(class_synonyms=synonyms)


def test_the_config_keeps_a_stripped_template_and_parses_synonyms():
    config = RunConfig(prompt_template="  {caption} showing a {class} ", class_synonyms="")
    assert config.prompt_template == "{caption} showing a {class}"
    assert RunConfig(prompt_template="").prompt_template == ""
    assert check_template(DEFAULT_TEMPLATE) == DEFAULT_TEMPLATE
    assert parse_synonyms("three: 3, III\ncircle: Ring") == {"three": ("3", "iii"),
                                                             "circle": ("ring",)}
    assert RunConfig.from_dict(config.to_dict()) == config


def test_a_builtins_own_words_count_as_naming_the_class():
    """Numerals name digits and plurals name shapes: a caption 'a red 3' is not anchored and
    passes the class check; a person's synonyms add to them."""
    from diffubias.builtin import class_words

    digits = class_words("builtin:colored-digits")
    assert digits["three"] == ("3",) and class_words("/data/pets") == {}
    assert "disc" in class_words("builtin:shape-scenes")["circle"]
    merged = synonyms_for("three: III", ("three", "four"), digits)
    assert merged["three"] == ("3", "iii")
    assert anchor_all([("a red 3", 0), ("a red III", 0), ("a red digit", 1)], ("three", "four"),
                      template=DEFAULT_TEMPLATE, synonyms_text="three: III", known=digits) == [
        "a red 3", "a red III", "a red digit, a four"]
