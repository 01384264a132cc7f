"""The caption stage: candidates in one order (highest loss first), keywords from the aligned
counterparts, and the filter stage's F."""

from __future__ import annotations

import numpy as np
import pytest

from diffubias.captions import MetadataCaptioner
from diffubias.config import RunConfig
from diffubias.dataset_sources import load_dataset
from diffubias.evaluation import aligned_bias_per_class, conflict_mask
from diffubias.stages.caption import ScoredSamples, caption_candidates
from diffubias.stages.prompts import filter_prompts, resolved_top_f
from tiny_models import write_tiny_dataset


@pytest.fixture(scope="module")
def pets(tmp_path_factory):
    root = write_tiny_dataset(tmp_path_factory.mktemp("pets"), n_train=8, n_conflict=2)
    return load_dataset(str(root), cache_dir=tmp_path_factory.mktemp("cache"))


def _conflicts(ds):
    train = ds.indices("train")
    aligned = aligned_bias_per_class(ds.labels[train], ds.bias[train])
    return train[conflict_mask(ds.labels[train], ds.bias[train], aligned)]


def _scores(ds, candidates):
    """Train samples scored with the planted conflicts highest; `candidates` marked."""
    positions = ds.indices("train")
    conflicts = set(_conflicts(ds).tolist())
    losses = np.array([5.0 if p in conflicts else 0.1 * i for i, p in enumerate(positions)])
    return ScoredSamples(positions, losses, np.isin(positions, candidates))


def test_candidates_are_captioned_highest_loss_first_and_keywords_name_the_conflict(pets):
    positions = pets.indices("train")
    conflicts = _conflicts(pets).tolist()
    assert len(conflicts) == 4  # 2 per class
    scores = _scores(pets, conflicts)
    scores.losses[np.flatnonzero(positions == conflicts[-1])] = 9.0  # the top one
    result = caption_candidates(pets, RunConfig(keywords_top_n=3), scores,
                                captioner=MetadataCaptioner(per_image=2))
    assert [c.position for c in result.captions[::2]][0] == conflicts[-1]
    assert sorted({c.position for c in result.captions}) == sorted(conflicts)
    assert len(result.aligned_captions) == 2 * len(conflicts)  # as many aligned per class
    assert result.summary()["n_images"] == len(conflicts)
    # cats are usually red: a conflicting cat is green, and "green" sets the candidates apart
    terms = {pets.class_names[c]: [k.term for k in found] for c, found in result.keywords.items()}
    assert "green" in terms["cat"] and "red" in terms["dog"]


def test_keywords_off_captions_only_the_candidates(pets):
    scores = _scores(pets, pets.indices("train")[:2])
    result = caption_candidates(pets, RunConfig(keywords_top_n=0), scores,
                                captioner=MetadataCaptioner(per_image=1))
    assert result.keywords is None and not result.aligned_captions
    with pytest.raises(ValueError, match="no candidates"):
        caption_candidates(pets, RunConfig(), _scores(pets, []),
                           captioner=MetadataCaptioner())


def test_filter_stage_resolves_f_from_the_classes(pets):
    assert resolved_top_f(RunConfig(), 10) == 20 and resolved_top_f(RunConfig(top_f=3), 10) == 3
    scores = _scores(pets, pets.indices("train"))
    captions = caption_candidates(pets, RunConfig(keywords_top_n=0), scores,
                                  captioner=MetadataCaptioner(per_image=2)).captions
    kept = filter_prompts(captions, pets.labels, RunConfig(top_f=1), num_classes=2)
    top = kept.top_words[0][0]
    assert len(kept.top_words) == 1 and all(top in p.matched_words for p in kept.kept)
    assert all(top not in p.text.lower().split() for p in kept.dropped)
