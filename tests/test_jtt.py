"""JTT (`diffubias.baselines.jtt`, with its error set from `diffubias.baselines.error_set`) on
the planted-bias folder: the ERM model's errors are the planted conflicts, and exactly they are
upsampled, as JTT's paper and code do."""

from __future__ import annotations

import numpy as np
import pytest

from diffubias.baselines.error_set import identify_errors
from diffubias.baselines.jtt import jtt
from diffubias.baselines.shared import BaselineOptions, SharedStages
from diffubias.prepared import train_evaluated
from planted_methods import planted_folder, planted_run  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_jtt_error_set_holds_the_planted_conflicts_and_is_upsampled(planted_run):
    cfg, data, is_conflict = planted_run
    shared = SharedStages(data, cfg, BaselineOptions(jtt_upweight=7))
    result = jtt(data, cfg, options=shared.options, shared=shared)
    errors = shared.error_set().errors
    assert errors[is_conflict].all()
    assert errors.sum() < 3 * is_conflict.sum()  # mostly the conflicts, not everything
    # each error appears 7 times in the retraining set: once as itself, 6 times added
    n_train = len(errors)
    assert result.n_train == n_train + 6 * errors.sum()
    assert result.info["n_upsampled"] == 6 * errors.sum()
    positions = shared.error_set().positions
    assert np.array_equal(np.unique(result.added_from), np.sort(positions[errors]))
    assert (np.bincount(result.added_from)[positions[errors]] == 6).all()
    assert result.weights is None  # no loss weights: more optimizer steps, as in the paper
    assert result.info["error_set_size"] == errors.sum()
    with pytest.raises(ValueError, match="whole number"):
        BaselineOptions(jtt_upweight=2.5)


def test_tuned_jtt_picks_the_grid_point_best_on_validation(planted_run, monkeypatch):
    """T and lambda chosen on the validation split: by worst-group accuracy (the validation
    split's bias labels, JTT's protocol), or by worst-class accuracy with no bias label."""
    from diffubias.baselines.jtt import TUNING_GRID, jtt_tuned, jtt_tuned_blind

    cfg, data, _ = planted_run
    shared = SharedStages(data, cfg)
    tuned = jtt_tuned(data, cfg, shared=shared)
    grid = tuned.info["grid"]
    assert len(grid) == len(TUNING_GRID["epochs_T"]) * len(TUNING_GRID["upweight"])
    best = max(grid, key=lambda g: g["worst-group"])
    assert tuned.info["validation_score"] == best["worst-group"]
    assert (tuned.info["epochs_T"], tuned.info["upweight"]) in {
        (g["epochs_T"], g["upweight"]) for g in grid if g["worst-group"] == best["worst-group"]}
    assert tuned.info["selected_by"] == "validation worst-group accuracy"
    assert tuned.n_train == len(data.split("train")[0]) + tuned.info["n_upsampled"]

    monkeypatch.setattr(data, "bias_of", lambda positions: None)  # no bias labels anywhere
    with pytest.raises(ValueError, match="use jtt-tuned-blind"):
        jtt_tuned(data, cfg)

    # the blind variant scores the same candidates: with the shared stages it trains none again
    import diffubias.baselines.jtt as jtt_module

    trained = []
    monkeypatch.setattr(jtt_module, "train_evaluated",
                        lambda *a, **k: trained.append(1) or train_evaluated(*a, **k))
    monkeypatch.setattr(jtt_module, "identify_errors",
                        lambda *a, **k: trained.append(1) or identify_errors(*a, **k))
    blind = jtt_tuned_blind(data, cfg, shared=shared)
    assert trained == []
    assert blind.info["selected_by"] == "validation worst-class accuracy"
    assert blind.info["validation_score"] == max(g["worst-class"] for g in blind.info["grid"])
    assert blind.seconds == pytest.approx(tuned.seconds)  # each counts every candidate's time
    if (blind.info["epochs_T"], blind.info["upweight"]) == (tuned.info["epochs_T"],
                                                            tuned.info["upweight"]):
        assert blind.training is tuned.training
