"""LfF (`diffubias.baselines.lff`) on the planted-bias folder: its relative-difficulty weights
single out the planted conflicts."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from diffubias.baselines.lff import lff
from planted_methods import planted_folder, planted_run  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_lff_weights_the_planted_conflicts_more_than_aligned_samples(planted_run):
    cfg, data, is_conflict = planted_run
    # LfF's weights part only once the debiased model starts fitting the conflicts
    result = lff(data, replace(cfg, debias_epochs=10))
    weights = result.weights
    assert weights.shape == is_conflict.shape
    assert weights[is_conflict].mean() > 3 * weights[~is_conflict].mean()
    assert weights[is_conflict].min() > np.median(weights[~is_conflict])
    assert result.test.unbiased is not None and result.training.best_epoch >= 1


def test_lff_initialises_its_two_models_independently(planted_run):
    """As in LfF: the biased model does not start from the debiased model's weights (which are
    the run's, shared by every compared model), yet is seeded."""
    import torch

    from diffubias.baselines.lff import biased_initialisation
    from diffubias.prepared import new_classifier

    cfg, data, _ = planted_run
    biased = biased_initialisation(data, cfg).state_dict()
    debiased = new_classifier(data, cfg).state_dict()
    weights = [k for k, v in biased.items() if v.dtype.is_floating_point and v.dim() > 1]
    assert weights and not any(torch.equal(biased[k], debiased[k]) for k in weights)
    again = biased_initialisation(data, cfg).state_dict()
    assert all(torch.equal(biased[k], again[k]) for k in biased)
