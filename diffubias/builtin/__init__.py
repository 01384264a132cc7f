"""Built-in benchmark datasets, generated deterministically on first use, and their renderers.

Each built-in is written into `cache_dir/builtin/<name>-rho<ratio>-seed<seed>/` in the ordinary
on-disk format (see `diffubias.dataset`): same (name, ratio, seed), byte-identical files. Each
also has a `PromptRenderer`, the offline stand-in for a diffusion model: it reads the class and
attribute words in a prompt and draws that image. Knows: the registry and the cache layout.
Does not know: loading or validating datasets (that is `diffubias.dataset`).
"""

from __future__ import annotations

import csv
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

BUILTIN_NAMES = ("colored-digits", "shape-scenes")
BUILTIN_TITLES = {  # name: what it is, in a few words (for pickers)
    "colored-digits": "Colored digits (28 px, colour is the bias)",
    "shape-scenes": "Shape scenes (64 px, background is the bias, with object masks)",
}
CONFLICT_RATIOS = (0.005, 0.01, 0.02, 0.05)  # LfF's rho grid: 0.5, 1, 2, 5 % bias-conflicting
CAPTIONS_PER_IMAGE = 3
_A_BEFORE_VOWEL = re.compile(r"\ba (?=(?!one\b)[aeiou])")  # "a orange" -> "an orange", not "an one"


class PromptRenderer(Protocol):
    """Draws the image a prompt describes (class word and attribute word), deterministically."""

    @property
    def image_size(self) -> int: ...

    def render(self, prompt: str, *, label_name: str, seed: int) -> Image.Image:
        """An RGB image_size x image_size image. Class: the one the prompt names, else
        `label_name`; attribute: the one the prompt names, else drawn from `seed`."""
        ...


def ensure_builtin(name: str, *, cache_dir: Path, conflict_ratio: float, seed: int) -> Path:
    """The folder holding built-in `name` for (conflict_ratio, seed), generating it if absent."""
    generate = _generator(name)
    ratio = _check_conflict_ratio(conflict_ratio)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    folder = Path(cache_dir) / "builtin" / f"{name}-rho{ratio:g}-seed{int(seed)}"
    if (folder / "metadata.csv").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        generate(tmp, conflict_ratio=ratio, seed=int(seed))
        tmp.chmod(0o755)
        os.rename(tmp, folder)  # atomic: the folder exists only once complete
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (
            folder / "metadata.csv"
        ).is_file():  # not a concurrent generation that won the rename
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def get_renderer(name: str) -> PromptRenderer:
    """The prompt renderer of built-in `name`."""
    _check_name(name)
    if name == "colored-digits":
        from diffubias.builtin.colored_digits import DigitRenderer

        return DigitRenderer()
    from diffubias.builtin.shape_scenes import ShapeRenderer

    return ShapeRenderer()


def _generator(name: str) -> Callable[..., None]:
    _check_name(name)
    if name == "colored-digits":
        from diffubias.builtin.colored_digits import generate

        return generate
    from diffubias.builtin.shape_scenes import generate

    return generate


def _check_name(name: str) -> None:
    if name not in BUILTIN_NAMES:
        raise ValueError(
            f"unknown built-in dataset {name!r}; expected one of {', '.join(BUILTIN_NAMES)}"
        )


def _check_conflict_ratio(conflict_ratio: float) -> float:
    for ratio in CONFLICT_RATIOS:
        if math.isclose(conflict_ratio, ratio, rel_tol=1e-9):
            return ratio
    raise ValueError(
        f"conflict_ratio {conflict_ratio!r} is not offered for built-ins; expected one of "
        f"{', '.join(f'{r:g}' for r in CONFLICT_RATIOS)}"
    )


# ---------------------------------------------------------------------------------------------
# Shared by the generators: the LfF bias protocol and the metadata file.


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
