"""Shape scenes: a background bias in the manner of BAR / Waterbirds, drawn procedurally at 64 px.

Class = an object shape (circle, square, triangle, star, cross, heart) at a random size,
position and rotation; bias = the background scene, a procedural texture (grass, water, sand,
brick, snow, sky) that differs from the others in colour and in texture. The object colour comes
from a small palette that contrasts with every scene and is drawn independently of the class.
Every image has an object mask. Same rho protocol as colored digits: in train, class i sits on
scene i except for a fraction rho spread evenly over the other scenes; valid and test are
unbiased.

A weaker shortcut with the same names: `scene_strength` < 1 fades every scene that share of the
way from one grey (GROUND), so the six backgrounds differ only in a slight tint and a faint
texture; `tint_sigma` > 0 then shifts each image's background by its own random tint, N(0,
tint_sigma) per channel, as LfF's colour noise does to its digits, so that the scenes' tints
overlap and only their faint textures tell them apart for sure. The tints come from a stream of
their own, so the same seed gives the same objects, scenes and captions at every setting.
Knows: this generator and its prompt renderer. Does not know: the loader or any model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

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

CLASS_NAMES = ("circle", "square", "triangle", "star", "cross", "heart")
SCENE_NAMES = ("grass", "water", "sand", "brick", "snow", "sky")  # scene i is aligned with shape i
# Object colours, RGB 0..255: each stands out on every scene (dark, or saturated off-scene hues).
OBJECT_COLORS = {"black": (20, 20, 20), "magenta": (230, 40, 200), "yellow": (255, 225, 30)}
IMAGE_SIZE = 64
RADIUS_RANGE = (13.0, 21.0)  # object's outer radius in px: 40-65 % of the image side
MARGIN = 3  # px between the object and the image border
TRAIN_PER_CLASS = 500
VALID_PER_CELL = (
    17  # per class x scene: 6 x 6 x 17 = 612 valid images (600 is not a multiple of 36)
)
TEST_PER_CELL = 34  # 1,224 test images
GROUND = np.array([0.55, 0.55, 0.55])  # the grey faded scenes share: every object colour stands out
TINT_STREAM = 1  # the per-image tints' generator is seeded (seed, TINT_STREAM), apart from `seed`'s

CAPTION_TEMPLATES = (
    "a {color} {shape} {where}",
    "a {shape} shape {where}",
    "a picture of a {color} {shape} {where}",
    "a simple {shape} colored {color} {where}",
    "a {color} {shape} drawn {where}",
    "a flat {color} {shape} {where}",
    "a {shape} {where}",
)
SCENE_PHRASES = (  # each names its scene word, so captions carry the attribute
    ("on a grass field", "on green grass", "in the grass"),
    ("on the water", "over blue water", "floating on water"),
    ("on the sand", "on beach sand", "lying on sand"),
    ("in front of a brick wall", "against red brick", "on a brick wall"),
    ("on the snow", "in white snow", "on a snow field"),
    ("against the sky", "in a blue sky", "up in the sky"),
)
_SHAPE_WORDS = {word: i for i, word in enumerate(CLASS_NAMES)} | {
    "circles": 0, "disc": 0, "disk": 0, "squares": 1, "triangles": 2, "triangular": 2,
    "stars": 3, "crosses": 4, "plus": 4, "hearts": 5,
}  # fmt: skip
_SCENE_WORDS = {word: i for i, word in enumerate(SCENE_NAMES)} | {
    "grassy": 0, "meadow": 0, "lawn": 0, "sea": 1, "ocean": 1, "lake": 1, "river": 1,
    "sandy": 2, "beach": 2, "desert": 2, "bricks": 3, "wall": 3, "snowy": 4,
    "cloud": 5, "clouds": 5, "cloudy": 5,
}  # fmt: skip
_COLOR_WORDS = {word: i for i, word in enumerate(OBJECT_COLORS)}


def generate(
    folder: Path,
    *,
    conflict_ratio: float,
    seed: int,
    scene_strength: float = 1.0,
    tint_sigma: float = 0.0,
) -> None:
    """Write images, masks and metadata.csv for one variant into the existing `folder`."""
    scene_strength, tint_sigma = _check_subtlety(scene_strength, tint_sigma)
    rng = np.random.default_rng(seed)
    tints = np.random.default_rng([seed, TINT_STREAM])
    color_names = tuple(OBJECT_COLORS)
    rows: list[dict[str, str]] = []
    with PngWriter(folder) as writer:
        for split, samples in _plan(conflict_ratio, rng).items():
            for index, (label, scene) in enumerate(samples):
                color = int(rng.integers(len(color_names)))
                tint = tints.normal(size=3) * tint_sigma if tint_sigma else None
                image, mask = draw_scene(
                    label, scene, color, rng, scene_strength=scene_strength, tint=tint
                )
                path, mask_path = f"{split}/{index:05d}.png", f"masks/{split}/{index:05d}.png"
                writer.write(image, path)
                writer.write(mask.astype(np.uint8) * 255, mask_path)
                captions = pick_captions(
                    CAPTION_TEMPLATES,
                    rng,
                    shape=CLASS_NAMES[label],
                    color=color_names[color],
                    where=SCENE_PHRASES[scene],
                )
                rows.append(
                    metadata_row(
                        path,
                        split,
                        CLASS_NAMES[label],
                        SCENE_NAMES[scene],
                        captions,
                        mask=mask_path,
                        object_color=color_names[color],
                    )
                )
    write_metadata(folder, rows)


def draw_scene(
    shape: int,
    scene: int,
    color: int,
    rng: np.random.Generator,
    *,
    scene_strength: float = 1.0,
    tint: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (64, 64, 3): `shape` in palette colour `color` on `scene`, faded to
    `scene_strength` and shifted by the float (3,) `tint`; its bool (64, 64) mask."""
    background = _SCENE_TEXTURES[scene](rng)  # float (64, 64, 3) in [0, 1]
    if scene_strength != 1.0:  # the full scene skips the arithmetic: its bytes stay as they were
        background = GROUND + scene_strength * (background - GROUND)
    if tint is not None:
        background = background + tint
    image = np.rint(np.clip(background, 0.0, 1.0) * 255).astype(np.uint8)
    mask = _shape_mask(shape, rng)
    image[mask] = list(OBJECT_COLORS.values())[color]
    return image, mask


class ShapeRenderer:
    """Draws the shape, scene and object colour a prompt names, the scene faded and tinted as in
    the dataset variant it stands in for."""

    image_size = IMAGE_SIZE

    def __init__(self, *, scene_strength: float = 1.0, tint_sigma: float = 0.0) -> None:
        self.scene_strength, self.tint_sigma = _check_subtlety(scene_strength, tint_sigma)

    def render(self, prompt: str, *, label_name: str, seed: int) -> Image.Image:
        words = prompt_words(prompt)
        shape = find_named(words, _SHAPE_WORDS, preferred=_SHAPE_WORDS.get(label_name))
        if shape is None:
            if label_name not in CLASS_NAMES:
                raise ValueError(
                    f"prompt {prompt!r} names no shape and label_name {label_name!r} is not one of "
                    f"{', '.join(CLASS_NAMES)}"
                )
            shape = CLASS_NAMES.index(label_name)
        rng = np.random.default_rng(seed)
        scene = find_named(words, _SCENE_WORDS)
        if scene is None:
            scene = int(rng.integers(len(SCENE_NAMES)))
        color = find_named(words, _COLOR_WORDS)
        if color is None:
            color = int(rng.integers(len(OBJECT_COLORS)))
        tint = None
        if self.tint_sigma:
            tint = np.random.default_rng([seed, TINT_STREAM]).normal(size=3) * self.tint_sigma
        image, _ = draw_scene(
            shape, scene, color, rng, scene_strength=self.scene_strength, tint=tint
        )
        return Image.fromarray(image)


def _check_subtlety(scene_strength: float, tint_sigma: float) -> tuple[float, float]:
    if not 0.0 < scene_strength <= 1.0:
        raise ValueError(f"scene_strength must be in (0, 1]; got {scene_strength!r}")
    if not 0.0 <= tint_sigma <= 1.0:
        raise ValueError(f"tint_sigma must be in [0, 1]; got {tint_sigma!r}")
    return float(scene_strength), float(tint_sigma)


def _plan(conflict_ratio: float, rng: np.random.Generator) -> dict[str, list[tuple[int, int]]]:
    """(label, scene) per image, per split, in a shuffled order."""
    scenes_per_class = {
        "train": lambda label: biased_attributes(
            label, TRAIN_PER_CLASS, num_attributes=len(SCENE_NAMES), conflict_ratio=conflict_ratio
        ),
        "valid": lambda label: balanced_attributes(VALID_PER_CELL, num_attributes=len(SCENE_NAMES)),
        "test": lambda label: balanced_attributes(TEST_PER_CELL, num_attributes=len(SCENE_NAMES)),
    }
    plan = {}
    for split, scenes_of in scenes_per_class.items():
        samples = [(label, int(s)) for label in range(len(CLASS_NAMES)) for s in scenes_of(label)]
        plan[split] = [samples[i] for i in rng.permutation(len(samples))]
    return plan


# ---------------------------------------------------------------------------------------------
# Shapes: outlines with outer radius 1, then scaled, rotated and placed at random.


def _outline(shape: int) -> np.ndarray:
    """float (K, 2) polygon, centred, farthest vertex at distance 1."""
    name = CLASS_NAMES[shape]
    if name == "circle":
        return _on_circle(np.ones(48), 48)
    if name == "square":
        return _on_circle(np.ones(4), 4)
    if name == "triangle":
        return _on_circle(np.ones(3), 3)
    if name == "star":
        return _on_circle(
            np.tile([1.0, 0.42], 5), 10
        )  # deep inner radius keeps points distinct at 13 px
    if name == "cross":
        arm, half_width = 1.0, 0.3
        quarter = [(arm, half_width), (half_width, half_width), (half_width, arm)]
        points = []
        for turn in range(4):  # the same three corners, rotated by 90 degrees each time
            c, s = np.cos(turn * np.pi / 2), np.sin(turn * np.pi / 2)
            points += [(c * x - s * y, s * x + c * y) for x, y in quarter]
        return np.array(points) / np.hypot(arm, half_width)
    t = np.linspace(0.0, 2 * np.pi, 64, endpoint=False)  # heart: the classic parametric curve
    points = np.stack(
        [
            16 * np.sin(t) ** 3,
            -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)),
        ],
        1,
    )
    points -= (points.max(axis=0) + points.min(axis=0)) / 2
    return points / np.linalg.norm(points, axis=1).max()


def _on_circle(radii: np.ndarray, count: int) -> np.ndarray:
    angles = np.arange(count) * 2 * np.pi / count - np.pi / 2
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)  # (count, 2)


def _shape_mask(shape: int, rng: np.random.Generator) -> np.ndarray:
    """bool (64, 64): the shape at a random radius, rotation and position, inside the image."""
    radius = rng.uniform(*RADIUS_RANGE)
    angle = rng.uniform(0.0, 2 * np.pi)
    centre = rng.uniform(radius + MARGIN, IMAGE_SIZE - radius - MARGIN, size=2)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = _outline(shape) @ rotation.T * radius + centre  # (K, 2) pixel coordinates
    canvas = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE))
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in points.tolist()], fill=255)
    return np.asarray(canvas) > 0


# ---------------------------------------------------------------------------------------------
# Scenes: float (64, 64, 3) RGB in [0, 1]; each differs from the others in colour and in texture.

_Y, _X = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float64)


def _smooth_noise(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """float (64, 64) noise with rows x cols features, roughly in [0, 1]."""
    cells = Image.fromarray(rng.random((rows, cols)).astype(np.float32))
    return np.asarray(
        cells.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC), dtype=np.float64
    )


def _grass(rng: np.random.Generator) -> np.ndarray:
    blades = _smooth_noise(rng, 6, 64)  # few rows, many columns: thin vertical streaks
    patches = _smooth_noise(rng, 3, 3)
    shade = 0.55 + 0.5 * blades + 0.2 * (patches - 0.5)
    return np.array([0.28, 0.60, 0.14]) * shade[:, :, None] + 0.08 * (patches[:, :, None] - 0.5) * [
        1.0,
        0.6,
        0.0,
    ]


def _water(rng: np.random.Generator) -> np.ndarray:
    wobble = 2.0 * np.sin(2 * np.pi * _X / rng.uniform(18, 30) + rng.uniform(0, 2 * np.pi))
    waves = 0.5 + 0.5 * np.sin(
        2 * np.pi * (_Y + wobble) / rng.uniform(6, 9) + rng.uniform(0, 2 * np.pi)
    )
    image = np.array([0.08, 0.32, 0.68]) * (0.75 + 0.35 * waves)[:, :, None]
    return image + 0.3 * (waves > 0.93)[:, :, None]  # glints on the crests


def _sand(rng: np.random.Generator) -> np.ndarray:
    grain = rng.random((IMAGE_SIZE, IMAGE_SIZE))
    dunes = _smooth_noise(rng, 3, 3)
    specks = rng.random((IMAGE_SIZE, IMAGE_SIZE)) < 0.03
    shade = 0.92 + 0.14 * (grain - 0.5) + 0.14 * (dunes - 0.5) - 0.25 * specks
    return np.array([0.88, 0.77, 0.55]) * shade[:, :, None]


def _brick(rng: np.random.Generator) -> np.ndarray:
    height, width, mortar = 8, 16, 2
    y = _Y.astype(int) + int(rng.integers(height))
    row = y // height
    x = (
        _X.astype(int) + int(rng.integers(width)) + (row % 2) * (width // 2)
    )  # stagger alternate rows
    jitter = rng.normal(0.0, 0.07, size=(row.max() + 1, x.max() // width + 1))[row, x // width]
    brick = (
        np.array([0.66, 0.26, 0.17])
        * (1 + jitter + 0.08 * (rng.random(_X.shape) - 0.5))[:, :, None]
    )
    is_mortar = ((y % height) < mortar) | ((x % width) < mortar)
    return np.where(is_mortar[:, :, None], np.array([0.80, 0.78, 0.72]), brick)


def _snow(rng: np.random.Generator) -> np.ndarray:
    drifts = _smooth_noise(rng, 4, 4)
    sparkle = rng.random((IMAGE_SIZE, IMAGE_SIZE)) < 0.04
    image = np.array([0.95, 0.96, 0.98]) - np.array([0.13, 0.09, 0.03]) * drifts[:, :, None]
    image = image + 0.02 * (rng.random(_X.shape)[:, :, None] - 0.5)
    return np.where(sparkle[:, :, None], 1.0, image)


def _sky(rng: np.random.Generator) -> np.ndarray:
    height = (_Y / (IMAGE_SIZE - 1))[:, :, None]  # 0 at the top, 1 at the bottom
    gradient = np.array([0.28, 0.52, 0.90]) * (1 - height) + np.array([0.60, 0.78, 0.97]) * height
    clouds = np.clip((_smooth_noise(rng, 5, 5) - 0.55) / 0.2, 0.0, 1.0)[:, :, None]
    return gradient * (1 - 0.9 * clouds) + 0.97 * 0.9 * clouds


_SCENE_TEXTURES = (_grass, _water, _sand, _brick, _snow, _sky)
