"""Class-anchored prompts: a prompt that does not name its class gets the class name through a
template before it reaches the generator.

A text-to-image model draws what the prompt says, and a kept caption often says nothing of the
class ("a red digit on a black background"): its images would show any class yet be trained as
the sample's. `anchor_text` adds the class with `RunConfig.prompt_template` (default
`{caption}, a {class}`) unless the text already names the class as a whole word or phrase, or one
of the synonyms a person gave in `RunConfig.class_synonyms` ("three: 3, III; circle: ring").
An empty template turns anchoring off.

Pure text: knows nothing of prompts' storage, of generators, or of any dataset's labels beyond
the class names it is given.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

DEFAULT_TEMPLATE = "{caption}, a {class}"
MAX_TEMPLATE_CHARS = 200
MAX_SYNONYM_CHARS = 10_000
_FIELD = re.compile(r"\{([^{}]*)\}")
_ARTICLE = re.compile(r"\ba(\s+\{class\})")


def check_template(template: str) -> str:
    """`template` stripped, or ValueError: it must hold `{caption}` and `{class}` once each and
    no other braces (empty: anchoring off)."""
    if not isinstance(template, str):
        raise ValueError(f"prompt_template must be text; got {template!r}")
    template = template.strip()
    if not template:
        return ""
    if len(template) > MAX_TEMPLATE_CHARS:
        raise ValueError(f"prompt_template is {len(template)} characters long; keep it under "
                         f"{MAX_TEMPLATE_CHARS}")
    names = _FIELD.findall(template)
    leftover = _FIELD.sub("", template)
    if sorted(names) != ["caption", "class"] or "{" in leftover or "}" in leftover:
        raise ValueError("prompt_template must contain {caption} and {class} once each and no "
                         f"other braces, e.g. {DEFAULT_TEMPLATE!r} (empty: no anchoring); "
                         f"got {template!r}")
    return template


def parse_synonyms(text: str) -> dict[str, tuple[str, ...]]:
    """"class: word, word; class: word" (entries split by ';' or new lines) -> {class: words},
    lower-cased; ValueError naming the entry that is not `class: words`."""
    if not isinstance(text, str):
        raise ValueError(f"class_synonyms must be text like 'three: 3, III'; got {text!r}")
    if len(text) > MAX_SYNONYM_CHARS:
        raise ValueError(f"class_synonyms is {len(text):,} characters long; keep it under "
                         f"{MAX_SYNONYM_CHARS:,}")
    out: dict[str, tuple[str, ...]] = {}
    for entry in re.split(r"[;\n]", text):
        if not entry.strip():
            continue
        name, colon, words = entry.partition(":")
        found = tuple(w.strip().lower() for w in words.split(",") if w.strip())
        if not colon or not name.strip() or not found:
            raise ValueError(f"class_synonyms: {entry.strip()!r} is not 'class: word, word' "
                             "(entries separated by ';')")
        out[name.strip()] = out.get(name.strip(), ()) + found
    return out


def check_synonym_classes(synonyms: Mapping[str, Sequence[str]],
                          class_names: Sequence[str]) -> None:
    """ValueError when `synonyms` names a class the dataset does not have."""
    unknown = sorted(set(synonyms) - set(class_names))
    if unknown:
        raise ValueError(f"class_synonyms names unknown classes: {', '.join(unknown)}; the "
                         f"classes are {', '.join(class_names)}")


def spoken(class_name: str) -> str:
    """A class name as words: `golden_retriever` -> `golden retriever`."""
    return " ".join(class_name.replace("_", " ").split())


def names_class(text: str, class_name: str, synonyms: Sequence[str] = ()) -> bool:
    """Whether `text` names the class: its name (underscores read as spaces) or a synonym, as
    a whole word or phrase, case-insensitive."""
    lowered = " ".join(text.lower().split())
    for phrase in (spoken(class_name).lower(), *synonyms):
        if phrase and re.search(rf"(?<![\w]){re.escape(phrase)}(?![\w])", lowered):
            return True
    return False


def anchor_text(text: str, class_name: str, *, template: str,
                synonyms: Sequence[str] = ()) -> str:
    """`text` as the generator gets it: unchanged when it names the class or `template` is
    empty, else the template filled in ("a" before a vowel sound becomes "an")."""
    if not template or names_class(text, class_name, synonyms):
        return text
    word = spoken(class_name)
    if word[:1].lower() in "aeiou":
        template = _ARTICLE.sub(r"an\1", template)
    fills = {"caption": text.strip(), "class": word}
    return _FIELD.sub(lambda m: fills[m.group(1)], template)


def synonyms_for(synonyms_text: str, class_names: Sequence[str],
                 known: Mapping[str, Sequence[str]] | None = None) -> dict[str, tuple[str, ...]]:
    """Every class's other words: a person's `class_synonyms` (parsed, their classes checked)
    after the words a dataset already knows (`known`, e.g. `diffubias.builtin.class_words`)."""
    synonyms = parse_synonyms(synonyms_text)
    check_synonym_classes(synonyms, class_names)
    merged = {name: tuple(w.lower() for w in words) for name, words in (known or {}).items()}
    for name, words in synonyms.items():
        merged[name] = merged.get(name, ()) + words
    return merged


def anchor_all(texts_and_labels: Sequence[tuple[str, int]], class_names: Sequence[str], *,
               template: str, synonyms_text: str = "",
               known: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """`anchor_text` of each (text, label), with the synonyms read once (`synonyms_for`)."""
    synonyms = synonyms_for(synonyms_text, class_names, known)
    return [anchor_text(text, class_names[label], template=template,
                        synonyms=synonyms.get(class_names[label], ()))
            for text, label in texts_and_labels]
