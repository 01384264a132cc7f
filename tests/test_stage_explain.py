"""The explain stage: which samples are explained, and both models' maps on the same images."""

from __future__ import annotations

import numpy as np
import pytest

from diffubias.config import RunConfig
from diffubias.prepared import PreparedDataset, new_classifier
from diffubias.stages.explain import cam_positions, explain_models
from tiny_models import write_tiny_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = write_tiny_dataset(tmp_path_factory.mktemp("pets"))
    config = RunConfig(dataset=str(root), cache_dir=str(tmp_path_factory.mktemp("cache")),
                       device="cpu", width=4)
    return PreparedDataset.load(config), config


def test_sample_sets_are_seeded_samples_of_the_right_pool(data):
    data, config = data
    test = data.evaluation_split()[0]
    conflicting = cam_positions(data, config)
    assert set(conflicting) == set(test[data.conflicts(test)])  # 1 per class in the test split
    assert list(cam_positions(data, config, "all")) == sorted(test)
    small = config.with_overrides(cam_samples=1)
    picked = cam_positions(data, small, "candidates", [5, 3, 9])
    assert len(picked) == 1 and picked[0] in (3, 5, 9)
    assert np.array_equal(picked, cam_positions(data, small, "candidates", [5, 3, 9]))
    with pytest.raises(ValueError, match="unknown sample set 'best'"):
        cam_positions(data, config, "best")


def test_both_models_are_explained_on_the_same_images(data):
    data, config = data
    positions = cam_positions(data, config, "all")
    model = new_classifier(data, config)
    explained = explain_models(data, config, model, model, positions)
    assert explained.images.shape[0] == len(positions) == len(explained.comparison.before.cams)
    assert np.array_equal(explained.comparison.before.cams, explained.comparison.after.cams)
    assert explained.mass_summary() == {"object_mass_before": None, "object_mass_after": None,
                                        "object_area": None}  # no masks in this dataset
    with pytest.raises(ValueError, match="no samples"):
        explain_models(data, config, model, model, np.array([], dtype=np.int64))
