"""The zoo judge: two heads over one small CNN, trained on the judge corpus, saved and loaded
with both heads' names, and it learns a planted colour at once."""

from pathlib import Path

import numpy as np
import pytest

from diffubias.zoo.corpus import make_corpus
from diffubias.zoo.judge import (WEIGHTS_NAME, JudgeSpec, judge_quality, load_judge, save_judge,
                                 train_judge)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_torch_thread):
    corpus = make_corpus("colored-digits", role="judge", per_cell=3, seed=0)
    folder = tmp_path_factory.mktemp("judge")
    judge, loop = train_judge(corpus, folder / "checkpoint", spec=JudgeSpec(width=8), steps=40,
                              seed=0, show_progress=False)
    return judge, loop, folder


def test_judge_scores_both_heads_and_learns_the_colour_first(trained):
    judge, loop, _ = trained
    check = make_corpus("colored-digits", role="check", per_cell=1, seed=0)
    scores = judge.score(check.images)
    assert scores.class_probs.shape == (100, 10) and scores.attribute_probs.shape == (100, 10)
    np.testing.assert_allclose(scores.class_probs.sum(1), 1, rtol=1e-5)
    quality = judge_quality(judge, check)
    assert quality.attribute_accuracy > 0.5  # colour is easy: learnt within 40 steps
    shares = scores.agreement(check.labels, check.attributes)
    assert shares["attribute"] == pytest.approx(quality.attribute_accuracy)
    assert shares["both"] <= min(shares["class"], shares["attribute"])
    assert loop.steps == 40


def test_judge_round_trips_through_safetensors(trained, tmp_path):
    judge, _, _ = trained
    path = save_judge(judge, tmp_path / WEIGHTS_NAME)
    loaded = load_judge(tmp_path)
    assert loaded.class_names == judge.class_names
    assert loaded.attribute_names == judge.attribute_names
    images = make_corpus("colored-digits", role="check", per_cell=1, seed=1).images[:8]
    np.testing.assert_allclose(loaded.score(images).class_probs,
                               judge.score(images).class_probs, atol=1e-6)
    assert path.stat().st_size < 1_000_000


def test_judge_refuses_images_of_another_size(trained):
    with pytest.raises(ValueError, match=r"images must be \(N, 3, 28, 28\)"):
        trained[0].score(np.zeros((2, 3, 64, 64), dtype=np.uint8))


def test_missing_judge_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no judge at"):
        load_judge(tmp_path)


@pytest.mark.parametrize("domain", ["colored-digits", "shape-scenes"])
def test_shipped_judge_sees_class_and_attribute_of_unseen_images(domain):
    folder = Path(__file__).resolve().parents[1] / "models" / f"{domain}-judge"
    if not (folder / WEIGHTS_NAME).is_file():
        pytest.skip(f"no shipped {domain} judge")
    check = make_corpus(domain, role="check", per_cell=2, seed=7)
    quality = judge_quality(load_judge(folder), check)
    assert quality.class_accuracy >= 0.9 and quality.attribute_accuracy >= 0.9, quality
