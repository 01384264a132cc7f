"""Stage 5, filter: the text filter turns the candidates' captions into prompts.

`filter_prompts` resolves the run's F (`top_f`, 0: twice the number of classes, as in the paper)
and stop words, and keeps each caption that uses one of the F most frequent words
(`diffubias.text_filter`). A person may then edit, drop or add prompts before generation.
Knows nothing of where captions or prompts are stored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from diffubias.captions import Caption
from diffubias.config import RunConfig
from diffubias.text_filter import FilterResult, filter_captions


def resolved_top_f(config: RunConfig, num_classes: int) -> int:
    """The F a run uses: `config.top_f`, or twice the number of classes when it is 0."""
    return config.top_f or 2 * num_classes


def filter_prompts(captions: Sequence[Caption], labels: Mapping[int, int] | Sequence[int],
                   config: RunConfig, *, num_classes: int) -> FilterResult:
    """The kept and dropped prompts of `captions`; `labels[position]` is each sample's class."""
    return filter_captions(captions, labels, top_f=resolved_top_f(config, num_classes),
                           extra_stop_words=config.extra_stop_words)
