"""The zoo captioner: a small BLIP that trains on the corpus, saves with save_pretrained and
loads through the ordinary captioner factory offline; and the shipped model, when present,
names the class of held-out images."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffubias.backends import make_captioner
from diffubias.builtin.generator_parts import prompt_words
from diffubias.dataset_sources import load_dataset
from diffubias.zoo.captioner import (build_blip, encode_captions, pixel_values, save_captioner,
                                     train_captioner)
from diffubias.zoo.corpus import corpus_vocabulary, make_corpus
from diffubias.zoo.quality import caption_quality
from tests.tiny_models import write_tiny_dataset
from tests.zoo_support import TINY_SPEC

MODELS = Path(__file__).resolve().parents[1] / "models"
# Floors for 20 held-out images (both captioners name the class in over 93 % of their held-out
# captions, see their cards; 20 images swing by +-10 points).
CLASS_FLOOR = {"colored-digits": 0.8, "shape-scenes": 0.8}


@pytest.fixture(scope="module")
def corpus():
    return make_corpus("colored-digits", per_cell=2, seed=0)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory, one_torch_thread):
    folder = tmp_path_factory.mktemp("zoo-captioner")
    result = train_captioner(corpus, folder / "checkpoint", spec=TINY_SPEC, steps=4, seed=0,
                             show_progress=False)
    save_captioner(result, folder / "model")
    return result, folder / "model"


def test_pixels_are_normalised_as_the_processor_does(corpus, trained):
    processor = trained[0].processor
    pil = [Image.fromarray(im.transpose(1, 2, 0)) for im in corpus.images[:4]]
    expected = processor(images=pil, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixel_values(corpus.images[:4], processor), expected,
                               atol=1e-5, rtol=0)


def test_captions_encode_as_blip_decoder_input(trained):
    processor = trained[0].processor
    ids, mask, labels = encode_captions(["a red three", "a handwritten 3 drawn in red"],
                                        processor)
    tokens = processor.tokenizer.convert_ids_to_tokens(ids[0][mask[0] == 1].tolist())
    assert tokens == ["[DEC]", "a", "red", "three", "[SEP]"]
    assert (labels[0][mask[0] == 0] == -100).all() and (labels[mask == 1] == ids[mask == 1]).all()
    assert processor.tokenizer.unk_token_id not in ids[1].tolist()  # numerals are words too


def test_vit_knows_where_each_patch_is_from_the_start():
    # BlipVisionConfig's default std of 1e-10 leaves position embeddings at zero: a bag of patches
    model, _ = build_blip(["a"], image_size=28, spec=TINY_SPEC, seed=0)
    embeddings = model.vision_model.embeddings
    assert 0.01 < float(embeddings.position_embedding.detach().std()) < 0.05
    assert 0.01 < float(embeddings.class_embedding.detach().std()) < 0.05


def test_vocabulary_is_the_corpus_words(trained):
    vocab = trained[0].processor.tokenizer.get_vocab()
    assert set(corpus_vocabulary("colored-digits")) <= set(vocab)
    assert len(vocab) < 100  # word-level: a few dozen words, no sub-word pieces


def test_saved_captioner_loads_offline_and_captions_a_dataset(trained, tmp_path):
    result, folder = trained
    assert result.loop.steps == 4 and np.isfinite(result.loop.last_loss)
    captioner = make_captioner(str(folder), per_image=3, max_new_tokens=8, device="cpu")
    assert captioner.backend == "blip"
    ds = load_dataset(str(write_tiny_dataset(tmp_path / "data")), cache_dir=tmp_path / "cache")
    captions = captioner.caption(ds, [0, 1])
    assert [c.position for c in captions] == [0, 0, 0, 1, 1, 1]
    words = set(corpus_vocabulary("colored-digits"))
    assert all(set(prompt_words(c.text)) <= words for c in captions)  # untrained, yet in-vocab
    again = captioner.caption(ds, [0, 1])
    assert [c.text for c in again] == [c.text for c in captions]  # seeded sampling


@pytest.mark.parametrize("domain", ["colored-digits", "shape-scenes"])
def test_shipped_captioner_names_the_class_of_held_out_images(domain, one_torch_thread):
    folder = MODELS / f"{domain}-captioner"
    held_out = make_corpus(domain, role="judge", per_cell=1, seed=7).subset(range(20))
    captioner = make_captioner(str(folder), per_image=3, device="cpu")
    quality = caption_quality(captioner, held_out)
    assert quality.captions == 60
    assert quality.class_share >= CLASS_FLOOR[domain], quality.examples
    assert quality.attribute_share >= 0.9, quality.examples


def test_shipped_digit_captioner_describes_a_bias_conflicting_red_three(one_torch_thread):
    folder = MODELS / "colored-digits-captioner"
    held_out = make_corpus("colored-digits", role="judge", per_cell=2, seed=7)
    red = held_out.attribute_names.index("red")
    red_threes = held_out.subset(np.flatnonzero((held_out.labels == 3) &
                                                (held_out.attributes == red)))
    captioner = make_captioner(str(folder), per_image=3, device="cpu")
    images = [Image.fromarray(im.transpose(1, 2, 0)) for im in red_threes.images]
    captions = [c for per_image in captioner.caption_images(images) for c in per_image]
    assert len(captions) == 6
    named = [c for c in captions if {"three", "3"} & set(prompt_words(c))
             and "red" in prompt_words(c)]
    assert len(named) >= 5, captions
