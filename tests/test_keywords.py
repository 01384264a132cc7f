"""Bias keyword discovery: a planted over-represented word ranks first with counts and a
significance score; shared words, stop words and other classes' words do not; the caption stage
writes one ranked list per class to report.json."""

import json

import numpy as np
import pytest

from diffubias.captions import Caption
from diffubias.keywords import aligned_counterparts, bias_keywords, caption_terms
from diffubias.pipeline import run_stages
from tiny_models import make_run_folder, write_tiny_dataset


def _captions(texts_by_position: dict[int, list[str]]) -> list[Caption]:
    return [Caption(p, t, "test") for p, texts in texts_by_position.items() for t in texts]


def _planted(n: int = 20, with_water: int = 15, aligned_water: int = 2):
    """Class 0: `with_water` of n candidates and `aligned_water` of n aligned samples mention
    water; every caption mentions a bird. Class 1 (positions 100+): candidates mention snow."""
    cand = {i: [f"a bird standing {'on water' if i < with_water else 'in a field'}"]
            for i in range(n)}
    align = {n + i: [f"a bird standing {'on water' if i < aligned_water else 'in a field'}"]
             for i in range(n)}
    cand |= {100 + i: ["a boat in the snow"] for i in range(n)}
    align |= {100 + n + i: ["a boat on a lake"] for i in range(n)}
    labels = {p: 0 for p in list(range(2 * n))} | {100 + i: 1 for i in range(2 * n)}
    return _captions(cand), _captions(align), labels


def test_planted_word_ranks_first_with_counts_and_score():
    cand, align, labels = _planted()
    found = bias_keywords(cand, align, labels, top_n=5)
    top = found[0][0]
    assert top.term == "water"
    assert (top.n_candidates, top.n_aligned) == (15, 2)
    assert top.candidate_share == pytest.approx(0.75) and top.aligned_share == pytest.approx(0.1)
    assert top.gap == pytest.approx(0.65) and top.score > 3  # p < 0.001
    terms0 = [k.term for k in found[0]]
    assert "bird" not in terms0 and "field" not in terms0  # shared / under-represented
    assert "on" not in terms0 and "a" not in terms0  # stop words
    assert "snow" not in terms0  # another class's candidates
    assert [k.term for k in found[1]][:1] == ["snow"]
    scores = [k.score for k in found[0]]
    assert scores == sorted(scores, reverse=True)


def test_samples_count_once_however_many_captions_use_a_term():
    cand = _captions({0: ["red sky", "red sky again", "a red sky"], 1: ["red road"],
                      2: ["grey road"]})
    align = _captions({3: ["grey road"], 4: ["grey sky"], 5: ["grey road"]})
    found = bias_keywords(cand, align, {p: 0 for p in range(6)}, min_count=1)
    red = next(k for k in found[0] if k.term == "red")
    assert (red.n_candidates, red.n_aligned) == (2, 0)


def test_two_word_phrases_of_adjacent_content_words():
    stop = frozenset({"a", "on", "the"})
    assert caption_terms("a red background on the left", stop) == {
        "red", "background", "left", "red background"}


def test_class_without_aligned_captions_gets_no_keywords_and_options_are_checked():
    cand = _captions({0: ["water"], 1: ["water"]})
    assert bias_keywords(cand, [], {0: 0, 1: 0}) == {0: ()}
    with pytest.raises(ValueError, match="top_n"):
        bias_keywords(cand, [], {0: 0, 1: 0}, top_n=0)


def test_aligned_counterparts_are_lowest_loss_non_candidates_per_class():
    losses = np.array([0.3, 0.1, 5.0, 0.2, 0.05, 4.0, 0.01, 0.4])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    is_candidate = np.array([0, 0, 1, 0, 0, 1, 0, 0], dtype=bool)
    assert aligned_counterparts(losses, labels, is_candidate).tolist() == [1, 6]
    is_candidate[0] = True  # two candidates in class 0: two counterparts
    assert aligned_counterparts(losses, labels, is_candidate).tolist() == [1, 3, 6]


def test_caption_stage_writes_keywords_per_class(tmp_path):
    root = write_tiny_dataset(tmp_path / "pets", n_train=10, n_conflict=3)
    run = make_run_folder(tmp_path / "run", root, k=3, captioner="metadata",
                          captions_per_image=2, keywords_top_n=5)
    report = run_stages(run, ("caption",))
    assert report["captions"]["backend"] == "metadata" and report["captions"]["n_captions"] == 12
    assert (run.out_dir / "aligned_captions.csv").exists()
    keywords = report["keywords"]
    assert set(keywords) == {"cat", "dog"}
    assert keywords["cat"][0]["term"] in ("green", "green background", "green cat")
    assert {"green", "red"} & {k["term"] for k in keywords["cat"]} == {"green"}
    assert keywords["dog"][0]["n_candidates"] == 3 and keywords["dog"][0]["n_aligned"] == 0
    assert "red" in {k["term"] for k in keywords["dog"]}
    on_disk = json.loads(run.report_path.read_text())
    assert on_disk["keywords"] == keywords


def test_keywords_off_skips_aligned_captions(tmp_path):
    root = write_tiny_dataset(tmp_path / "pets")
    run = make_run_folder(tmp_path / "run", root, keywords_top_n=0)
    report = run_stages(run, ("caption",))
    assert report["keywords"] is None
    assert not (run.out_dir / "aligned_captions.csv").exists()
