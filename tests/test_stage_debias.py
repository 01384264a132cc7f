"""The debias stage: vanilla and debiased models from one schedule, the generated images the only
difference, every model evaluated and described the same way."""

from __future__ import annotations

import json

import pytest
import torch

from diffubias.config import RunConfig
from diffubias.decoding import read_images
from diffubias.prepared import PreparedDataset
from diffubias.stages.debias import train_debiased
from tiny_models import write_tiny_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory, one_torch_thread):
    root = write_tiny_dataset(tmp_path_factory.mktemp("pets"))
    config = RunConfig(dataset=str(root), cache_dir=str(tmp_path_factory.mktemp("cache")),
                       device="cpu", width=4, debias_epochs=2, batch_size=8)
    return PreparedDataset.load(config), config


def _conflict_copies(data, copies=3):
    """The training split's conflicts repeated: what a perfect generator would add."""
    positions, _ = data.split("train")
    conflicts = positions[data.conflicts(positions)]
    images = read_images(data.ds, conflicts, size=data.image_size).repeat(copies, 1, 1, 1)
    labels = torch.from_numpy(data.ds.labels[conflicts]).repeat(copies)
    return images, labels


def test_vanilla_and_debiased_share_everything_but_the_generated_images(data):
    data, config = data
    images, labels = _conflict_copies(data)
    seen = []
    result = train_debiased(data, config, images, labels, before_each=seen.append)
    assert seen == ["vanilla", "debiased"] and list(result.models) == seen
    vanilla, debiased = result.models["vanilla"], result.models["debiased"]
    n_train = len(data.split("train")[0])
    assert (vanilla.n_train, vanilla.n_generated) == (n_train, 0)
    assert (debiased.n_train, debiased.n_generated) == (n_train + len(labels), len(labels))
    assert (result.n_train, result.n_generated) == (n_train, len(labels))
    for model in result.models.values():
        metrics = model.metrics(config)
        assert json.dumps(metrics) and metrics["epochs"] == 2
        assert set(metrics["test"]) >= {"overall", "aligned", "conflicting", "unbiased"}
        assert len(metrics["history"]) == 2


def test_without_vanilla_only_the_debiased_model_is_trained(data):
    data, config = data
    images, labels = _conflict_copies(data, copies=1)
    result = train_debiased(data, config, images, labels, train_vanilla=False)
    assert list(result.models) == ["debiased"]


def test_an_unknown_baseline_is_refused_before_any_training():
    with pytest.raises(ValueError, match="unknown baselines"):
        RunConfig(baselines=("magic",))
