"""The model card written next to every zoo model: what it is, what it learned from, how long it
trained, how good it measured on held-out images, and the command that retrains it.

Knows: the card's sections and Markdown. Does not know: any model or how quality is measured.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from diffubias.files import atomic_write_text
from diffubias.zoo.corpus import DIGIT_POOLS, Corpus

CARD_NAME = "README.md"


@dataclass(frozen=True)
class ModelCard:
    title: str
    summary: str  # what the model is and what it is for, a few sentences
    usage: str  # a short code block's content: how to load it
    corpus: str  # what it learned from
    architecture: dict  # spec fields
    steps: int
    wall_seconds: float
    quality: Sequence[str]  # measured on held-out images, one line each
    hardware: str  # where it trained, e.g. "CPU, 1 torch thread"
    retrain: Sequence[str]  # the command line that retrains it, as argv
    examples: Sequence[str] = ()
    notes: Sequence[str] = field(default_factory=tuple)

    def render(self, folder: Path) -> str:
        files = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.name != CARD_NAME)
        sizes = ", ".join(f"`{p.name}` {_size(p.stat().st_size)}" for p in files)
        lines = [f"# {self.title}", "", self.summary, "", "## Use", "", "```python",
                 self.usage, "```", "", "## Training data", "", self.corpus, "",
                 "## Model", "", *(f"- {k}: {v}" for k, v in self.architecture.items()), "",
                 f"Files: {sizes}.", "", "## Training", "",
                 f"- steps: {self.steps}",
                 f"- wall time: {_duration(self.wall_seconds)} ({self.hardware}), summed over "
                 "resumed sessions", "",
                 "## Measured quality (held-out images)", "", *(f"- {q}" for q in self.quality)]
        if self.examples:
            lines += ["", "Sampled captions (truth: caption):", "",
                      *(f"- {e}" for e in self.examples)]
        if self.notes:
            lines += ["", "## Notes", "", *(f"- {n}" for n in self.notes)]
        lines += ["", "## Retrain", "", "```bash", shlex.join(self.retrain), "```",
                  "", "The command resumes from `checkpoint/last.safetensors` when it is "
                  "interrupted; "
                  "delete the folder to start over.", ""]
        return "\n".join(lines)

    def write(self, folder: Path) -> Path:
        """README.md in `folder`, atomically."""
        return atomic_write_text(Path(folder) / CARD_NAME, self.render(folder))


def describe_corpus(corpus: Corpus, *, per_cell: int) -> str:
    """One paragraph: domain, role, size, balance, where the images come from."""
    if corpus.domain == "colored-digits":
        pool = DIGIT_POOLS[corpus.role]
        where = (f"the scikit-learn digits of the built-in's {pool} source pool, drawn with the "
                 "built-in's own renderer" + (" (never a valid or test source digit)"
                                              if pool == "train" else ""))
    else:
        where = ("the built-in's scene renderer, with per-image seeds disjoint from every "
                 "dataset variant's and from the other corpus roles'")
    return (f"`diffubias.zoo.corpus.make_corpus({corpus.domain!r}, role={corpus.role!r}, "
            f"per_cell={per_cell}, seed={corpus.seed})`: {len(corpus)} images, every one of the "
            f"{len(corpus.class_names)} x {len(corpus.attribute_names)} class x attribute "
            f"combinations {per_cell} times, from {where}. Classes: "
            f"{', '.join(corpus.class_names)}; attributes: {', '.join(corpus.attribute_names)}.")


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 1e6:.2f} MB" if num_bytes >= 1e5 else f"{num_bytes / 1e3:.1f} kB"
