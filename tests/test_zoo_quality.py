"""Caption quality: whole-word matches of the class and attribute words, per sampled caption."""

from dataclasses import dataclass

import pytest

from diffubias.hf_captioners import CaptionSettings
from diffubias.zoo.corpus import make_corpus
from diffubias.zoo.quality import caption_quality


@dataclass
class ScriptedCaptioner:
    """Names the class in every caption and the colour in the first of each image's three."""

    corpus: object
    settings: CaptionSettings = CaptionSettings(per_image=3, batch_size=4)
    calls: int = 0

    def caption_images(self, images, *, batch_seed=None):
        out = []
        for _ in images:
            i = self.calls
            self.calls += 1
            label = self.corpus.class_names[self.corpus.labels[i]]
            colour = self.corpus.attribute_names[self.corpus.attributes[i]]
            out.append([f"a {colour} {label}", f"a {label}ish blob", f"the {label} digit"])
        return out


def test_shares_count_captions_with_whole_words():
    corpus = make_corpus("colored-digits", role="judge", per_cell=1, seed=0)
    quality = caption_quality(ScriptedCaptioner(corpus), corpus, images=10)
    assert (quality.images, quality.captions) == (10, 30)
    assert quality.class_share == pytest.approx(2 / 3)  # "threeish" is not "three"
    assert quality.attribute_share == pytest.approx(1 / 3)
    assert quality.both_share == pytest.approx(1 / 3)
    assert len(quality.examples) == 6 and quality.examples[0].count("/") == 1
    assert "class 66.7%" in quality.summary()
