"""DiffuBias as a compared method (`diffubias.baselines.generative`) on the planted-bias folder,
with a weight-free generator: the two variants share the detection and captions and differ only
in the prompts the text filter keeps."""

from __future__ import annotations

from dataclasses import replace

import pytest

from diffubias.baselines.generative import diffubias_method, diffubias_no_filter
from diffubias.baselines.run import run_method
from diffubias.baselines.shared import SharedStages
from planted_methods import PlantedGenerator, planted_folder, planted_run  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_diffubias_variants_share_detection_and_differ_only_in_prompts(planted_run):
    cfg, data, is_conflict = planted_run
    shared = SharedStages(data, cfg, generator=PlantedGenerator(data.ds.class_names))
    with_filter = diffubias_method(data, cfg, shared=shared)
    without = diffubias_no_filter(data, cfg, shared=shared)
    n_candidates = len(shared.detection().candidates)
    # the all-stop-word caption is dropped by the filter and kept without it
    assert with_filter.info["n_prompts"] == 2 * n_candidates
    assert without.info["n_prompts"] == 3 * n_candidates
    assert without.info["n_generated"] == 3 * n_candidates * cfg.images_per_prompt
    assert set(with_filter.added_from) <= set(shared.detection().candidates)
    assert shared.seconds.keys() >= {"detection", "captions", "generation_and_training"}
    assert with_filter.seconds > shared.seconds["detection"]
    assert (with_filter.method, without.method) == ("diffubias", "diffubias-no-filter")


def test_the_claim_debiasing_beats_vanilla_on_the_conflicting_samples(planted_run):
    """The product's main claim on planted data (colour decides the class but for 18 planted
    conflicts; the generator draws the prompted class on the prompted colour): the model trained
    with the generated conflicts gets the test split's conflicting samples right where vanilla,
    trained on the same real images with the same schedule, follows the colour."""
    cfg, data, _ = planted_run
    cfg = replace(cfg, debias_epochs=10, images_per_prompt=4)
    shared = SharedStages(data, cfg, generator=PlantedGenerator(data.ds.class_names))
    vanilla = run_method("vanilla", data, cfg, shared=shared)
    debiased = run_method("diffubias", data, cfg, shared=shared)
    assert debiased.test.conflicting >= vanilla.test.conflicting + 0.5
    assert debiased.test.unbiased >= vanilla.test.unbiased + 0.25
    # the Grad-CAM claim, on larger planted images with object masks: test_claims.py
