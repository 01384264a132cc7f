import pytest
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from diffubias.captions import Caption
from diffubias.text_filter import filter_captions, words


def caps(*texts, position=0):
    return [Caption(position, t, "test") for t in texts]


def test_whole_word_matching_does_not_match_man_in_woman():
    captions = caps("a man on a horse", "a man with a hat", "a man running", position=0) + \
        caps("a woman reading", position=1)
    result = filter_captions(captions, {0: 0, 1: 1}, top_f=1)
    assert result.top_words == (("man", 3),)
    assert [p.text for p in result.dropped] == ["a woman reading"]
    assert all(p.matched_words == ("man",) for p in result.kept)


def test_stop_words_come_from_the_maintained_list_and_extras_apply():
    captions = caps("the red digit", "the red seven", "a photo of the red seven")
    result = filter_captions(captions, [3], top_f=3, extra_stop_words=["Photo"])
    top = [w for w, _ in result.top_words]
    assert "the" in ENGLISH_STOP_WORDS and "the" not in top
    assert "photo" not in top and top[:2] == ["red", "seven"]


def test_prompt_keeps_label_and_source_and_dedupes():
    captions = caps("a cyan seven", "A cyan  seven", position=4)
    result = filter_captions(captions, {4: 7}, top_f=2)
    assert len(result.kept) == 1
    prompt = result.kept[0]
    assert (prompt.label, prompt.source, prompt.keep) == (7, 4, True)


def test_words_tokenises_punctuation_and_case():
    assert words("A Red-Star, on GRASS!") == ["a", "red", "star", "on", "grass"]


def test_bad_top_f():
    with pytest.raises(ValueError, match="top_f"):
        filter_captions(caps("x"), [0], top_f=0)
