"""Built-in datasets: the planted bias is exactly what the protocol says, generation is
deterministic, and the renderers draw what the prompt names."""

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.neighbors import KNeighborsClassifier

from diffubias.builtin import (
    BUILTIN_NAMES,
    CONFLICT_RATIOS,
    builtin_family,
    colored_digits,
    ensure_builtin,
    get_renderer,
    shape_scenes,
)
from diffubias.builtin.generator_parts import biased_attributes


@pytest.fixture(scope="session")
def digits_folder(builtin_cache: Path) -> Path:
    return ensure_builtin("colored-digits", cache_dir=builtin_cache, conflict_ratio=0.01, seed=0)


@pytest.fixture(scope="session")
def shapes_folder(builtin_cache: Path) -> Path:
    return ensure_builtin("shape-scenes", cache_dir=builtin_cache, conflict_ratio=0.01, seed=0)


def _metadata(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "metadata.csv", dtype=str, keep_default_na=False)


def _rgb(folder: Path, path: str) -> np.ndarray:
    return np.asarray(Image.open(folder / path).convert("RGB"))


# ---------------------------------------------------------------------------------------------
# The bias protocol


def _check_train_bias(
    table: pd.DataFrame, classes, attributes, per_class: int, conflicts: int
) -> None:
    train = table[table.split == "train"]
    counts = pd.crosstab(train.label, train.bias)
    for i, name in enumerate(classes):
        row = counts.loc[name].reindex(list(attributes), fill_value=0)
        assert row.sum() == per_class
        assert row[attributes[i]] == per_class - conflicts  # class i is aligned with attribute i
        others = row.drop(attributes[i])
        assert others.sum() == conflicts
        assert others.max() - others.min() <= 1  # spread evenly, not at random


def _check_balanced(table: pd.DataFrame, split: str, per_cell: int, classes, attributes) -> None:
    part = table[table.split == split]
    counts = pd.crosstab(part.label, part.bias)
    assert counts.shape == (len(classes), len(attributes))
    assert (counts.to_numpy() == per_cell).all()


def test_colored_digits_plants_exactly_one_percent_conflicts(digits_folder):
    table = _metadata(digits_folder)
    classes, colors = colored_digits.CLASS_NAMES, colored_digits.COLOR_NAMES
    _check_train_bias(table, classes, colors, per_class=1000, conflicts=10)
    _check_balanced(table, "valid", 10, classes, colors)
    _check_balanced(table, "test", 20, classes, colors)
    assert table.split.value_counts().to_dict() == {"train": 10000, "test": 2000, "valid": 1000}


def test_shape_scenes_plants_exactly_one_percent_conflicts(shapes_folder):
    table = _metadata(shapes_folder)
    classes, scenes = shape_scenes.CLASS_NAMES, shape_scenes.SCENE_NAMES
    _check_train_bias(table, classes, scenes, per_class=500, conflicts=5)
    _check_balanced(table, "valid", 17, classes, scenes)
    _check_balanced(table, "test", 34, classes, scenes)


@pytest.mark.parametrize("ratio", CONFLICT_RATIOS)
def test_conflicts_are_spread_round_robin_over_the_other_attributes(ratio):
    per_class = 1000
    totals = np.zeros(10, dtype=int)
    for label in range(10):
        attributes = biased_attributes(label, per_class, num_attributes=10, conflict_ratio=ratio)
        counts = np.bincount(attributes, minlength=10)
        assert counts[label] == per_class - round(per_class * ratio)
        others = np.delete(counts, label)
        assert others.max() - others.min() <= 1
        totals += counts - np.eye(10, dtype=int)[label] * counts[label]
    assert (
        totals.max() - totals.min() <= 1
    )  # across classes every colour is a conflict equally often


def test_digit_pools_are_disjoint_and_renderer_uses_train_only(digits_folder):
    table = _metadata(digits_folder)
    sources = {
        split: set(table[table.split == split].source_id.astype(int))
        for split in ("train", "valid", "test")
    }
    assert not sources["train"] & sources["valid"]
    assert not sources["train"] & sources["test"]
    assert not sources["valid"] & sources["test"]
    renderer_pool = set(np.concatenate(get_renderer("colored-digits").pool).tolist())
    assert renderer_pool == sources["train"]


def test_digit_images_carry_their_bias_colour(digits_folder):
    table = _metadata(digits_folder).sample(200, random_state=0)
    for path, bias in zip(table.path, table.bias, strict=True):
        assert _closest_digit_color(_rgb(digits_folder, path)) == bias


def test_masks_cover_the_object(shapes_folder):
    table = _metadata(shapes_folder).sample(200, random_state=0)
    for path, mask_path, color in zip(table.path, table["mask"], table.object_color, strict=True):
        image = _rgb(shapes_folder, path)
        mask = np.asarray(Image.open(shapes_folder / mask_path)) > 0
        is_object_color = (image == shape_scenes.OBJECT_COLORS[color]).all(axis=2)
        assert mask.sum() > 150  # at least a 13 px radius shape
        assert is_object_color[mask].all()
        assert is_object_color[~mask].mean() < 0.01
        m = shape_scenes.MARGIN - 1
        assert (
            not mask[:m].any()
            and not mask[-m:].any()
            and not mask[:, :m].any()
            and not mask[:, -m:].any()
        )


def test_captions_name_the_class_and_the_attribute(digits_folder, shapes_folder):
    for folder in (digits_folder, shapes_folder):
        table = _metadata(folder)
        captions = table[["caption", "caption_2", "caption_3"]]
        assert (captions.nunique(axis=1) == 3).all()  # three different phrasings per image
        assert table.caption.nunique() > 50
        for row, label, bias in zip(
            captions.itertuples(index=False), table.label, table.bias, strict=True
        ):
            for caption in row:
                words = set(re.findall(r"[a-z]+", caption))
                assert label in words and bias in words, caption


# ---------------------------------------------------------------------------------------------
# Determinism and the cache


def _fingerprint(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def small_builtins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shrink both generators ~15x: determinism does not depend on size, test time does."""
    for module, per_class in ((colored_digits, 60), (shape_scenes, 60)):
        monkeypatch.setattr(module, "TRAIN_PER_CLASS", per_class)
        monkeypatch.setattr(module, "VALID_PER_CELL", 1)
        monkeypatch.setattr(module, "TEST_PER_CELL", 1)


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_same_seed_gives_identical_bytes_and_another_seed_differs(name, small_builtins, tmp_path):
    first = ensure_builtin(name, cache_dir=tmp_path / "first", conflict_ratio=0.05, seed=0)
    again = ensure_builtin(name, cache_dir=tmp_path / "again", conflict_ratio=0.05, seed=0)
    other = ensure_builtin(name, cache_dir=tmp_path / "again", conflict_ratio=0.05, seed=1)
    assert (first / "metadata.csv").read_bytes() == (again / "metadata.csv").read_bytes()
    first_prints = _fingerprint(first)
    assert len(first_prints) > 100 and first_prints == _fingerprint(again)
    assert (first / "metadata.csv").read_bytes() != (other / "metadata.csv").read_bytes()
    other_prints = _fingerprint(other)
    differing = sum(first_prints[p] != other_prints.get(p) for p in first_prints)
    assert differing > 0.9 * len(first_prints)


def test_cached_builtin_is_reused_and_leaves_no_temp_folders(digits_folder):
    stamp = (digits_folder / "metadata.csv").stat().st_mtime_ns
    again = ensure_builtin(
        "colored-digits", cache_dir=digits_folder.parents[1], conflict_ratio=0.01, seed=0
    )
    assert again == digits_folder
    assert (digits_folder / "metadata.csv").stat().st_mtime_ns == stamp
    assert digits_folder.name == "colored-digits-rho0.01-seed0"
    assert not [p for p in digits_folder.parent.iterdir() if p.name.startswith(".")]


def test_bad_builtin_requests_are_rejected(tmp_path):
    with pytest.raises(
        ValueError, match="unknown built-in dataset 'mnist'.*colored-digits, .*shape-scenes-subtle"
    ):
        ensure_builtin("mnist", cache_dir=tmp_path, conflict_ratio=0.01, seed=0)
    with pytest.raises(ValueError, match=r"conflict_ratio 0\.03 .*0\.005, 0\.01, 0\.02, 0\.05"):
        ensure_builtin("colored-digits", cache_dir=tmp_path, conflict_ratio=0.03, seed=0)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        ensure_builtin("colored-digits", cache_dir=tmp_path, conflict_ratio=0.01, seed=-1)
    with pytest.raises(ValueError, match="unknown built-in dataset"):
        get_renderer("cifar")
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# Renderers


def _closest_digit_color(image: np.ndarray) -> str:
    """Name of the LfF colour nearest to the mean of the brightest (stroke core) pixels."""
    pixels = image.reshape(-1, 3).astype(float) / 255
    core = pixels[pixels.max(axis=1) >= 0.8 * pixels.max()]
    distances = np.linalg.norm(colored_digits.MEAN_COLORS - core.mean(axis=0), axis=1)
    return colored_digits.COLOR_NAMES[int(distances.argmin())]


def test_digit_renderer_draws_the_named_colour():
    renderer = get_renderer("colored-digits")
    assert renderer.image_size == 28
    for seed, color in enumerate(colored_digits.COLOR_NAMES):
        image = renderer.render(
            f"a handwritten seven drawn in {color}", label_name="seven", seed=seed
        )
        assert image.mode == "RGB" and image.size == (28, 28)
        assert _closest_digit_color(np.asarray(image)) == color


def _stroke_features(image: np.ndarray) -> np.ndarray:
    """Colour-blind (784,) stroke intensities scaled to a maximum of 1."""
    strokes = image.max(axis=2).astype(float)
    return (strokes / strokes.max()).ravel()


def test_digit_renderer_draws_the_named_digit(digits_folder):
    """A nearest-neighbour classifier fit on the dataset's train images reads the named digit."""
    table = _metadata(digits_folder)
    train = table[table.split == "train"].sample(2000, random_state=0)
    features = np.stack([_stroke_features(_rgb(digits_folder, p)) for p in train.path])
    classifier = KNeighborsClassifier(n_neighbors=5).fit(features, train.label)
    renderer = get_renderer("colored-digits")
    rng = np.random.default_rng(0)
    wanted, drawn = [], []
    for seed in range(60):
        label = int(rng.integers(10))
        word = (
            str(label) if seed % 2 else colored_digits.CLASS_NAMES[label]
        )  # "7" and "seven" both work
        other = colored_digits.CLASS_NAMES[(label + 3) % 10]  # the prompt wins over label_name
        image = renderer.render(
            f"the digit {word} in red on a black background", label_name=other, seed=seed
        )
        wanted.append(colored_digits.CLASS_NAMES[label])
        drawn.append(_stroke_features(np.asarray(image)))
    accuracy = (classifier.predict(np.stack(drawn)) == np.array(wanted)).mean()
    assert accuracy >= 0.85


def test_digit_renderer_falls_back_to_label_and_random_colour():
    renderer = get_renderer("colored-digits")
    with_label = renderer.render("a colourful picture", label_name="four", seed=5)
    named = renderer.render("a colourful four", label_name="one", seed=5)
    assert np.array_equal(
        np.asarray(with_label), np.asarray(named)
    )  # same class, same seed: same image
    colors = {
        _closest_digit_color(np.asarray(renderer.render("a digit", label_name="two", seed=s)))
        for s in range(30)
    }
    assert len(colors) >= 5
    with pytest.raises(ValueError, match="names no digit and label_name 'dog'"):
        renderer.render("a cute animal", label_name="dog", seed=0)


def test_renderers_are_deterministic_and_vary_with_seed():
    for name in BUILTIN_NAMES:
        renderer = get_renderer(name)
        prompt, label = (
            ("a cyan seven", "seven")
            if builtin_family(name) == "colored-digits"
            else ("a yellow star on snow", "star")
        )
        a = np.asarray(renderer.render(prompt, label_name=label, seed=11))
        b = np.asarray(get_renderer(name).render(prompt, label_name=label, seed=11))
        c = np.asarray(renderer.render(prompt, label_name=label, seed=12))
        assert np.array_equal(a, b)
        assert not np.array_equal(a, c)


def _border(image: np.ndarray) -> np.ndarray:
    """float (3,) mean colour of the 2 px frame, where the object never reaches."""
    frame = np.ones(image.shape[:2], dtype=bool)
    frame[2:-2, 2:-2] = False
    return image[frame].astype(float).mean(axis=0)


def test_shape_renderer_draws_the_named_scene(shapes_folder):
    table = _metadata(shapes_folder)
    train = table[table.split == "train"]
    names = shape_scenes.SCENE_NAMES
    centroids = np.stack(
        [
            np.mean(
                [_border(_rgb(shapes_folder, p)) for p in train[train.bias == s].path[:40]], axis=0
            )
            for s in names
        ]
    )
    renderer = get_renderer("shape-scenes")
    assert renderer.image_size == 64
    for seed in range(24):
        scene = names[seed % len(names)]
        image = np.asarray(
            renderer.render(
                f"a black heart {shape_scenes.SCENE_PHRASES[names.index(scene)][seed % 3]}",
                label_name="circle",
                seed=seed,
            )
        )
        assert image.shape == (64, 64, 3)
        assert names[int(np.linalg.norm(centroids - _border(image), axis=1).argmin())] == scene


def _shape_features(mask: np.ndarray) -> np.ndarray:
    """Rotation-, scale- and shift-invariant: fill of the enclosing circle and four Hu moments."""
    y, x = np.nonzero(mask)
    x, y = x - x.mean(), y - y.mean()

    def eta(p: int, q: int) -> float:
        return (x**p * y**q).sum() / len(x) ** (1 + (p + q) / 2)

    n20, n02, n11, n30, n03, n21, n12 = (
        eta(2, 0),
        eta(0, 2),
        eta(1, 1),
        eta(3, 0),
        eta(0, 3),
        eta(2, 1),
        eta(1, 2),
    )
    hu = [
        n20 + n02,
        np.sqrt((n20 - n02) ** 2 + 4 * n11**2),
        np.cbrt((n30 - 3 * n12) ** 2 + (3 * n21 - n03) ** 2),
        np.cbrt((n30 + n12) ** 2 + (n21 + n03) ** 2),
    ]
    fill = len(x) / (np.pi * (np.hypot(x, y).max() + 0.5) ** 2)
    return np.array([fill, *hu])


def test_shape_renderer_draws_the_named_shape_in_the_named_colour(shapes_folder):
    table = _metadata(shapes_folder)
    train = table[table.split == "train"].sample(600, random_state=0)
    features = np.stack(
        [_shape_features(np.asarray(Image.open(shapes_folder / m)) > 0) for m in train["mask"]]
    )
    names = shape_scenes.CLASS_NAMES
    centroids = np.stack([features[train.label.to_numpy() == n].mean(axis=0) for n in names])
    spread = features.std(axis=0)
    renderer = get_renderer("shape-scenes")
    correct = 0
    for seed in range(60):
        shape = names[seed % len(names)]
        image = np.asarray(
            renderer.render(f"a magenta {shape} in the grass", label_name="square", seed=seed)
        )
        mask = (image == shape_scenes.OBJECT_COLORS["magenta"]).all(axis=2)
        distances = np.linalg.norm((centroids - _shape_features(mask)) / spread, axis=1)
        correct += names[int(distances.argmin())] == shape
    assert correct >= 57
