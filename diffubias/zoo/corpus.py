"""Balanced pretraining corpora for the built-in domains, and the held-out corpora that judge them.

A pretrained captioner or diffusion model has seen every (object, context) combination; the
audited dataset has not. `make_corpus(domain, role=..., per_cell=..., seed=...)` draws that broad
corpus for a built-in domain: every class x attribute cell exactly `per_cell` times, each image
with one caption from varied phrasings, a share of which omit the class or the attribute ("a red
digit", "a handwritten three") as real captions do.

Where images come from, per role (no model ever sees an audited dataset's own images):
- `colored-digits`: scikit-learn digits rendered with the built-in's own `_render` (upscale,
  random affine, LfF colouring). `pretrain` uses only `source_pools()["train"]` digits, never a
  valid or test source digit; `judge` uses the valid-pool digits (no shipped model trains on
  them); `check` uses the test-pool digits and exists only to measure the judge.
- `shape-scenes`: `draw_scene` with per-image generators seeded by the entropy
  `(CORPUS_TAG, role index, seed, image index)`. A dataset variant draws from one generator seeded
  with its single integer seed, so its streams and the corpora's are disjoint (an integer seed
  would have to exceed 2**96 to spell four 32-bit entropy words); the three roles differ in the
  role index, so their sources are disjoint too.

A domain is a built-in family (`BUILTIN_FAMILIES`): its variants share its models, so
there is no corpus for `colored-digits-sigma0.05` or `shape-scenes-subtle`; the corpora draw at
the family's default strength (colour sigma 0.01, full scenes).

Deterministic: the same (domain, role, per_cell, seed) gives identical images and captions.
Knows: the built-ins' renderers, class and attribute words. Does not know: any model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from diffubias.builtin import BUILTIN_FAMILIES
from diffubias.builtin.generator_parts import prompt_words

ROLES = ("pretrain", "judge", "check")
CORPUS_TAG = 241116079  # the paper's arXiv number (2411.16079), as the first entropy word
OMIT_CLASS_SHARE = 0.1  # captions that name only the attribute ("a red digit")
OMIT_ATTRIBUTE_SHARE = 0.1  # captions that name only the class ("a handwritten three")
DIGIT_POOLS = {"pretrain": "train", "judge": "valid", "check": "test"}
_A_BEFORE_VOWEL = re.compile(r"\ba (?=(?!one\b)[aeiou])")  # "a orange" -> "an orange"


@dataclass(frozen=True, eq=False)
class Corpus:
    """Images with one caption each, their class and attribute, and where each image came from."""

    domain: str
    role: str
    seed: int
    images: np.ndarray  # uint8 (N, 3, S, S)
    captions: tuple[str, ...]  # one per image
    labels: np.ndarray  # int64 (N,): class index
    attributes: np.ndarray  # int64 (N,): attribute (the built-in's bias) index
    sources: tuple[str, ...]  # what each image was drawn from: "digit:<id>" or "scene:<...>"
    class_names: tuple[str, ...]
    attribute_names: tuple[str, ...]
    class_words: tuple[frozenset[str], ...]  # the words that name class i in a caption
    attribute_words: tuple[frozenset[str], ...]  # the words that name attribute i

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def names_class(self, caption: str, label: int) -> bool:
        """Whether `caption` names class `label` (whole words, any of its words)."""
        return not self.class_words[label].isdisjoint(prompt_words(caption))

    def names_attribute(self, caption: str, attribute: int) -> bool:
        """Whether `caption` names attribute `attribute` (whole words, any of its words)."""
        return not self.attribute_words[attribute].isdisjoint(prompt_words(caption))

    def complete(self) -> np.ndarray:
        """bool (N,): the captions that name both their image's class and its attribute."""
        return np.array([self.names_class(c, int(y)) and self.names_attribute(c, int(a))
                         for c, y, a in zip(self.captions, self.labels, self.attributes)])

    def subset(self, positions: Sequence[int] | np.ndarray) -> Corpus:
        """The corpus restricted to `positions`, in that order."""
        idx = np.asarray(positions, dtype=np.int64)
        return Corpus(self.domain, self.role, self.seed, self.images[idx],
                      tuple(self.captions[i] for i in idx), self.labels[idx],
                      self.attributes[idx], tuple(self.sources[i] for i in idx),
                      self.class_names, self.attribute_names, self.class_words,
                      self.attribute_words)


def make_corpus(domain: str, *, role: str = "pretrain", per_cell: int, seed: int) -> Corpus:
    """The `role` corpus of built-in `domain`: `per_cell` images per class x attribute cell."""
    if domain not in BUILTIN_FAMILIES:
        raise ValueError(
            f"unknown domain {domain!r}; expected one of {', '.join(BUILTIN_FAMILIES)}")
    if role not in ROLES:
        raise ValueError(f"unknown corpus role {role!r}; expected one of {', '.join(ROLES)}")
    if isinstance(per_cell, bool) or not isinstance(per_cell, (int, np.integer)) or per_cell < 1:
        raise ValueError(f"per_cell must be a positive integer; got {per_cell!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    if domain == "colored-digits":
        return _digit_corpus(role, int(per_cell), int(seed))
    return _shape_corpus(role, int(per_cell), int(seed))


def corpus_vocabulary(domain: str) -> list[str]:
    """Every word a caption of `domain`'s corpora can contain, sorted (a tokenizer's vocabulary)."""
    if domain == "colored-digits":
        phrasing, fills = _DIGIT_PHRASING, _digit_fills()
    else:
        phrasing, fills = _SHAPE_PHRASING, tuple(_shape_fills().values())
    words: set[str] = {"an"}  # the article fix can write it
    for templates in phrasing.templates:
        for template in templates:
            words.update(prompt_words(re.sub(r"\{\w+\}", " ", template)))
    for field_options in fills:
        for options in field_options:
            for option in options:
                words.update(prompt_words(option))
    return sorted(words)


# ---------------------------------------------------------------------------------------------
# Captions


@dataclass(frozen=True)
class _Phrasing:
    both: tuple[str, ...]  # templates naming the class and the attribute
    class_only: tuple[str, ...]
    attribute_only: tuple[str, ...]

    @property
    def templates(self) -> tuple[tuple[str, ...], ...]:
        return self.both, self.class_only, self.attribute_only


def _caption(phrasing: _Phrasing, rng: np.random.Generator, **fields: tuple[str, ...]) -> str:
    """One caption: a kind (both / class only / attribute only) drawn with the omit shares, a
    template of that kind, and each field's phrasing drawn from its options."""
    kind = rng.choice(3, p=[1 - OMIT_CLASS_SHARE - OMIT_ATTRIBUTE_SHARE, OMIT_ATTRIBUTE_SHARE,
                            OMIT_CLASS_SHARE])
    templates = phrasing.templates[kind]
    template = templates[rng.integers(len(templates))]
    filled = {name: options[rng.integers(len(options))] for name, options in fields.items()}
    return _A_BEFORE_VOWEL.sub("an ", template.format(**filled))


def _rng(role: str, seed: int, *more: int) -> np.random.Generator:
    return np.random.default_rng([CORPUS_TAG, ROLES.index(role), seed, *more])


def _cells(num_classes: int, num_attributes: int, per_cell: int,
           rng: np.random.Generator) -> np.ndarray:
    """int64 (N, 2) (label, attribute) pairs, each cell `per_cell` times, in a shuffled order."""
    cells = np.array([(y, a) for y in range(num_classes) for a in range(num_attributes)])
    return rng.permutation(np.repeat(cells, per_cell, axis=0))


# ---------------------------------------------------------------------------------------------
# Colored digits

_DIGIT_BOTH = (
    "a handwritten {digit} drawn in {color}",
    "the digit {digit} in {color} on a black background",
    "a {color} number {digit}",
    "a {color} handwritten {digit} on black",
    "the number {digit} written in {color}",
    "a {color} {digit}",
    "a {digit} drawn in {color}",
    "a small {color} digit {digit}",
    "a {digit} painted {color}",
    "{color} strokes of a handwritten {digit}",
)
_DIGIT_PHRASING = _Phrasing(
    both=_DIGIT_BOTH,
    class_only=("a handwritten {digit}", "the digit {digit} on a black background",
                "a {digit} written by hand"),
    attribute_only=("a {color} digit", "a handwritten number in {color}",
                    "a {color} number on black"),
)


def _digit_fills() -> tuple[tuple[tuple[str, ...], ...], tuple[tuple[str, ...], ...]]:
    from diffubias.builtin.colored_digits import CLASS_NAMES, COLOR_NAMES

    # the word for a digit: its name four times out of five, else its numeral ("a red 3")
    digits = tuple((name,) * 4 + (str(i),) for i, name in enumerate(CLASS_NAMES))
    return digits, tuple((name,) for name in COLOR_NAMES)


def _digit_corpus(role: str, per_cell: int, seed: int) -> Corpus:
    from diffubias.builtin import colored_digits as cd

    rng = _rng(role, seed)
    digit_words, color_words = _digit_fills()
    digits, classes = cd.source_digits()
    pool = cd.source_pools()[DIGIT_POOLS[role]]
    num_colors = len(cd.COLOR_NAMES)
    # every source digit of a class used equally often (+-1), paired with cells at random
    sources_of = {y: list(np.resize(rng.permutation(pool[classes[pool] == y]),
                                    per_cell * num_colors)) for y in range(len(cd.CLASS_NAMES))}
    cells = _cells(len(cd.CLASS_NAMES), num_colors, per_cell, rng)
    images, captions, sources = [], [], []
    for label, color in cells.tolist():
        source = int(sources_of[label].pop())
        images.append(cd._render(digits[source], color, rng))  # the built-in's own drawing
        captions.append(_caption(_DIGIT_PHRASING, rng, digit=digit_words[label],
                                 color=color_words[color]))
        sources.append(f"digit:{source}")
    return Corpus(
        "colored-digits", role, seed, np.stack(images).transpose(0, 3, 1, 2).copy(),  # -> NCHW
        tuple(captions), cells[:, 0].copy(), cells[:, 1].copy(), tuple(sources),
        tuple(cd.CLASS_NAMES), tuple(cd.COLOR_NAMES),
        _words_by_index(cd._CLASS_WORDS, len(cd.CLASS_NAMES)),
        _words_by_index(cd._COLOR_WORDS, num_colors))


# ---------------------------------------------------------------------------------------------
# Shape scenes

_EXTRA_SCENE_PHRASES = (  # more ways to say each scene, each with a word the renderer reads
    ("on a lawn", "in a meadow"),
    ("on the sea", "on a lake"),
    ("on a sandy beach", "in the desert"),
    ("in front of a wall of bricks",),
    ("on snowy ground",),
    ("among the clouds", "in a cloudy sky"),
)
_SHAPE_PHRASING = _Phrasing(
    both=("a {color} {shape} {where}", "a {shape} shape {where}",
          "a picture of a {color} {shape} {where}", "a simple {shape} colored {color} {where}",
          "a {color} {shape} drawn {where}", "a flat {color} {shape} {where}", "a {shape} {where}",
          "a {scene} background behind a {color} {shape}"),
    class_only=("a {color} {shape}", "a {shape} shape", "a picture of a {color} {shape}"),
    attribute_only=("a {color} shape {where}", "a small object {where}", "a {scene} background"),
)


def _shape_fills() -> dict[str, tuple[tuple[str, ...], ...]]:
    from diffubias.builtin import shape_scenes as ss

    return {"shape": tuple((name,) for name in ss.CLASS_NAMES),
            "scene": tuple((name,) for name in ss.SCENE_NAMES),
            "where": tuple(tuple(a) + tuple(b)
                           for a, b in zip(ss.SCENE_PHRASES, _EXTRA_SCENE_PHRASES, strict=True)),
            "color": tuple((name,) for name in ss.OBJECT_COLORS)}


def _shape_corpus(role: str, per_cell: int, seed: int) -> Corpus:
    from diffubias.builtin import shape_scenes as ss

    fills = _shape_fills()
    cells = _cells(len(ss.CLASS_NAMES), len(ss.SCENE_NAMES), per_cell, _rng(role, seed))
    images, captions, sources = [], [], []
    for index, (label, scene) in enumerate(cells.tolist()):
        rng = _rng(role, seed, index)  # one stream per image: its source is (role, seed, index)
        color = int(rng.integers(len(ss.OBJECT_COLORS)))
        image, _ = ss.draw_scene(label, scene, color, rng)
        images.append(image)
        captions.append(_caption(_SHAPE_PHRASING, rng, shape=fills["shape"][label],
                                 scene=fills["scene"][scene], where=fills["where"][scene],
                                 color=fills["color"][color]))
        sources.append(f"scene:{role}:{seed}:{index}")
    return Corpus(
        "shape-scenes", role, seed, np.stack(images).transpose(0, 3, 1, 2).copy(),  # -> NCHW
        tuple(captions), cells[:, 0].copy(), cells[:, 1].copy(), tuple(sources),
        tuple(ss.CLASS_NAMES), tuple(ss.SCENE_NAMES),
        _words_by_index(ss._SHAPE_WORDS, len(ss.CLASS_NAMES)),
        _words_by_index(ss._SCENE_WORDS, len(ss.SCENE_NAMES)))


def _words_by_index(vocabulary: dict[str, int], count: int) -> tuple[frozenset[str], ...]:
    """The renderer's {word: index} turned around: per index, the words that name it."""
    return tuple(frozenset(w for w, i in vocabulary.items() if i == k) for k in range(count))
