"""Built-in benchmark datasets, generated deterministically on first use, and their renderers.

Each built-in is written into `cache_dir/builtin/<name>-rho<ratio>-seed<seed>/` in the ordinary
on-disk format (see `diffubias.dataset`): same (name, ratio, seed), byte-identical files. Each
also has a `PromptRenderer`, the offline stand-in for a diffusion model: it reads the class and
attribute words in a prompt and draws that image. Knows: the registry and the cache layout
(what the generators share is `generator_parts`).
Does not know: loading or validating datasets (that is `diffubias.dataset_sources`).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Callable
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


def class_words(dataset_name: str) -> dict[str, tuple[str, ...]]:
    """Other words that name each class of a built-in dataset (`builtin:<name>`), by class
    name: numerals for digits, plurals and synonyms for shapes; {} for any other dataset. The
    vocabulary a person would type as `class_synonyms`, so it reads no label."""
    name = dataset_name.removeprefix("builtin:")
    if not dataset_name.startswith("builtin:") or name not in BUILTIN_NAMES:
        return {}
    if name == "colored-digits":
        from diffubias.builtin.colored_digits import _CLASS_WORDS, CLASS_NAMES
    else:
        from diffubias.builtin.shape_scenes import _SHAPE_WORDS as _CLASS_WORDS
        from diffubias.builtin.shape_scenes import CLASS_NAMES
    return {cls: tuple(w for w, i in _CLASS_WORDS.items() if i == index and w != cls)
            for index, cls in enumerate(CLASS_NAMES)}


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
