"""A prepared dataset and the one schedule every evaluated model gets."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from diffubias.config import RunConfig
from diffubias import prepared
from diffubias.prepared import PreparedDataset, new_classifier, train_evaluated
from tiny_models import write_tiny_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory, one_torch_thread):
    root = write_tiny_dataset(tmp_path_factory.mktemp("pets"))
    config = RunConfig(dataset=str(root), cache_dir=str(tmp_path_factory.mktemp("cache")),
                       device="cpu", width=4, debias_epochs=2, batch_size=8)
    return PreparedDataset.load(config), config


def test_summary_says_what_the_dataset_holds(data):
    data, _ = data
    summary = data.summary()
    assert summary["split_sizes"] == {"train": 12, "valid": 4, "test": 4}
    assert summary["class_names"] == ["cat", "dog"] and summary["has_bias"]
    assert summary["captions_per_sample"] == 2 and summary["n_skipped"] == 0
    positions = data.ds.indices("train")
    assert data.conflicts(positions).sum() == 2  # the last train sample of each class


def test_without_a_test_split_evaluation_falls_back_to_valid(tmp_path):
    root = write_tiny_dataset(tmp_path / "pets")
    with open(root / "metadata.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] != "test"]
    with open(root / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    data = PreparedDataset.load(RunConfig(dataset=str(root), cache_dir=str(tmp_path / "c")))
    positions, _ = data.evaluation_split()
    assert np.array_equal(positions, data.ds.indices("valid"))


def test_same_seed_same_start_and_added_images_join_the_training_set(data):
    data, config = data
    first, again = new_classifier(data, config), new_classifier(data, config)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(),
                                                  again.state_dict().values()))
    _, train = data.split("train")
    added = (train.images[:3].clone(), train.labels[:3].clone())
    seen = []
    trained = train_evaluated(data, config, desc="test", added=added,
                              progress=lambda f, m: seen.append(f))
    assert len(trained.history) == config.debias_epochs and seen and seen[-1] == 1.0
    accuracy = prepared.test_accuracy(data, trained.model, config)  # (not collected as a test)
    assert 0.0 <= accuracy.overall <= 1.0 and accuracy.unbiased is not None
