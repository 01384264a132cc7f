import numpy as np
import pytest

from diffubias.evaluation import aligned_bias_per_class, conflict_mask, group_accuracy


def test_aligned_bias_is_the_class_majority():
    labels = np.array([0, 0, 0, 1, 1, 1])
    bias = np.array([2, 2, 1, 0, 0, -1])
    assert aligned_bias_per_class(labels, bias) == {0: 2, 1: 0}
    assert conflict_mask(labels, bias, {0: 2, 1: 0}).tolist() == [0, 0, 1, 0, 0, 0]


def test_group_accuracies_weight_groups_equally():
    # group (0,0): 4 samples all right; group (0,1): 1 sample wrong
    labels = np.array([0, 0, 0, 0, 0])
    bias = np.array([0, 0, 0, 0, 1])
    preds = np.array([0, 0, 0, 0, 1])
    acc = group_accuracy(preds, labels, bias, {0: 0})
    assert acc.overall == pytest.approx(0.8)
    assert acc.aligned == 1.0 and acc.conflicting == 0.0
    assert acc.unbiased == pytest.approx(0.5)
    assert acc.n_conflicting == 1


def test_unknown_bias_gives_overall_only():
    acc = group_accuracy(np.array([1, 0]), np.array([1, 1]), None, None)
    assert acc.overall == 0.5 and acc.unbiased is None
