"""Built-in benchmark datasets, generated deterministically on first use, and their renderers.

Two families, `colored-digits` and `shape-scenes`, and their harder or easier variants:
`colored-digits-sigma<s>` draws LfF's colour noise at sigma s (larger: weaker shortcut; 0.1 and
0.2 go beyond LfF's five severities, to where a biased model learns much of the digits too);
`shape-scenes-subtle` fades every background towards one grey and tints each image at random, so
the scenes differ only in a slight, overlapping tint and a faint texture. A variant shares its
family's classes, attribute and class words, renderer and shipped models; only the drawing
parameters differ (`Builtin.params`).

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
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

CONFLICT_RATIOS = (0.005, 0.01, 0.02, 0.05)  # LfF's rho grid: 0.5, 1, 2, 5 % bias-conflicting
LFF_COLOR_SIGMAS = (0.05, 0.02, 0.01, 0.005, 0.002)  # LfF's Colored-MNIST severities 1..5
# Beyond LfF's protocol, weaker colour shortcuts: at LfF's weakest (0.05) every ranker still finds
# nearly every conflicting digit (docs/BENCHMARKS.md). At 0.1 neighbouring colours (orange and
# red lie 0.21 apart in RGB) start to overlap; at 0.2 many do, and a biased model learns much of
# the digits besides the colour, as on users' data where the shortcut is subtle (issue 17)
WEAK_COLOR_SIGMAS = (0.2, 0.1)
# shape-scenes-subtle: each background a quarter of the way from one grey to its full scene, then
# shifted by a random tint per image that blurs the scenes' tints into each other, so that their
# faint textures are what tells them apart (see docs/guide/dataset-format.md)
SUBTLE_SCENES = {"scene_strength": 0.25, "tint_sigma": 0.1}


@dataclass(frozen=True)
class Builtin:
    """One built-in dataset: its family, and the keyword arguments that set the family's
    generator and renderer apart from their defaults (none: the family itself, as it was)."""

    family: str  # "colored-digits" or "shape-scenes": classes, words, renderer, shipped models
    title: str  # what it is, in a few words (for pickers)
    params: dict[str, float] = field(default_factory=dict)


def _colour_severity(sigma: float) -> Builtin:
    if sigma in WEAK_COLOR_SIGMAS:
        strength = "the weakest" if sigma == max(WEAK_COLOR_SIGMAS) else "a weak"
        return Builtin("colored-digits", f"Colored digits, colour sigma {sigma:g} (beyond LfF's "
                       f"severities: {strength} colour shortcut)", {"color_sigma": sigma})
    severity = LFF_COLOR_SIGMAS.index(sigma) + 1
    return Builtin("colored-digits", f"Colored digits, colour sigma {sigma:g} (LfF severity "
                   f"{severity}: {'weaker' if sigma > 0.01 else 'stronger'} colour shortcut)",
                   {"color_sigma": sigma})


BUILTINS = {
    "colored-digits": Builtin(
        "colored-digits",
        "Colored digits (28 px, colour is the bias; colour sigma 0.01, LfF severity 3)"),
    **{f"colored-digits-sigma{s:g}": _colour_severity(s)
       for s in (*WEAK_COLOR_SIGMAS, *LFF_COLOR_SIGMAS) if s != 0.01},
    "shape-scenes": Builtin(
        "shape-scenes", "Shape scenes (64 px, background is the bias, with object masks)"),
    "shape-scenes-subtle": Builtin(
        "shape-scenes", "Shape scenes, subtle (faint backgrounds tinted at random: a weaker "
        "background shortcut)", SUBTLE_SCENES),
}
BUILTIN_NAMES = tuple(BUILTINS)
BUILTIN_FAMILIES = ("colored-digits", "shape-scenes")  # the zoo's domains: one model set each
BUILTIN_TITLES = {name: builtin.title for name, builtin in BUILTINS.items()}


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


def builtin_family(name: str) -> str:
    """The family of built-in `name` (a family is its own): the built-in whose classes, class
    and attribute words, renderer and shipped models it shares."""
    return _builtin(name).family


def get_renderer(name: str) -> PromptRenderer:
    """The prompt renderer of built-in `name`: its family's, drawing with its parameters."""
    builtin = _builtin(name)
    if builtin.family == "colored-digits":
        from diffubias.builtin.colored_digits import DigitRenderer

        return DigitRenderer(**builtin.params)
    from diffubias.builtin.shape_scenes import ShapeRenderer

    return ShapeRenderer(**builtin.params)


def class_words(dataset_name: str) -> dict[str, tuple[str, ...]]:
    """Other words that name each class of a built-in dataset (`builtin:<name>`), by class
    name: numerals for digits, plurals and synonyms for shapes; {} for any other dataset. The
    vocabulary a person would type as `class_synonyms`, so it reads no label."""
    name = dataset_name.removeprefix("builtin:")
    if not dataset_name.startswith("builtin:") or name not in BUILTINS:
        return {}
    if BUILTINS[name].family == "colored-digits":
        from diffubias.builtin.colored_digits import _CLASS_WORDS, CLASS_NAMES
    else:
        from diffubias.builtin.shape_scenes import _SHAPE_WORDS as _CLASS_WORDS
        from diffubias.builtin.shape_scenes import CLASS_NAMES
    return {cls: tuple(w for w, i in _CLASS_WORDS.items() if i == index and w != cls)
            for index, cls in enumerate(CLASS_NAMES)}


def _generator(name: str) -> Callable[..., None]:
    builtin = _builtin(name)
    if builtin.family == "colored-digits":
        from diffubias.builtin.colored_digits import generate
    else:
        from diffubias.builtin.shape_scenes import generate
    return partial(generate, **builtin.params)


def _builtin(name: str) -> Builtin:
    if name not in BUILTINS:
        raise ValueError(
            f"unknown built-in dataset {name!r}; expected one of {', '.join(BUILTIN_NAMES)}"
        )
    return BUILTINS[name]


def _check_conflict_ratio(conflict_ratio: float) -> float:
    for ratio in CONFLICT_RATIOS:
        if math.isclose(conflict_ratio, ratio, rel_tol=1e-9):
            return ratio
    raise ValueError(
        f"conflict_ratio {conflict_ratio!r} is not offered for built-ins; expected one of "
        f"{', '.join(f'{r:g}' for r in CONFLICT_RATIOS)}"
    )
