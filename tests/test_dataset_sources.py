"""Picking a source: bad sources raise a ValueError that names the problem, and built-ins load
through the same loader with their names, captions and masks."""

import numpy as np
import pytest

from diffubias.dataset_sources import load_dataset
from diffubias.decoding import infer_image_size, read_images, read_masks
from tests.dataset_files import save_png


def test_bad_sources_raise(tmp_path):
    (tmp_path / "empty").mkdir()
    save_png(tmp_path / "loose/1.png")
    with pytest.raises(ValueError, match="no metadata.csv and no class sub-folders"):
        load_dataset(tmp_path / "loose", cache_dir=tmp_path / "cache")
    with pytest.raises(
        ValueError, match="is not a folder, a .zip file, or one of builtin:colored-digits"
    ):
        load_dataset(tmp_path / "nowhere", cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="unknown built-in dataset 'mnist'"):
        load_dataset("builtin:mnist", cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match=r"valid_fraction must be in \(0, 1\); got 1.5"):
        load_dataset(tmp_path / "empty", cache_dir=tmp_path / "cache", valid_fraction=1.5)
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.zip is not a readable zip file"):
        load_dataset(tmp_path / "bad.zip", cache_dir=tmp_path / "cache")


def test_builtins_load_with_names_captions_and_masks(builtin_cache):
    digits = load_dataset(
        "builtin:colored-digits", cache_dir=builtin_cache, conflict_ratio=0.01, seed=0
    )
    assert (
        digits.name == "builtin:colored-digits"
        and digits.num_classes == 10
        and len(digits.bias_names) == 10
    )
    assert len(digits.indices("train")) == 10000 and digits.skipped == ()
    assert all(len(c) == 3 for c in digits.captions[:100])
    assert infer_image_size(digits) == 28 and infer_image_size(digits, max_size=16) == 16
    sevens = digits.indices("train")[
        digits.labels[digits.indices("train")] == digits.class_names.index("seven")
    ]
    colours, counts = np.unique(digits.bias[sevens], return_counts=True)
    assert (
        digits.bias_names[colours[counts.argmax()]] == "purple"
    )  # digit i is aligned with colour i
    shapes = load_dataset("builtin:shape-scenes", cache_dir=builtin_cache)
    assert shapes.class_names == ("circle", "cross", "heart", "square", "star", "triangle")
    masks = read_masks(shapes, [0, 1, 2], size=64)
    images = read_images(shapes, [0, 1, 2], size=64)
    assert images.shape == (3, 3, 64, 64) and masks.shape == (3, 64, 64)
    assert 0.03 < masks.mean() < 0.5
