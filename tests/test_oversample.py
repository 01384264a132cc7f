"""Oversampled top-K (`diffubias.baselines.oversample`) on the planted-bias folder: it repeats
exactly the candidates, the detected ones or the ones a person kept."""

from __future__ import annotations

import numpy as np
import pytest

from diffubias.baselines.oversample import oversample_top_k
from diffubias.baselines.shared import BaselineOptions, SharedStages
from planted_methods import planted_folder, planted_run  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_oversampling_repeats_exactly_the_candidates(planted_run):
    cfg, data, _ = planted_run
    shared = SharedStages(data, cfg, BaselineOptions(oversample_copies=5))
    result = oversample_top_k(data, cfg, options=shared.options, shared=shared)
    candidates = shared.detection().candidates
    repeated, counts = np.unique(result.added_from, return_counts=True)
    assert np.array_equal(repeated, np.sort(candidates)) and (counts == 5).all()
    assert result.n_train == len(data.split("train")[0]) + 5 * len(candidates)
    assert result.info["copies_per_candidate"] == 5


def test_reviewed_candidates_replace_the_detection_and_skip_its_training(planted_run):
    """The app passes the candidates a person kept: oversampling repeats exactly those, and no
    GCE model is trained for it."""
    cfg, data, _ = planted_run
    positions, _ = data.split("train")
    reviewed = np.asarray(positions[:7])
    shared = SharedStages(data, cfg, BaselineOptions(oversample_copies=3), candidates=reviewed)
    result = oversample_top_k(data, cfg, options=shared.options, shared=shared)
    repeated, counts = np.unique(result.added_from, return_counts=True)
    assert np.array_equal(repeated, np.sort(reviewed)) and (counts == 3).all()
    assert "detection" not in shared.seconds
    assert result.info["candidates"] == "given" and result.info["n_candidates"] == 7
