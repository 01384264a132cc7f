"""Pretraining and judge corpora: balanced cells, varied captions that name what the image shows,
deterministic draws, and sources that never touch what they must not."""

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from diffubias.builtin import BUILTIN_FAMILIES, colored_digits, ensure_builtin
from diffubias.builtin.generator_parts import prompt_words
from diffubias.zoo.corpus import ROLES, corpus_vocabulary, make_corpus


@pytest.fixture(scope="module")
def corpora():
    return {(d, r): make_corpus(d, role=r, per_cell=6, seed=0)
            for d in BUILTIN_FAMILIES for r in ROLES}


@pytest.mark.parametrize("domain", BUILTIN_FAMILIES)
def test_every_class_attribute_cell_is_drawn_equally_often(corpora, domain):
    corpus = corpora[domain, "pretrain"]
    counts = Counter(zip(corpus.labels.tolist(), corpus.attributes.tolist()))
    assert len(counts) == len(corpus.class_names) * len(corpus.attribute_names)
    assert set(counts.values()) == {6}
    assert corpus.images.dtype == np.uint8 and corpus.images.shape[:2] == (len(corpus), 3)
    assert len(corpus.captions) == len(corpus.sources) == len(corpus)


@pytest.mark.parametrize("domain", BUILTIN_FAMILIES)
def test_captions_vary_and_name_the_class_or_the_attribute_they_show(domain):
    corpus = make_corpus(domain, per_cell=20, seed=1)
    names_class = np.array([corpus.names_class(c, y) for c, y in zip(corpus.captions,
                                                                     corpus.labels)])
    names_attribute = np.array([corpus.names_attribute(c, a) for c, a in
                                zip(corpus.captions, corpus.attributes)])
    assert (names_class | names_attribute).all()
    assert 0.05 < (~names_class).mean() < 0.15  # "a red digit"
    assert 0.05 < (~names_attribute).mean() < 0.15  # "a handwritten three"
    np.testing.assert_array_equal(corpus.complete(), names_class & names_attribute)
    assert len(set(corpus.captions)) > 100
    # no caption names another class or attribute than its image's
    for caption, label, attribute in zip(corpus.captions, corpus.labels, corpus.attributes):
        assert not any(corpus.names_class(caption, k) for k in range(len(corpus.class_names))
                       if k != label)
        assert not any(corpus.names_attribute(caption, k)
                       for k in range(len(corpus.attribute_names)) if k != attribute)
    vocabulary = set(corpus_vocabulary(domain))
    assert {w for c in corpus.captions for w in prompt_words(c)} <= vocabulary


@pytest.mark.parametrize("domain", BUILTIN_FAMILIES)
def test_same_seed_same_corpus_other_seed_other_corpus(corpora, domain):
    first = corpora[domain, "pretrain"]
    again = make_corpus(domain, per_cell=6, seed=0)
    np.testing.assert_array_equal(first.images, again.images)
    assert first.captions == again.captions and first.sources == again.sources
    other = make_corpus(domain, per_cell=6, seed=1)
    assert not np.array_equal(first.images, other.images)
    assert first.captions != other.captions


def test_digit_corpora_draw_only_from_their_own_source_pool(corpora):
    _, classes = colored_digits.source_digits()
    pools = colored_digits.source_pools()
    used = {}
    for role, pool in (("pretrain", "train"), ("judge", "valid"), ("check", "test")):
        corpus = corpora["colored-digits", role]
        ids = np.array([int(s.removeprefix("digit:")) for s in corpus.sources])
        assert set(ids) <= set(pools[pool].tolist())
        np.testing.assert_array_equal(classes[ids], corpus.labels)  # a three is drawn as a three
        used[role] = set(ids)
    # the pretraining corpus never sees a valid or test digit, the judge corpus never a train one
    assert used["pretrain"].isdisjoint(pools["valid"].tolist() + pools["test"].tolist())
    assert used["judge"].isdisjoint(used["pretrain"] | used["check"])


def test_shape_corpora_have_disjoint_sources_per_role(corpora):
    sources = [set(corpora["shape-scenes", r].sources) for r in ROLES]
    assert all(a.isdisjoint(b) for i, a in enumerate(sources) for b in sources[i + 1:])
    hashes = [{_digest(im) for im in corpora["shape-scenes", r].images} for r in ROLES]
    assert all(a.isdisjoint(b) for i, a in enumerate(hashes) for b in hashes[i + 1:])


def test_shape_corpus_shares_no_image_with_a_dataset_variant(corpora, builtin_cache: Path):
    folder = ensure_builtin("shape-scenes", cache_dir=builtin_cache, conflict_ratio=0.01, seed=0)
    table = pd.read_csv(folder / "metadata.csv", dtype=str, keep_default_na=False)
    dataset = {_digest(np.asarray(Image.open(folder / p).convert("RGB")).transpose(2, 0, 1))
               for p in table.path}
    for role in ROLES:
        assert dataset.isdisjoint(_digest(im) for im in corpora["shape-scenes", role].images)


def test_subset_keeps_images_and_captions_together(corpora):
    corpus = corpora["colored-digits", "judge"]
    part = corpus.subset([5, 2])
    np.testing.assert_array_equal(part.images, corpus.images[[5, 2]])
    assert part.captions == (corpus.captions[5], corpus.captions[2])
    assert part.labels.tolist() == corpus.labels[[5, 2]].tolist()


@pytest.mark.parametrize("kwargs, match", [
    ({"domain": "mnist"}, "unknown domain 'mnist'"),
    ({"role": "test"}, "unknown corpus role 'test'"),
    ({"per_cell": 0}, "per_cell must be a positive integer"),
    ({"seed": -1}, "seed must be a non-negative integer"),
])
def test_bad_requests_name_the_bad_value(kwargs, match):
    args = {"domain": "colored-digits", "per_cell": 1, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=match):
        make_corpus(args.pop("domain"), **args)


def _digest(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()
