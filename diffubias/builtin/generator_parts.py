"""The parts both built-in generators (`colored_digits`, `shape_scenes`) are made of: the LfF bias
protocol (which attribute each train sample gets), captions filled from templates, the
metadata.csv rows, PNGs written on a few threads, and reading a prompt's words back for the
renderers.

Knows: those shared rules, so the two built-ins stay alike. Does not know: either built-in's
classes, attributes or drawing, or the registry and cache layout (`diffubias.builtin`).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

CAPTIONS_PER_IMAGE = 3
_A_BEFORE_VOWEL = re.compile(r"\ba (?=(?!one\b)[aeiou])")  # "a orange" -> "an orange", not "an one"


def biased_attributes(
    label: int, count: int, *, num_attributes: int, conflict_ratio: float
) -> np.ndarray:
    """int64 (count,) attributes for the train samples of class `label` (LfF protocol).

    A fraction 1 - rho is aligned (attribute == label); the round(count * rho) conflicts go
    round-robin over the other attributes, starting one further along for each class so that
    every attribute gets its share across classes too.
    """
    num_conflicts = round(count * conflict_ratio)
    others = [a for a in range(num_attributes) if a != label]
    conflicts = [others[(label + k) % len(others)] for k in range(num_conflicts)]
    return np.array([label] * (count - num_conflicts) + conflicts, dtype=np.int64)


def balanced_attributes(count_per_attribute: int, *, num_attributes: int) -> np.ndarray:
    """int64 attributes for one class of an unbiased split: each attribute equally often."""
    return np.repeat(np.arange(num_attributes, dtype=np.int64), count_per_attribute)


def pick_captions(
    templates: Sequence[str], rng: np.random.Generator, **words: str | tuple[str, ...]
) -> list[str]:
    """CAPTIONS_PER_IMAGE distinct templates drawn with `rng`, filled with `words`; a tuple value
    is a set of alternative phrasings, one drawn per caption."""
    captions = []
    for template in rng.choice(len(templates), size=CAPTIONS_PER_IMAGE, replace=False):
        filled = {k: v if isinstance(v, str) else v[rng.integers(len(v))] for k, v in words.items()}
        captions.append(_A_BEFORE_VOWEL.sub("an ", templates[template].format(**filled)))
    return captions


def prompt_words(prompt: str) -> list[str]:
    """Lower-case words and numbers of `prompt`, in order."""
    return re.findall(r"[a-z]+|\d+", prompt.lower())


def find_named(
    words: Sequence[str], vocabulary: dict[str, int], *, preferred: int | None = None
) -> int | None:
    """The index of the first vocabulary word in `words`; `preferred` wins if it is among them
    (a prompt naming two classes most likely describes the label it was written for)."""
    found = [vocabulary[word] for word in words if word in vocabulary]
    if preferred is not None and preferred in found:
        return preferred
    return found[0] if found else None


def metadata_row(
    path: str, split: str, label: str, bias: str, captions: Sequence[str], **extra: str
) -> dict[str, str]:
    """One metadata.csv row in the column order every built-in shares."""
    row = {"path": path, "split": split, "label": label, "bias": bias, "caption": captions[0]}
    row |= {f"caption_{i}": caption for i, caption in enumerate(captions[1:], start=2)}
    return row | extra


def write_metadata(folder: Path, rows: Sequence[dict[str, str]]) -> None:
    """metadata.csv with the columns of the first row, '\\n' line ends (byte-identical reruns)."""
    with open(folder / "metadata.csv", "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


class PngWriter:
    """Writes uint8 arrays as PNG files under `folder` on a few threads: PNG encoding and file
    creation release the GIL, and creating thousands of small files is most of a generator's time.
    Use as a context manager; leaving it waits for every file and re-raises the first error."""

    def __init__(self, folder: Path, *, threads: int = 2) -> None:
        self.folder = folder
        self._pool = ThreadPoolExecutor(threads)
        self._pending: list[Future[None]] = []
        self._made: set[Path] = set()

    def __enter__(self) -> PngWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=exc_type is not None)
        if exc_type is None:  # otherwise the body's own error is the one to report
            for future in self._pending:
                future.result()

    def write(self, pixels: np.ndarray, relative_path: str) -> None:
        path = self.folder / relative_path
        if path.parent not in self._made:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._made.add(path.parent)
        self._pending.append(self._pool.submit(_save_png, pixels, path))


def _save_png(pixels: np.ndarray, path: Path) -> None:
    Image.fromarray(pixels).save(
        path, format="PNG", compress_level=1
    )  # speed over size; still deterministic
