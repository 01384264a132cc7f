"""Stage 9, re-score (the closed loop): what a debiased model still gets wrong, and where the
next round of DiffuBias should look.

After a round (detect, caption, filter, generate, debias), the debiased model scores every
training sample, as the biased model did in stage 2. Without bias labels, this round's top-K
candidates stand for the bias-conflicting samples and the rest of their class for the aligned
ones, so, per class:

- **still wrong**: the candidates the debiased model still misclassifies, highest loss first;
- **gap**: the debiased model's accuracy on the rest of the class minus its accuracy on the
  candidates. Large: the generated images did not teach the class without its shortcut;
- **keywords**: the round's bias keywords (terms describing a class's candidates more than its
  aligned samples, `diffubias.keywords.bias_keywords`, from the caption stage) whose candidates
  the debiased model still gets wrong, with the same gap, so a person sees which attribute is
  still a shortcut ("red", "water background");
- **next candidates**: the top-K of each chosen class by the debiased model's loss, the samples
  another round starts from (its captions, prompts, images), added to what earlier rounds made.

Where the dataset knows its bias attribute, the true gap per class (aligned minus conflicting
training accuracy) is reported next to the proxy, marked as read from the bias column: it
measures the proxy, it never chooses anything. Knows nothing of where results are stored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from torch import nn

from diffubias.captions import Caption
from diffubias.config import RunConfig
from diffubias.evaluation import predict
from diffubias.prepared import PreparedDataset
from diffubias.progress import ProgressFn, report
from diffubias.scoring import top_k_per_class

MIN_KEYWORD_SAMPLES = 2  # a term must describe at least this many candidates to be listed
TOP_KEYWORDS = 10


@dataclass(frozen=True)
class ClassGap:
    """One class after a round, by the debiased model."""

    label: int
    name: str
    n_candidates: int
    n_still_wrong: int  # candidates the debiased model misclassifies
    candidate_accuracy: float | None  # on this round's candidates (the conflicting proxy)
    rest_accuracy: float | None  # on the class's other training samples (the aligned proxy)
    gap: float | None  # rest_accuracy - candidate_accuracy
    # read from the bias column, where the dataset has one: what the proxy estimates
    true_gap: float | None = None


@dataclass(frozen=True)
class KeywordGap:
    """A caption term of one class's candidates, and how the debiased model does on them."""

    label: int
    name: str
    term: str
    n_candidates: int  # candidates of the class with a caption using the term
    n_still_wrong: int
    accuracy: float  # the debiased model's, on those candidates
    gap: float  # the class's rest_accuracy - accuracy


@dataclass(frozen=True, eq=False)
class Remaining:
    """What a debiased model leaves after round `round`."""

    round: int
    positions: np.ndarray  # dataset positions of the train samples, in score order
    losses: np.ndarray  # float32 CE under the debiased model, aligned with positions
    correct: np.ndarray  # bool, the debiased model's prediction is the label
    candidates: np.ndarray  # dataset positions of this round's candidates
    still_wrong: np.ndarray  # dataset positions of the candidates still wrong, highest loss first
    classes: tuple[ClassGap, ...]
    keywords: tuple[KeywordGap, ...]  # largest gap first, at most TOP_KEYWORDS
    next_classes: tuple[int, ...]  # the classes the next round's candidates come from
    next_candidates: np.ndarray = field(repr=False)  # their dataset positions, per class

    def summary(self) -> dict:
        """JSON-able: what report.json and the app's job keep of the round."""
        gaps = [c.gap for c in self.classes if c.gap is not None]
        true = [c.true_gap for c in self.classes if c.true_gap is not None]
        return {"round": self.round, "n_scored": int(len(self.positions)),
                "train_accuracy": float(self.correct.mean()) if len(self.correct) else None,
                "n_candidates": int(len(self.candidates)),
                "n_still_wrong": int(len(self.still_wrong)),
                "mean_gap": float(np.mean(gaps)) if gaps else None,
                "mean_true_gap": float(np.mean(true)) if true else None,
                "classes": [asdict(c) for c in self.classes],
                "keywords": [asdict(k) for k in self.keywords],
                "next_classes": list(self.next_classes),
                "n_next_candidates": int(len(self.next_candidates))}


def rescore(data: PreparedDataset, config: RunConfig, model: nn.Module, *,
            candidates: Sequence[int], captions: Iterable[Caption] = (),
            keywords: Mapping[int, Iterable[str]] | None = None, round_number: int = 1,
            classes: Sequence[int] | None = None, progress: ProgressFn | None = None) -> Remaining:
    """Scores the train split with the debiased `model` and reports what remains.

    `candidates`: dataset positions of this round's candidates (those a person kept);
    `captions`: theirs, and `keywords`: {class: the caption stage's bias keywords}, for the
    keyword gaps (None: every term of the captions, including those every candidate of a
    class shares, such as its name); `classes`: the classes the next round starts from (None:
    those with a positive gap, else every class)."""
    report(progress, 0.0, "scoring training samples with the debiased model")
    positions, train = data.split("train")
    preds, probs = predict(model, train, device=config.resolved_device())
    labels = data.ds.labels[positions].astype(np.int64)
    picked = probs[np.arange(len(labels)), labels] if len(labels) else np.empty(0)
    losses = (-np.log(np.clip(picked, 1e-12, None))).astype(np.float32)
    correct = preds == labels
    report(progress, 0.8, "comparing candidates with the rest of their class")
    index = {int(p): i for i, p in enumerate(positions)}
    unknown = [int(p) for p in candidates if int(p) not in index]
    if unknown:
        raise ValueError(f"candidates {unknown[:5]} are not training samples")
    cand_idx = np.array([index[int(p)] for p in candidates], dtype=np.int64)
    is_cand = np.zeros(len(positions), dtype=bool)
    is_cand[cand_idx] = True
    wrong = cand_idx[~correct[cand_idx]]
    wrong = wrong[np.argsort(-losses[wrong], kind="stable")]
    is_conflict = data.conflicts(positions)
    names = data.ds.class_names
    gaps = tuple(_class_gap(c, names[c], labels == c, is_cand, correct, is_conflict)
                 for c in range(data.ds.num_classes))
    rest = {g.label: g.rest_accuracy for g in gaps}
    keyword_gaps = _keyword_gaps(captions, keywords, index, labels, correct, rest, names,
                                 extra_stop_words=config.extra_stop_words)
    if classes is None:
        classes = [g.label for g in gaps if g.gap is not None and g.gap > 0] or list(
            range(data.ds.num_classes))
    bad = [c for c in classes if not 0 <= int(c) < data.ds.num_classes]
    if bad:
        raise ValueError(f"classes {bad} do not exist; the dataset has {data.ds.num_classes}")
    picked_idx = top_k_per_class(losses, labels, k=config.top_k,
                                 classes={int(c) for c in classes})
    report(progress, 1.0, f"{len(wrong)} of {len(cand_idx)} candidates still wrong")
    return Remaining(round_number, positions, losses, correct, positions[cand_idx],
                     positions[wrong], gaps, keyword_gaps, tuple(sorted(int(c) for c in classes)),
                     positions[picked_idx])


def _accuracy(correct: np.ndarray, mask: np.ndarray) -> float | None:
    return float(correct[mask].mean()) if mask.any() else None


def _class_gap(label: int, name: str, in_class: np.ndarray, is_cand: np.ndarray,
               correct: np.ndarray, is_conflict: np.ndarray | None) -> ClassGap:
    cand, rest = in_class & is_cand, in_class & ~is_cand
    cand_acc, rest_acc = _accuracy(correct, cand), _accuracy(correct, rest)
    true_gap = None
    if is_conflict is not None:
        aligned = _accuracy(correct, in_class & ~is_conflict)
        conflicting = _accuracy(correct, in_class & is_conflict)
        if aligned is not None and conflicting is not None:
            true_gap = aligned - conflicting
    return ClassGap(label, name, int(cand.sum()), int((cand & ~correct).sum()), cand_acc,
                    rest_acc, None if cand_acc is None or rest_acc is None else rest_acc - cand_acc,
                    true_gap)


def _keyword_gaps(captions: Iterable[Caption], keywords: Mapping[int, Iterable[str]] | None,
                  index: dict[int, int], labels: np.ndarray,
                  correct: np.ndarray, rest: dict[int, float | None], names: Sequence[str], *,
                  extra_stop_words: Iterable[str]) -> tuple[KeywordGap, ...]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    from diffubias.keywords import caption_terms

    stop = frozenset(ENGLISH_STOP_WORDS) | {w.lower() for w in extra_stop_words}
    terms: dict[int, set[str]] = {}  # score index -> terms of its captions
    for caption in captions:
        if caption.position in index:
            terms.setdefault(index[caption.position], set()).update(
                caption_terms(caption.text, stop))
    by_term: dict[tuple[int, str], list[int]] = {}
    for i, found in terms.items():
        for term in found:
            by_term.setdefault((int(labels[i]), term), []).append(i)
    out = []
    wanted = None if keywords is None else {(int(c), t) for c, terms in keywords.items()
                                            for t in terms}
    for (label, term), members in by_term.items():
        if len(members) < MIN_KEYWORD_SAMPLES or rest.get(label) is None or (
                wanted is not None and (label, term) not in wanted):
            continue
        accuracy = float(correct[members].mean())
        out.append(KeywordGap(label, names[label], term, len(members),
                              int((~correct[members]).sum()), accuracy, rest[label] - accuracy))
    out.sort(key=lambda k: (-k.gap, -k.n_still_wrong, k.name, k.term))
    return tuple(k for k in out if k.gap > 0)[:TOP_KEYWORDS]
