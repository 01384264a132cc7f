"""Colored digits: LfF's Colored-MNIST protocol applied to scikit-learn's bundled 8x8 digits.

Each 8x8 source digit is upscaled to 28 px with a random affine (small rotation, scale, shift)
and coloured `clamp(mean_color[bias] + N(0,1) * sigma, 0, 1) * digit` per RGB channel: one colour
per image, its noise drawn once, so the same seed gives the same digits at every sigma and only
the spread of each colour differs (`color_sigma`: LfF's severities run 0.05, 0.02, 0.01, 0.005,
0.002; the larger, the more the colours overlap and the weaker the shortcut). In train,
class i takes colour i except for a fraction rho spread evenly over the other colours; valid and
test are unbiased (every class x colour cell equally often). The 1797 source digits are split
once into disjoint train/valid/test pools, so valid and test digits are never seen in train.
Knows: this generator and its prompt renderer. Does not know: the loader or any model.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from diffubias.builtin.generator_parts import (
    PngWriter,
    balanced_attributes,
    biased_attributes,
    find_named,
    metadata_row,
    pick_captions,
    prompt_words,
    write_metadata,
)

CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COLOR_NAMES = (
    "orange",
    "yellow",
    "mauve",
    "khaki",
    "cyan",
    "green",
    "blue",
    "purple",
    "olive",
    "red",
)
# LfF's mean colours, RGB in [0, 1]; colour i is aligned with digit i.
MEAN_COLORS = np.array(
    [
        [0.984, 0.313, 0.169],
        [0.991, 0.916, 0.352],
        [0.673, 0.461, 0.580],
        [0.783, 0.832, 0.601],
        [0.088, 0.778, 0.982],
        [0.321, 0.961, 0.446],
        [0.025, 0.236, 0.759],
        [0.555, 0.102, 0.762],
        [0.208, 0.393, 0.019],
        [0.834, 0.202, 0.267],
    ]
)
COLOR_SIGMA = 0.01  # LfF's middle severity: colours vary slightly per image yet stay unmistakable
IMAGE_SIZE = 28
DIGIT_BOX = 20  # MNIST convention: the digit fills a 20x20 box centred in 28x28
TRAIN_PER_CLASS = 1000
VALID_PER_CELL = 10  # per class x colour: 10 x 10 x 10 = 1,000 valid images
TEST_PER_CELL = 20  # 2,000 test images
# The source split is fixed, not drawn from the dataset seed: the renderer has no dataset seed and
# must draw only train digits, whichever variant (rho, seed) is being debiased.
SOURCE_SPLIT_SEED = 0

CAPTION_TEMPLATES = (
    "a handwritten {digit} drawn in {color}",
    "the digit {digit} in {color} on a black background",
    "a {color} number {digit}",
    "a {color} handwritten {digit} on black",
    "the number {digit} written in {color}",
    "a blurry {color} {digit} on a dark background",
    "a small {color} digit {digit}",
    "a {digit} painted {color}",
)
_CLASS_WORDS = {word: i for i, word in enumerate(CLASS_NAMES)} | {str(i): i for i in range(10)}
_COLOR_WORDS = {word: i for i, word in enumerate(COLOR_NAMES)}


@lru_cache(maxsize=1)
def source_digits() -> tuple[np.ndarray, np.ndarray]:
    """float32 (1797, 8, 8) digits in [0, 1] and their int64 (1797,) classes."""
    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


@lru_cache(maxsize=1)
def source_pools() -> dict[str, np.ndarray]:
    """Disjoint source-digit ids per split (about 60/20/20, stratified by class)."""
    _, classes = source_digits()
    ids = np.arange(len(classes))
    train, rest = train_test_split(
        ids, test_size=0.4, stratify=classes, random_state=SOURCE_SPLIT_SEED
    )
    valid, test = train_test_split(
        rest, test_size=0.5, stratify=classes[rest], random_state=SOURCE_SPLIT_SEED
    )
    return {"train": np.sort(train), "valid": np.sort(valid), "test": np.sort(test)}


def generate(
    folder: Path, *, conflict_ratio: float, seed: int, color_sigma: float = COLOR_SIGMA
) -> None:
    """Write images and metadata.csv for one variant into the existing `folder`."""
    color_sigma = _check_color_sigma(color_sigma)
    rng = np.random.default_rng(seed)
    images, _ = source_digits()
    rows: list[dict[str, str]] = []
    with PngWriter(folder) as writer:
        for split, samples in _plan(conflict_ratio, rng).items():
            for index, (label, color, source_id) in enumerate(samples):
                path = f"{split}/{index:05d}.png"
                writer.write(_render(images[source_id], color, rng, color_sigma), path)
                captions = pick_captions(
                    CAPTION_TEMPLATES, rng, digit=CLASS_NAMES[label], color=COLOR_NAMES[color]
                )
                rows.append(
                    metadata_row(
                        path,
                        split,
                        CLASS_NAMES[label],
                        COLOR_NAMES[color],
                        captions,
                        source_id=str(source_id),
                    )
                )
    write_metadata(folder, rows)


class DigitRenderer:
    """Draws the digit and colour a prompt names, from train-pool source digits only, with the
    colour noise of the dataset variant it stands in for."""

    image_size = IMAGE_SIZE

    def __init__(self, *, color_sigma: float = COLOR_SIGMA) -> None:
        self.color_sigma = _check_color_sigma(color_sigma)
        _, classes = source_digits()
        train = source_pools()["train"]
        self.pool = tuple(train[classes[train] == label] for label in range(len(CLASS_NAMES)))

    def render(self, prompt: str, *, label_name: str, seed: int) -> Image.Image:
        words = prompt_words(prompt)
        label = find_named(words, _CLASS_WORDS, preferred=_CLASS_WORDS.get(label_name))
        if label is None:
            if label_name not in _CLASS_WORDS:
                raise ValueError(
                    f"prompt {prompt!r} names no digit and label_name {label_name!r} is not one of "
                    f"{', '.join(CLASS_NAMES)}"
                )
            label = _CLASS_WORDS[label_name]
        rng = np.random.default_rng(seed)
        source_id = rng.choice(self.pool[label])
        color = find_named(words, _COLOR_WORDS)
        if color is None:
            color = int(rng.integers(len(COLOR_NAMES)))
        images, _ = source_digits()
        return Image.fromarray(_render(images[source_id], color, rng, self.color_sigma))


def _plan(conflict_ratio: float, rng: np.random.Generator) -> dict[str, list[tuple[int, int, int]]]:
    """(label, colour, source id) per image, per split, in a shuffled order."""
    _, classes = source_digits()
    pools = source_pools()
    colors_per_class = {
        "train": lambda label: biased_attributes(
            label, TRAIN_PER_CLASS, num_attributes=len(COLOR_NAMES), conflict_ratio=conflict_ratio
        ),
        "valid": lambda label: balanced_attributes(VALID_PER_CELL, num_attributes=len(COLOR_NAMES)),
        "test": lambda label: balanced_attributes(TEST_PER_CELL, num_attributes=len(COLOR_NAMES)),
    }
    plan: dict[str, list[tuple[int, int, int]]] = {}
    for split, colors_of in colors_per_class.items():
        samples = []
        for label in range(len(CLASS_NAMES)):
            colors = colors_of(label)
            pool = pools[split][classes[pools[split]] == label]
            # every source digit used equally often (+-1), paired with colours at random
            sources = np.resize(rng.permutation(pool), len(colors))
            colors = rng.permutation(colors).tolist()
            samples += [
                (label, color, source)
                for color, source in zip(colors, sources.tolist(), strict=True)
            ]
        plan[split] = [samples[i] for i in rng.permutation(len(samples))]
    return plan


def _check_color_sigma(color_sigma: float) -> float:
    if not 0.0 <= color_sigma <= 1.0:
        raise ValueError(f"color_sigma must be in [0, 1]; got {color_sigma!r}")
    return float(color_sigma)


def _render(
    digit: np.ndarray, color: int, rng: np.random.Generator, color_sigma: float = COLOR_SIGMA
) -> np.ndarray:
    """uint8 (28, 28, 3): `digit` (8x8 in [0, 1]) upscaled, randomly warped, and coloured."""
    # 1. sharpen the blurry 8x8 strokes so their cores reach full intensity, then upscale
    strokes = np.clip((digit - 0.1) / 0.6, 0.0, 1.0)
    small = Image.fromarray(np.rint(strokes * 255).astype(np.uint8))
    canvas = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE))
    offset = (IMAGE_SIZE - DIGIT_BOX) // 2
    canvas.paste(small.resize((DIGIT_BOX, DIGIT_BOX), Image.Resampling.BICUBIC), (offset, offset))
    # 2. random affine about the centre
    angle = np.deg2rad(rng.uniform(-15.0, 15.0))
    scale = rng.uniform(0.85, 1.1)
    shift_x, shift_y = rng.uniform(-2.0, 2.0, size=2)
    warped = canvas.transform(
        canvas.size,
        Image.Transform.AFFINE,
        _inverse_affine(angle, scale, shift_x, shift_y),
        Image.Resampling.BILINEAR,
    )
    # 3. LfF colouring: one noisy colour per image, times the stroke intensity
    rgb = np.clip(MEAN_COLORS[color] + rng.normal(size=3) * color_sigma, 0.0, 1.0)
    intensity = np.asarray(warped, dtype=np.float64)  # (28, 28) in 0..255
    return np.rint(intensity[:, :, None] * rgb).astype(
        np.uint8
    )  # (28, 28, 1) * (3,) -> (28, 28, 3)


def _inverse_affine(
    angle: float, scale: float, shift_x: float, shift_y: float
) -> tuple[float, ...]:
    """PIL AFFINE coefficients (output -> input pixel) of rotate, scale, shift about the centre."""
    centre = IMAGE_SIZE / 2
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    x0, y0 = centre + shift_x, centre + shift_y
    return (cos, sin, centre - cos * x0 - sin * y0, -sin, cos, centre + sin * x0 - cos * y0)
