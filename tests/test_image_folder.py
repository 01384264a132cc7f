"""The ImageFolder layout: a reproducible, seeded stratified split, and the folders that cannot be
split raise."""

from pathlib import Path

import numpy as np
import pytest

from diffubias.dataset_sources import load_dataset
from tests.dataset_files import save_png


def _image_folder(root: Path, counts: dict[str, int]) -> Path:
    for name, count in counts.items():
        for i in range(count):
            save_png(root / name / f"{i:03d}.png", color=(i, 0, 0))
    return root


def test_image_folder_gets_a_seeded_stratified_split(tmp_path):
    root = _image_folder(tmp_path / "animals", {"cat": 20, "dog": 30, "eel": 10})
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / ".DS_Store").write_bytes(b"")
    save_png(root / "dog" / "nested" / "deep.png")
    ds = load_dataset(root, cache_dir=tmp_path / "cache", seed=3)
    assert ds.name == "animals" and ds.class_names == ("cat", "dog", "eel")
    assert len(ds.paths) == 61 and ds.bias is None and ds.mask_paths is None
    assert ds.captions == ((),) * 61 and len(ds.indices("test")) == 0
    assert [s.path for s in ds.skipped] == ["cat/notes.txt"]
    valid = ds.indices("valid")
    assert (
        np.abs(np.bincount(ds.labels[valid]) - 0.2 * np.array([20, 31, 10])).max() < 1
    )  # 20 % of each class
    assert all(ds.class_names[ds.labels[i]] == ds.paths[i].split("/")[0] for i in range(61))
    again = load_dataset(root, cache_dir=tmp_path / "cache", seed=3)
    other = load_dataset(root, cache_dir=tmp_path / "cache", seed=4)
    assert np.array_equal(again.split, ds.split) and not np.array_equal(other.split, ds.split)
    half = load_dataset(root, cache_dir=tmp_path / "cache", valid_fraction=0.5)
    assert len(half.indices("valid")) == 31  # sklearn rounds the valid share up


def test_image_folder_problems_raise(tmp_path):
    only = _image_folder(tmp_path / "one", {"cat": 5})
    with pytest.raises(ValueError, match="only one class folder with images \\('cat'\\)"):
        load_dataset(only, cache_dir=tmp_path / "cache")
    tiny = _image_folder(tmp_path / "tiny", {"cat": 5, "dog": 1})
    with pytest.raises(ValueError, match="'dog' \\(1\\) need at least 2 images"):
        load_dataset(tiny, cache_dir=tmp_path / "cache")
