"""How well a captioner describes images it never saw: the share of its captions that name the
image's class word, its attribute word, and both.

Scored on a corpus with known class and attribute (the judge corpus: sources no zoo model trains
on), with whole-word matching against the corpus's words for each class and attribute. Higher is
better; 1.0 means every sampled caption names both. Knows: captions and corpus words. Does not
know: how the captioner was built or trained.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from diffubias.zoo.corpus import Corpus


@dataclass(frozen=True)
class CaptionQuality:
    images: int
    captions: int
    class_share: float  # captions naming the image's class
    attribute_share: float  # captions naming the image's attribute
    both_share: float  # captions naming both
    examples: tuple[str, ...]  # one caption each of the first few images, "<truth>: <caption>"

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (f"class {self.class_share:.1%}, attribute {self.attribute_share:.1%}, both "
                f"{self.both_share:.1%} of {self.captions} captions of {self.images} images")


def caption_quality(captioner: Any, corpus: Corpus, *, images: int | None = None,
                    examples: int = 6) -> CaptionQuality:
    """Captions the first `images` images of `corpus` (all when None) with `captioner` (a
    `ModelCaptioner`, sampling as configured) and scores them."""
    count = len(corpus) if images is None else min(int(images), len(corpus))
    if count < 1:
        raise ValueError(f"images must be at least 1; got {images!r}")
    names_class, names_attribute, shown = [], [], []
    step = captioner.settings.batch_size
    for start in range(0, count, step):
        chunk = range(start, min(count, start + step))
        pil = [Image.fromarray(corpus.images[i].transpose(1, 2, 0)) for i in chunk]  # -> HWC
        texts = captioner.caption_images(pil, batch_seed=captioner.settings.seed + start)
        for i, per_image in zip(chunk, texts):
            label, attribute = int(corpus.labels[i]), int(corpus.attributes[i])
            for text in per_image:
                names_class.append(corpus.names_class(text, label))
                names_attribute.append(corpus.names_attribute(text, attribute))
            if len(shown) < examples:  # the first caption of the first few images
                truth = f"{corpus.class_names[label]}/{corpus.attribute_names[attribute]}"
                shown.append(f"{truth}: {per_image[0]}")
    c, a = np.array(names_class), np.array(names_attribute)
    return CaptionQuality(count, len(c), float(c.mean()), float(a.mean()), float((c & a).mean()),
                          tuple(shown))
