"""Harder built-ins (issue 17): LfF's colour severities of colored-digits and the subtle variant
of shape-scenes. Each shares its family's objects, words, renderer and models, differs from it
only where its name says, and the families themselves stay byte for byte as they were."""

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from diffubias.backends import make_generator
from diffubias.builtin import (
    BUILTIN_FAMILIES,
    BUILTIN_NAMES,
    BUILTIN_TITLES,
    BUILTINS,
    LFF_COLOR_SIGMAS,
    WEAK_COLOR_SIGMAS,
    builtin_family,
    class_words,
    colored_digits,
    ensure_builtin,
    get_renderer,
    shape_scenes,
)
from diffubias.dataset_sources import load_dataset
from diffubias.shipped_models import shipped_folder
from diffubias.zoo.corpus import make_corpus

RATIO, SEED = 0.05, 0
VARIANTS = tuple(name for name in BUILTIN_NAMES if name not in BUILTIN_FAMILIES)
# Pixels and metadata.csv of each family at (RATIO, SEED) and the sizes of `small_cache`, as the
# generators wrote them before the variants existed: every benchmark number rests on these bytes.
# Decoded pixels, not PNG bytes, so that a new zlib does not trip the pin.
FAMILY_FINGERPRINTS = {
    "colored-digits": "7d9ca8de79fb809e338f39cb087990a7aec68e6dbb83c230a117cec7ceb054ff",
    "shape-scenes": "49a28b271818f42141389eb3c78a80527c16bad95746490b5721412c205f867e",
}


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every built-in at (RATIO, SEED), its generator shrunk ~15x: the planted properties do
    not depend on size, test time does."""
    cache = tmp_path_factory.mktemp("variants")
    with pytest.MonkeyPatch.context() as patch:
        for module in (colored_digits, shape_scenes):
            patch.setattr(module, "TRAIN_PER_CLASS", 60)
            patch.setattr(module, "VALID_PER_CELL", 1)
            patch.setattr(module, "TEST_PER_CELL", 1)
        for name in BUILTIN_NAMES:
            ensure_builtin(name, cache_dir=cache, conflict_ratio=RATIO, seed=SEED)
    return cache


def _folder(cache: Path, name: str) -> Path:
    return ensure_builtin(name, cache_dir=cache, conflict_ratio=RATIO, seed=SEED)  # cached


def _train(folder: Path) -> pd.DataFrame:
    table = pd.read_csv(folder / "metadata.csv", dtype=str, keep_default_na=False)
    return table[table.split == "train"]


def _pixels(folder: Path, path: str) -> np.ndarray:
    return np.asarray(Image.open(folder / path))


def _pixel_fingerprint(folder: Path) -> str:
    digest = hashlib.sha256((folder / "metadata.csv").read_bytes())
    for path in sorted(folder.rglob("*.png")):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(_pixels(folder, str(path.relative_to(folder))).tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# The registry


def test_the_families_are_unchanged(small_cache):
    for name, fingerprint in FAMILY_FINGERPRINTS.items():
        assert _pixel_fingerprint(_folder(small_cache, name)) == fingerprint, name


def test_every_builtin_has_a_family_a_title_and_the_names_say_their_parameters():
    assert set(BUILTIN_FAMILIES) <= set(BUILTIN_NAMES) and VARIANTS
    assert set(BUILTIN_TITLES) == set(BUILTIN_NAMES)
    assert len(set(BUILTIN_TITLES.values())) == len(BUILTIN_NAMES)
    for name in BUILTIN_FAMILIES:
        assert builtin_family(name) == name and BUILTINS[name].params == {}
    sigmas = {colored_digits.COLOR_SIGMA}
    for name in VARIANTS:
        assert name.startswith(builtin_family(name) + "-")
        if "color_sigma" in BUILTINS[name].params:
            sigma = BUILTINS[name].params["color_sigma"]
            assert name == f"colored-digits-sigma{sigma:g}" and f"{sigma:g}" in BUILTIN_TITLES[name]
            sigmas.add(sigma)
    # LfF's five severities, and the two weaker shortcuts beyond them
    assert sorted(sigmas, reverse=True) == [*WEAK_COLOR_SIGMAS, *LFF_COLOR_SIGMAS]
    assert 0 < BUILTINS["shape-scenes-subtle"].params["scene_strength"] < 1
    with pytest.raises(ValueError, match="unknown built-in dataset 'shape-scenes-hard'"):
        builtin_family("shape-scenes-hard")


@pytest.mark.parametrize("name", VARIANTS)
def test_a_variant_differs_from_its_family_only_in_the_image_pixels(small_cache, name):
    variant, family = _folder(small_cache, name), _folder(small_cache, builtin_family(name))
    # same samples, labels, attributes, captions, source digits and masks: the parameters take
    # no draws from the seed's stream (the scenes' tints have a stream of their own)
    assert (variant / "metadata.csv").read_bytes() == (family / "metadata.csv").read_bytes()
    files = sorted(p.relative_to(variant) for p in variant.rglob("*.png"))
    assert files == sorted(p.relative_to(family) for p in family.rglob("*.png"))
    images = [f for f in files if f.parts[0] != "masks"]
    for mask in (f for f in files if f.parts[0] == "masks"):
        assert (variant / mask).read_bytes() == (family / mask).read_bytes()
    differ = sum(not np.array_equal(_pixels(variant, f), _pixels(family, f)) for f in images)
    assert differ > 0.9 * len(images)


def test_invalid_parameters_are_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"color_sigma must be in \[0, 1\]; got -0.01"):
        colored_digits.generate(tmp_path, conflict_ratio=RATIO, seed=0, color_sigma=-0.01)
    with pytest.raises(ValueError, match=r"scene_strength must be in \(0, 1\]; got 0"):
        shape_scenes.ShapeRenderer(scene_strength=0)
    with pytest.raises(ValueError, match=r"tint_sigma must be in \[0, 1\]; got nan"):
        shape_scenes.generate(tmp_path, conflict_ratio=RATIO, seed=0, tint_sigma=float("nan"))
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# What each variant plants


def _stroke_colour(image: np.ndarray) -> np.ndarray:
    """float (3,) colour of a digit: its brightest pixel, where the stroke intensity is full."""
    pixels = image.reshape(-1, 3).astype(float) / 255
    return pixels[pixels.sum(axis=1).argmax()]


def _train_colours(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """float (N, 3) colour of each train digit, and the index of its attribute's mean colour."""
    train = _train(folder)
    colours = np.stack([_stroke_colour(_pixels(folder, p)) for p in train.path])
    return colours, np.array([colored_digits.COLOR_NAMES.index(b) for b in train.bias])


def _colour_spread(folder: Path, sigma: float) -> tuple[float, float]:
    """RMS deviation of the train digits' colours from LfF's mean colours, and what noise of
    `sigma` clamped to [0, 1] gives about those means (the weak severities clamp often)."""
    colours, attributes = _train_colours(folder)
    means = colored_digits.MEAN_COLORS[attributes]
    draws = np.random.default_rng(0).normal(size=(200, *means.shape)) * sigma
    expected = np.sqrt(np.mean((np.clip(means + draws, 0, 1) - means) ** 2))
    return float(np.sqrt(np.mean((colours - means) ** 2))), float(expected)


def test_the_colour_spread_of_the_train_digits_is_the_sigma_in_the_name(small_cache):
    names = [n for n in BUILTIN_NAMES if builtin_family(n) == "colored-digits"]
    sigmas = [BUILTINS[n].params.get("color_sigma", colored_digits.COLOR_SIGMA) for n in names]
    spreads = [_colour_spread(_folder(small_cache, n), s) for n, s in zip(names, sigmas)]
    for name, (spread, expected) in zip(names, spreads):
        # 8-bit pixels add about 0.001 of rounding to the smallest sigmas
        assert abs(spread - expected) <= 0.1 * expected + 0.001, (name, spread, expected)
    assert np.argsort([s for s, _ in spreads]).tolist() == np.argsort(sigmas).tolist()


def test_the_weak_severities_blur_the_colours_into_each_other(small_cache):
    """Beyond LfF's severities the colour stops telling the attribute for some digits: a model
    that reads only the colour fits less of train, so a biased model learns the digits too."""
    told = {}
    for sigma in (*WEAK_COLOR_SIGMAS, *LFF_COLOR_SIGMAS):
        name = "colored-digits" if sigma == colored_digits.COLOR_SIGMA else \
            f"colored-digits-sigma{sigma:g}"
        colours, attributes = _train_colours(_folder(small_cache, name))
        distances = np.linalg.norm(colours[:, None] - colored_digits.MEAN_COLORS[None], axis=2)
        told[sigma] = float((distances.argmin(axis=1) == attributes).mean())
    assert all(told[s] > 0.98 for s in LFF_COLOR_SIGMAS), told  # LfF's: the colour says it all
    assert told[0.1] < 0.99 and told[0.2] < 0.8 and told[0.2] < told[0.1], told


def _backgrounds(folder: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """Per train image, its float (M, 3) background pixels in [0, 1]; and each image's scene."""
    train = _train(folder)
    pixels = [_pixels(folder, p)[~(_pixels(folder, m) > 0)].astype(float) / 255
              for p, m in zip(train.path, train["mask"])]
    return pixels, np.array([shape_scenes.SCENE_NAMES.index(b) for b in train.bias])


def _told_apart(features: np.ndarray, scenes: np.ndarray) -> float:
    """Share of images whose `features` lie nearest their own scene's centroid."""
    centres = np.stack([features[scenes == s].mean(axis=0) for s in np.unique(scenes)])
    nearest = np.linalg.norm(features[:, None] - centres[None], axis=2).argmin(axis=1)
    return float((nearest == scenes).mean())


def test_subtle_scenes_differ_in_an_overlapping_tint_and_a_faint_texture(small_cache):
    full, scenes = _backgrounds(_folder(small_cache, "shape-scenes"))
    subtle, same_scenes = _backgrounds(_folder(small_cache, "shape-scenes-subtle"))
    np.testing.assert_array_equal(scenes, same_scenes)
    strength = BUILTINS["shape-scenes-subtle"].params["scene_strength"]
    tints = [np.stack([b.mean(axis=0) for b in backgrounds]) for backgrounds in (full, subtle)]
    textures = [np.stack([b.std(axis=0) for b in backgrounds]) for backgrounds in (full, subtle)]
    # 1. faint texture: each background varies `strength` times as much as its full scene
    ratio = textures[1].mean(axis=1) / textures[0].mean(axis=1)
    assert (abs(ratio - strength) < 0.05).all()
    # 2. slight tint: the scenes' average colours lie at most a third as far apart ...
    gaps = [max(np.linalg.norm(a - b) for a in centres for b in centres)
            for centres in ([t[scenes == s].mean(axis=0) for s in range(6)] for t in tints)]
    assert gaps[1] < gaps[0] / 3
    # ... and overlap: an image's tint no longer tells its scene, as it does for the full scenes
    assert _told_apart(tints[0], scenes) > 0.95 and _told_apart(tints[1], scenes) < 0.7
    # 3. the scene is still there to be named: its texture tells it
    assert _told_apart(textures[1], scenes) > 0.9


# ---------------------------------------------------------------------------------------------
# Everything that works for a family works for its variants


@pytest.mark.parametrize("name", VARIANTS)
def test_a_variant_loads_renders_and_shares_its_familys_words_and_models(
    small_cache, name, tmp_path, monkeypatch
):
    family = builtin_family(name)
    ds = load_dataset(f"builtin:{name}", cache_dir=small_cache, conflict_ratio=RATIO, seed=SEED)
    family_ds = load_dataset(f"builtin:{family}", cache_dir=small_cache, conflict_ratio=RATIO,
                             seed=SEED)
    assert ds.name == f"builtin:{name}" and ds.root == _folder(small_cache, name)
    assert ds.class_names == family_ds.class_names and ds.bias_names == family_ds.bias_names
    assert (ds.mask_paths is None) == (family_ds.mask_paths is None)
    assert class_words(f"builtin:{name}") == class_words(f"builtin:{family}") != {}
    for model in ("builtin-blip", "builtin-ldm", "judge"):
        monkeypatch.setenv("DIFFUBIAS_MODELS", str(tmp_path))
        for folder in ("captioner", "ldm", "judge"):
            (tmp_path / f"{family}-{folder}").mkdir(exist_ok=True)
        assert shipped_folder(model, f"builtin:{name}") == shipped_folder(model,
                                                                          f"builtin:{family}")
    renderer = make_generator("oracle-renderer", dataset_name=f"builtin:{name}",
                              class_names=ds.class_names)
    assert renderer.describe()["model"] == f"builtin:{name}"
    prompt = "a cyan seven" if family == "colored-digits" else "a black star on the water"
    drawn = np.asarray(get_renderer(name).render(prompt, label_name=ds.class_names[0], seed=3))
    as_family = np.asarray(get_renderer(family).render(prompt, label_name=ds.class_names[0],
                                                       seed=3))
    assert drawn.shape == as_family.shape and not np.array_equal(drawn, as_family)
    if family == "shape-scenes":  # the same star on faded water, not on the full one
        strength = BUILTINS[name].params["scene_strength"]
        water = ~(as_family == shape_scenes.OBJECT_COLORS["black"]).all(axis=2)
        assert (drawn[~water] == as_family[~water]).all()
        ratio = drawn[water].astype(float).std(axis=0) / as_family[water].astype(float).std(axis=0)
        assert (abs(ratio - strength) < 0.05).all()


def test_the_zoo_trains_families_only():
    with pytest.raises(ValueError, match="unknown domain 'shape-scenes-subtle'.*colored-digits"):
        make_corpus("shape-scenes-subtle", per_cell=1, seed=0)
