"""Bias keyword discovery: the words that describe a class's bias-conflict candidates far more
often than its bias-aligned samples.

B2T's idea (Kim et al., CVPR 2024) without CLIP: per class, caption the top-K candidates and as
many bottom-K (lowest-loss, most bias-aligned) samples; count, per term (a word or a two-word
phrase of adjacent non-stop words), how many samples of each set have a caption using it; rank
terms by a one-sided Fisher exact test of "more common among the candidates". A term that marks
the candidates ("water" for landbirds) names what the biased model did not expect there.
Counting samples rather than captions keeps the several captions of one image from counting as
independent evidence. Knows nothing of models or runs: captions and labels in, ranked terms out.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from diffubias.captions import Caption
from diffubias.text_filter import words


@dataclass(frozen=True)
class Keyword:
    term: str  # a word or a two-word phrase
    n_candidates: int  # candidate samples with a caption using the term
    n_aligned: int  # aligned samples with a caption using the term
    candidate_share: float  # n_candidates / candidate samples of the class
    aligned_share: float  # n_aligned / aligned samples of the class
    gap: float  # candidate_share - aligned_share; positive: describes the candidates more
    score: float  # -log10 one-sided Fisher exact p; higher: less likely a chance difference

    def to_dict(self) -> dict:
        return asdict(self)


def caption_terms(text: str, stop_words: frozenset[str]) -> set[str]:
    """Non-stop words, and two-word phrases of adjacent non-stop words ("red background")."""
    tokens = words(text)
    keep = [t not in stop_words and not t.isdigit() for t in tokens]
    terms = {t for t, k in zip(tokens, keep) if k}
    terms |= {f"{a} {b}" for (a, ka), (b, kb) in zip(zip(tokens, keep), zip(tokens[1:], keep[1:]))
              if ka and kb}
    return terms


def _terms_per_sample(captions: Iterable[Caption], stop_words: frozenset[str]
                      ) -> dict[int, set[str]]:
    per_sample: dict[int, set[str]] = {}
    for c in captions:
        per_sample.setdefault(c.position, set()).update(caption_terms(c.text, stop_words))
    return per_sample


def bias_keywords(candidates: Sequence[Caption], aligned: Sequence[Caption],
                  labels: Mapping[int, int] | Sequence[int] | np.ndarray, *, top_n: int = 10,
                  min_count: int = 2, extra_stop_words: Iterable[str] = ()
                  ) -> dict[int, tuple[Keyword, ...]]:
    """Per class (of the candidates), up to `top_n` terms that describe its candidates more than
    its aligned samples, most significant first (ties: larger gap, then alphabetical).

    `labels[position]` is the class of each captioned sample. A term must be used for at least
    `min_count` candidate samples and have a positive gap. A class without aligned captions is
    compared against nothing and gets no keywords.
    """
    from scipy.stats import fisher_exact

    if top_n < 1:
        raise ValueError(f"top_n must be at least 1, got {top_n}")
    if min_count < 1:
        raise ValueError(f"min_count must be at least 1, got {min_count}")
    stop = frozenset(ENGLISH_STOP_WORDS) | {w.lower() for w in extra_stop_words}
    cand_terms = _terms_per_sample(candidates, stop)
    align_terms = _terms_per_sample(aligned, stop)
    out: dict[int, tuple[Keyword, ...]] = {}
    for cls in sorted({int(labels[p]) for p in cand_terms}):
        cand = [t for p, t in cand_terms.items() if int(labels[p]) == cls]
        align = [t for p, t in align_terms.items() if int(labels[p]) == cls]
        if not align:
            out[cls] = ()
            continue
        n_c, n_a = len(cand), len(align)
        count_c = Counter(term for terms in cand for term in terms)
        count_a = Counter(term for terms in align for term in terms)
        found = []
        for term, k_c in count_c.items():
            k_a = count_a.get(term, 0)
            gap = k_c / n_c - k_a / n_a
            if k_c < min_count or gap <= 0:
                continue
            p = fisher_exact([[k_c, n_c - k_c], [k_a, n_a - k_a]], alternative="greater").pvalue
            score = -math.log10(max(float(p), 1e-300))
            found.append(Keyword(term, k_c, k_a, k_c / n_c, k_a / n_a, gap, score))
        found.sort(key=lambda k: (-round(k.score, 9), -k.gap, k.term))
        out[cls] = tuple(found[:top_n])
    return out


def aligned_counterparts(losses: np.ndarray, labels: np.ndarray, is_candidate: np.ndarray
                         ) -> np.ndarray:
    """Indices of the bottom-K samples per class: the lowest-loss (most bias-aligned)
    non-candidates, as many per class as that class has candidates; lowest loss first, ties by
    index."""
    losses, labels = np.asarray(losses), np.asarray(labels)
    is_candidate = np.asarray(is_candidate, dtype=bool)
    if not losses.shape == labels.shape == is_candidate.shape:
        raise ValueError(f"losses {losses.shape}, labels {labels.shape} and is_candidate "
                         f"{is_candidate.shape} must have one shape")
    picked = []
    for cls in np.unique(labels[is_candidate]):
        k = int((is_candidate & (labels == cls)).sum())
        pool = np.flatnonzero(~is_candidate & (labels == cls))
        order = np.lexsort((pool, losses[pool]))  # primary key last: loss, then index
        picked.append(pool[order[:k]])
    return np.concatenate(picked) if picked else np.empty(0, dtype=np.int64)
