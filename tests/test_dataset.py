"""The loaded dataset: positions into it are checked, and so is the size images are read at."""

import numpy as np
import pytest
import torch

from diffubias.dataset import as_positions
from diffubias.dataset_sources import load_dataset
from diffubias.decoding import read_images
from tests.dataset_files import TWO_CLASSES, simple_dataset


def test_positions_and_sizes_are_checked(tmp_path):
    ds = load_dataset(simple_dataset(tmp_path / "d", TWO_CLASSES), cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="position 3 is out of range; expected 0 <= position < 3"):
        read_images(ds, [0, 3], size=8)
    with pytest.raises(ValueError, match="size must be a positive integer; got 0"):
        read_images(ds, [0], size=0)
    assert read_images(ds, [], size=8).shape == (0, 3, 8, 8)
    assert as_positions(torch.tensor([2, 0]), 3).tolist() == [2, 0]
    with pytest.raises(ValueError, match="1-D sequence of integers"):
        as_positions(np.array([0.5]), 3)
