"""The text filter: keep the captions that use the words the candidates' captions use most.

Stop words come from scikit-learn's maintained English list (plus any the user adds); the top F
words are counted over all candidate captions; a caption is kept when it contains one of them as
a whole word, so "man" never matches "woman" (the reference code matched substrings).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from diffubias.captions import Caption

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    """Lower-cased word tokens; punctuation separates words, apostrophes stay inside them."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class Prompt:
    text: str
    label: int  # class of the real sample the caption describes: the generated image's label
    source: int  # dataset position of that sample
    matched_words: tuple[str, ...]
    keep: bool = True


@dataclass(frozen=True)
class FilterResult:
    kept: tuple[Prompt, ...]
    dropped: tuple[Prompt, ...]
    top_words: tuple[tuple[str, int], ...]  # (word, count), most frequent first


def matched_words(text: str, top_words: Iterable[str]) -> tuple[str, ...]:
    """The filter's top words that `text` contains as whole words, sorted: why a prompt is
    kept, recomputed when a person edits it."""
    return tuple(sorted(set(top_words).intersection(words(text))))


def count_words(texts: Iterable[str], stop_words: frozenset[str]) -> Counter:
    return Counter(w for t in texts for w in words(t) if w not in stop_words)


def filter_captions(captions: Sequence[Caption], labels: Mapping[int, int] | Sequence[int], *,
                    top_f: int, extra_stop_words: Iterable[str] = ()) -> FilterResult:
    """Keeps each caption that contains one of the `top_f` most frequent non-stop words.

    `labels[position]` gives the class of each captioned sample. Ties in counts break
    alphabetically; identical captions of one sample are kept once.
    """
    if top_f < 1:
        raise ValueError(f"top_f must be at least 1, got {top_f}")
    stop = frozenset(ENGLISH_STOP_WORDS) | {w.lower() for w in extra_stop_words}
    counts = count_words((c.text for c in captions), stop)
    top = sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))[:top_f]
    top_set = {w for w, _ in top}
    kept, dropped, seen = [], [], set()
    for c in captions:
        text = " ".join(c.text.split())
        if not text or (c.position, text.lower()) in seen:
            continue
        seen.add((c.position, text.lower()))
        matched = matched_words(text, top_set)
        prompt = Prompt(text, int(labels[c.position]), c.position, matched, keep=bool(matched))
        (kept if matched else dropped).append(prompt)
    return FilterResult(tuple(kept), tuple(dropped), tuple(top))
