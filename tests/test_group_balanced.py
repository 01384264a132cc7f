"""The group-aware upper bound (`diffubias.baselines.group_balanced`) on the planted-bias folder:
every (class, bias) group weighs the same, the planted conflicts most per sample, it beats
vanilla on the conflicting test samples, and it refuses a dataset without bias labels."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from planted_methods import planted_folder, planted_run  # noqa: F401, F811

from diffubias.baselines import METHODS
from diffubias.baselines.group_balanced import group_balanced, group_weights
from diffubias.baselines.vanilla import vanilla

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_every_group_weighs_the_same():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    bias = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    weights = group_weights(labels, bias)
    assert weights.mean() == pytest.approx(1.0)
    for group in ((0, 0), (0, 1), (1, 1), (1, 0)):
        mask = (labels == group[0]) & (bias == group[1])
        assert weights[mask].sum() == pytest.approx(len(labels) / 4)


def test_the_upper_bound_weights_the_conflicts_and_beats_vanilla(planted_run):
    cfg, data, is_conflict = planted_run
    cfg = replace(cfg, debias_epochs=10)
    bound = group_balanced(data, cfg)
    assert METHODS["group-balanced"].upper_bound and not METHODS["group-balanced"].baseline
    assert bound.weights[is_conflict].min() > 10 * bound.weights[~is_conflict].max()
    assert bound.test.conflicting >= vanilla(data, cfg).test.conflicting + 0.3


def test_without_bias_labels_it_says_it_needs_them(planted_run, monkeypatch):
    cfg, data, _ = planted_run
    monkeypatch.setattr(data, "bias_of", lambda positions: None)
    with pytest.raises(ValueError, match="needs the bias attribute"):
        group_balanced(data, cfg)
