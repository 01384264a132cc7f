"""JTT (`diffubias.baselines.jtt`, with its error set from `diffubias.baselines.error_set`) on
the planted-bias folder: the ERM model's errors are the planted conflicts, and exactly they are
up-weighted."""

from __future__ import annotations

import numpy as np
import pytest

from diffubias.baselines.jtt import jtt
from diffubias.baselines.shared import BaselineOptions, SharedStages
from planted_methods import planted_folder, planted_run  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_jtt_error_set_holds_the_planted_conflicts_and_is_up_weighted(planted_run):
    cfg, data, is_conflict = planted_run
    shared = SharedStages(data, cfg, BaselineOptions(jtt_upweight=7))
    result = jtt(data, cfg, options=shared.options, shared=shared)
    errors = shared.error_set().errors
    assert errors[is_conflict].all()
    assert errors.sum() < 3 * is_conflict.sum()  # mostly the conflicts, not everything
    assert set(np.unique(result.weights)) == {1.0, 7.0}
    assert np.array_equal(result.weights == 7.0, errors)
    assert result.info["error_set_size"] == errors.sum()
