"""Stage 4, caption: captions of the candidates, and the words that set them apart.

`caption_candidates` captions every candidate with the injected captioner, in batches so the
caller's bar moves. When keywords are on (`keywords_top_n` > 0) and the scores are given, it also
captions each class's lowest-loss (most bias-aligned) samples, as many as the class has
candidates, and ranks the terms that describe the candidates more (B2T-style, Fisher exact test;
`diffubias.keywords`). Knows nothing of where captions are stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from diffubias.captions import Caption, Captioner
from diffubias.config import RunConfig
from diffubias.dataset import ImageDataset
from diffubias.keywords import Keyword, aligned_counterparts, bias_keywords
from diffubias.progress import ProgressFn, part, report

CAPTION_BATCH = 16  # images per captioner call between progress updates


@dataclass(frozen=True)
class ScoredSamples:
    """The detection's scores, aligned arrays: which samples are (kept) candidates."""

    positions: np.ndarray  # dataset positions of the scored train samples
    losses: np.ndarray
    is_candidate: np.ndarray  # bool: a candidate the user kept

    def candidates(self) -> np.ndarray:
        """Dataset positions of the candidates, highest loss first (ties: lower position), the
        one order every front end captions, filters and caps prompts in."""
        picked = np.flatnonzero(self.is_candidate)
        order = np.lexsort((self.positions[picked], -self.losses[picked]))
        return self.positions[picked[order]]


@dataclass(frozen=True, eq=False)
class Captioning:
    captions: tuple[Caption, ...]  # of the candidates
    aligned_captions: tuple[Caption, ...]  # of their bias-aligned counterparts (keywords only)
    keywords: dict[int, tuple[Keyword, ...]] | None  # per class; None when keywords are off
    backend: str
    n_images: int

    def summary(self) -> dict:
        first = self.captions[0] if self.captions else None
        return {"backend": self.backend, "model": first.model if first else None,
                "n_captions": len(self.captions), "n_images": self.n_images,
                "params": dict(first.params) if first else {}}

    def keywords_by_class(self, class_names: Sequence[str]) -> dict[str, list[dict]] | None:
        if self.keywords is None:
            return None
        return {class_names[c]: [k.to_dict() for k in found] for c, found in self.keywords.items()}


def caption_candidates(ds: ImageDataset, config: RunConfig, scores: ScoredSamples, *,
                       captioner: Captioner, progress: ProgressFn | None = None) -> Captioning:
    """Captions of the candidates of `scores` and the bias keywords.

    1. caption every candidate, highest loss first (`captions_per_image` each for captioners
       that sample);
    2. keywords (`keywords_top_n` > 0): caption each class's aligned counterparts and rank the
       terms per class.
    """
    candidates = scores.candidates().tolist()
    if not candidates:
        raise ValueError("no candidates to caption: every candidate is excluded")
    with_keywords = config.keywords_top_n > 0
    share = 0.7 if with_keywords else 1.0
    captions = caption_in_batches(captioner, ds, candidates, part(progress, 0.0, share),
                                  "captioning candidates")
    aligned: list[Caption] = []
    keywords = None
    if with_keywords:
        picked = aligned_counterparts(scores.losses, ds.labels[scores.positions],
                                      scores.is_candidate)
        aligned = caption_in_batches(captioner, ds, scores.positions[picked].tolist(),
                                     part(progress, share, 1.0),
                                     "captioning bias-aligned samples for keywords")
        keywords = bias_keywords(captions, aligned, ds.labels, top_n=config.keywords_top_n,
                                 extra_stop_words=config.extra_stop_words)
    return Captioning(tuple(captions), tuple(aligned), keywords, captioner.backend,
                      len(candidates))


def caption_in_batches(captioner: Captioner, ds: ImageDataset, positions: list[int],
                       progress: ProgressFn | None, message: str) -> list[Caption]:
    out: list[Caption] = []
    for i in range(0, len(positions), CAPTION_BATCH):
        out += captioner.caption(ds, positions[i:i + CAPTION_BATCH])
        done = min(i + CAPTION_BATCH, len(positions)) / len(positions)
        report(progress, done, f"{message} ({done:.0%})")
    return out
