"""The verify stage: known bad images planted among good ones are flagged, each for its reason.

On colored-digits (1 % conflicts) with a GCE model of one epoch and the shipped builtin-blip
captioner: real test images stand in for generated ones, so what each should get is known.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from diffubias.backends import make_captioner
from diffubias.config import RunConfig
from diffubias.decoding import read_images
from diffubias.prepared import PreparedDataset
from diffubias.stages.detect import detect_bias
from diffubias.stages.verify import channel_hashes, loss_thresholds, nearest_hashes, verify_images


@pytest.fixture(scope="module")
def digits(builtin_cache, one_torch_thread):
    # one epoch of 40 steps: the biased model as wide as the classifier (at the default width 4
    # it would not yet fit the colour, and its losses would not tell aligned from conflicting)
    config = RunConfig(dataset="builtin:colored-digits", conflict_ratio=0.01, seed=0,
                       cache_dir=str(builtin_cache), device="cpu", width=8, biased_width=8,
                       biased_epochs=1, batch_size=256)
    data = PreparedDataset.load(config)
    detection = detect_bias(data, config)
    thresholds = loss_thresholds(config, detection.losses, detection.labels,
                                 detection.is_candidate,
                                 data.ds.num_classes)
    return config, data, detection.training.model, thresholds


def _pil(data, positions):
    pixels = read_images(data.ds, list(positions), size=data.image_size)
    return [Image.fromarray(p.permute(1, 2, 0).numpy()) for p in pixels]


def test_planted_bad_images_are_flagged_for_their_reason(digits):
    config, data, biased, thresholds = digits
    ds = data.ds
    test = ds.indices("test")
    conflicting = test[data.conflicts(test)]
    aligned = test[~data.conflicts(test)]
    three = 3
    good = [p for p in conflicting if ds.labels[p] == three][:6]
    wrong_class = [p for p in conflicting if ds.labels[p] == 5][:3]  # a five labelled three
    easy = [p for p in aligned if ds.labels[p] == three][:3]  # the aligned colour
    train = ds.indices("train")
    copies = [p for p in train[data.conflicts(train)] if ds.labels[p] == three][:2]
    positions = good + wrong_class + easy + copies
    labels = [three] * len(positions)
    captioner = make_captioner("builtin-blip", dataset_name=ds.name, per_image=1, device="cpu")
    result = verify_images(_pil(data, positions), labels, data=data, biased_model=biased,
                           min_loss=thresholds, config=config, captioner=captioner)
    checks = result.checks
    kinds = (["good"] * len(good) + ["wrong class"] * len(wrong_class) + ["aligned"] * len(easy)
             + ["copy"] * len(copies))
    by_kind = {k: [c for c, kind in zip(checks, kinds) if kind == k] for k in set(kinds)}
    assert sum(c.passed for c in by_kind["good"]) >= 5  # a real model may miss one caption
    assert all(c.shows_class is False for c in by_kind["wrong class"])
    assert all(not c.conflicting and "bias-aligned" in c.reasons[0] for c in by_kind["aligned"])
    assert all(c.copy and c.hash_distance == 0 for c in by_kind["copy"])
    assert [c.nearest_train for c in by_kind["copy"]] == copies
    assert not any(c.copy for c in by_kind["good"])  # test digits are not training images
    summary = result.summary()
    assert summary["n_images"] == len(positions) and summary["n_copies"] == len(copies)
    assert summary["class_checked_by"]


def test_without_a_model_captioner_the_class_is_not_checked(digits):
    config, data, biased, thresholds = digits
    test = data.ds.indices("test")[:4]
    result = verify_images(_pil(data, test), data.ds.labels[test], data=data,
                           biased_model=biased, min_loss=thresholds, config=config)
    assert all(c.shows_class is None and c.caption is None for c in result.checks)
    assert result.class_checked_by is None


def test_a_recoloured_copy_is_not_a_copy_and_hash_distances_are_exact():
    rng = np.random.default_rng(0)
    shape = (rng.random((28, 28)) > 0.7).astype(np.uint8) * 255
    red = np.zeros((1, 3, 28, 28), np.uint8)
    red[0, 0] = shape
    green = np.zeros_like(red)
    green[0, 1] = shape
    hashes = channel_hashes(torch.from_numpy(np.concatenate([red, green])))
    nearest, distance = nearest_hashes(hashes[:1], hashes)
    assert (nearest[0], distance[0]) == (0, 0)
    _, apart = nearest_hashes(hashes[1:], hashes[:1])
    assert apart[0] > 16  # the same strokes in another channel are far apart


def test_thresholds_are_settings_checked_by_the_config():
    with pytest.raises(ValueError, match="image_checks must be one of off, propose, drop"):
        RunConfig(image_checks="maybe")
    with pytest.raises(ValueError, match="check_max_hash_distance"):
        RunConfig(check_max_hash_distance=200)
    with pytest.raises(ValueError, match="check_min_loss"):
        RunConfig(check_min_loss=-1)


def test_the_loss_threshold_is_the_mining_threshold_unless_set():
    losses = np.array([0.1, 0.2, 3.0, 2.0, 0.3, 5.0])
    labels = np.array([0, 0, 0, 0, 1, 1])
    mined = np.array([False, False, True, True, False, True])
    assert loss_thresholds(RunConfig(), losses, labels, mined, 3) == {
        0: 2.0, 1: 5.0, 2: pytest.approx(np.log(2))}  # a class with no candidate: ln 2
    assert loss_thresholds(RunConfig(check_min_loss=1.5), losses, labels, mined, 2) == {
        0: 1.5, 1: 1.5}



def test_a_captioner_that_cannot_load_skips_the_class_check_and_says_why(digits):
    """The images exist by then: a broken captioner must not fail the generation job."""
    from diffubias.stages.verify import check_generated

    config, data, biased, _ = digits
    test = data.ds.indices("test")[:3]
    scores = np.zeros(len(data.ds.indices("train")))
    result = check_generated(_pil(data, test), data.ds.labels[test], data=data,
                             biased_model=biased, train_losses=scores,
                             train_labels=data.ds.labels[data.ds.indices("train")],
                             is_candidate=scores > 0,
                             config=replace(config, captioner="test/no-such-captioner"))
    assert all(c.shows_class is None for c in result.checks)
    assert "captioner 'test/no-such-captioner' unavailable" in result.summary()[
        "class_check_skipped"]
