"""The re-score stage (`diffubias.stages.rescore`), the closed loop's measure of what a debiased
model leaves, on the planted-bias folder (colour predicts the class but for 18 planted
conflicts): a model that still follows the colour leaves the conflicts wrong, a large gap per
class and the conflicts' colour as the keyword, and points the next round at them; a model that
learnt the shape leaves a small gap. No bias label is read to decide anything."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from planted_methods import planted_folder, planted_run  # noqa: F401, F811

from diffubias.captions import Caption
from diffubias.decoding import read_images
from diffubias.keywords import aligned_counterparts, bias_keywords
from diffubias.prepared import train_evaluated
from diffubias.stages.detect import detect_bias
from diffubias.stages.rescore import rescore

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def detected(planted_run):
    cfg, data, is_conflict = planted_run
    return cfg, data, is_conflict, detect_bias(data, cfg)


def _captions(data, positions):
    """What a captioner that sees the colour would say."""
    ds = data.ds
    return [Caption(int(p), f"a {ds.class_names[ds.labels[p]]} bar on "
                    f"{ds.bias_names[ds.bias[p]]}", "test") for p in positions]


def test_a_model_that_still_follows_the_shortcut_leaves_the_conflicts(detected):
    cfg, data, is_conflict, detection = detected
    positions = detection.positions
    conflicts = set(positions[is_conflict].tolist())
    captions = _captions(data, detection.candidates)
    aligned = _captions(data, detection.positions[aligned_counterparts(
        detection.losses, detection.labels, detection.is_candidate)])
    keywords = {c: [k.term for k in found]
                for c, found in bias_keywords(captions, aligned, data.ds.labels).items()}
    remaining = rescore(data, cfg, detection.training.model, candidates=detection.candidates,
                        captions=captions, keywords=keywords, round_number=1)
    assert remaining.round == 1 and len(remaining.positions) == len(positions)
    # the biased model gets the planted conflicts wrong: they are what remains
    assert len(set(remaining.still_wrong.tolist()) & conflicts) >= 12
    for gap in remaining.classes:
        assert gap.n_candidates == 9 and gap.gap > 0.5
        assert gap.true_gap > 0.5  # measured against the bias column: the proxy agrees
    # the keyword with the largest gap is the colour the class's conflicts have (of the bias
    # keywords: "bar" and the class name, shared by every caption, say nothing)
    top = remaining.keywords[0]
    members = [p for p in detection.candidates if data.ds.labels[p] == top.label]
    colours = {_captions(data, [p])[0].text.rsplit(" ", 1)[1] for p in members
               if p in conflicts}
    assert top.term in colours and top.gap > 0.5
    # the next round starts from the samples it still gets wrong: the conflicts, again
    assert remaining.next_classes == (0, 1)
    assert len(set(remaining.next_candidates.tolist()) & conflicts) >= 14
    summary = remaining.summary()
    assert summary["n_still_wrong"] == len(remaining.still_wrong) > 0
    assert summary["mean_gap"] > 0.5 and len(summary["classes"]) == 2


def test_a_model_that_learnt_the_class_leaves_a_small_gap(detected):
    cfg, data, is_conflict, detection = detected
    test_positions, _ = data.split("test")
    images = read_images(data.ds, test_positions, size=data.image_size)
    labels = torch.as_tensor(data.ds.labels[test_positions], dtype=torch.int64)
    # the unbiased split, three times over: the shape, not the colour, decides
    learnt = train_evaluated(data, replace(cfg, debias_epochs=4), desc="unbiased",
                             added=(images.repeat(3, 1, 1, 1), labels.repeat(3))).model
    biased = rescore(data, cfg, detection.training.model, candidates=detection.candidates)
    better = rescore(data, cfg, learnt, candidates=detection.candidates, round_number=2)
    assert better.round == 2
    assert better.summary()["mean_gap"] < biased.summary()["mean_gap"] - 0.3
    assert len(better.still_wrong) < len(biased.still_wrong)


def test_the_next_round_takes_the_chosen_classes_and_bad_input_is_named(detected):
    cfg, data, _, detection = detected
    model = detection.training.model
    one = rescore(data, cfg, model, candidates=detection.candidates, classes=[1])
    assert one.next_classes == (1,)
    assert set(data.ds.labels[one.next_candidates].tolist()) == {1}
    assert len(one.next_candidates) == cfg.top_k
    with pytest.raises(ValueError, match=r"classes \[5\] do not exist"):
        rescore(data, cfg, model, candidates=detection.candidates, classes=[5])
    test_positions, _ = data.split("test")
    with pytest.raises(ValueError, match="are not training samples"):
        rescore(data, cfg, model, candidates=test_positions[:2])
    assert np.all(one.losses >= 0)
