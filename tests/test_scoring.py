import numpy as np
import pytest

from diffubias.images import InMemoryImages
from diffubias.models import build_classifier
from diffubias.scoring import detection_metrics, k_for_classes, score_samples, top_k_per_class
from diffubias.training import TrainConfig, train_classifier


def test_top_k_per_class_picks_highest_losses_of_each_class():
    losses = np.array([0.1, 5.0, 0.2, 3.0, 0.3, 9.0, 0.4, 0.5])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    assert top_k_per_class(losses, labels, k=2).tolist() == [1, 3, 5, 7]
    assert top_k_per_class(losses, labels, k=1, highest=False).tolist() == [0, 4]


def test_k_as_fraction_count_and_clamp():
    labels = np.array([0] * 100 + [1] * 10)
    assert k_for_classes(labels, 0.05) == {0: 5, 1: 1}  # at least one per class
    assert k_for_classes(labels, 20) == {0: 20, 1: 10}  # clamped to the class size
    assert k_for_classes(labels, 20.0) == {0: 20, 1: 10}
    for bad in (0, -1, 2.5, "3", True):
        with pytest.raises(ValueError, match="k must|whole number"):
            k_for_classes(labels, bad)


def test_ties_break_deterministically():
    losses = np.ones(6)
    labels = np.zeros(6, dtype=int)
    assert top_k_per_class(losses, labels, k=3).tolist() == [0, 1, 2]


def test_detection_metrics_on_a_known_ranking():
    # class 0: conflicts at 0, 1 (highest losses); class 1: conflict at 5 ranked second
    losses = np.array([9, 8, 1, 1, 1, 5, 6, 1, 1, 1], dtype=float)
    labels = np.array([0] * 5 + [1] * 5)
    conflict = np.zeros(10, dtype=bool)
    conflict[[0, 1, 5]] = True
    m = detection_metrics(losses, labels, conflict, k=2)
    assert m.n_conflicts == 3 and m.n_selected == 4
    assert m.precision_at_k == pytest.approx(3 / 4)
    assert m.recall_at_k == pytest.approx(1.0)
    assert m.r_precision == pytest.approx(2 / 3)  # class 1's single slot goes to sample 6
    assert 0.5 < m.auroc < 1.0
    # over the whole loss order the conflicts rank 1st, 2nd and 4th: precisions 1, 1 and 3/4
    assert m.average_precision == pytest.approx((1 + 1 + 3 / 4) / 3)
    assert m.to_dict()["average_precision"] == m.average_precision


def test_gce_biased_model_ranks_planted_conflicts_on_top(planted_bias):
    """Planted signal: colour explains 97% of labels; the conflicts must score highest."""
    train = InMemoryImages(planted_bias["images"], planted_bias["labels"])
    model = build_classifier(num_classes=2, image_size=12, width=8, seed=0)
    train_classifier(model, train, valid=None,
                     config=TrainConfig(epochs=4, batch_size=32, lr=3e-3, loss="gce",
                                        selection="last"))
    losses = score_samples(model, train, batch_size=128)
    assert losses.shape == (600,) and losses.dtype == np.float32
    m = detection_metrics(losses, planted_bias["labels"].numpy(), planted_bias["is_conflict"],
                          k=9)
    assert m.auroc > 0.95
    assert m.r_precision >= 0.8
