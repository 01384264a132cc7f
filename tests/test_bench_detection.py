"""bench/detection.py's own logic, without training: the colour oracle's upper bound falls as
the colours overlap, a stored run reads with the config it ran on, a run is extended only with
rankers that mean what they meant, and the confirmation pools seeds by pairing them."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

from diffubias.builtin import colored_digits
from diffubias.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def detection():
    bench_dir = str(ROOT / "bench")
    if bench_dir not in sys.path:
        sys.path.insert(0, bench_dir)
    return importlib.import_module("detection")


def test_the_colour_oracle_is_perfect_on_distinct_colours_and_not_where_they_overlap(
        detection, tmp_path, monkeypatch):
    monkeypatch.setattr(colored_digits, "TRAIN_PER_CLASS", 120)
    monkeypatch.setattr(colored_digits, "VALID_PER_CELL", 1)
    monkeypatch.setattr(colored_digits, "TEST_PER_CELL", 1)
    config = RunConfig(cache_dir=str(tmp_path))
    strong = detection.colour_ceiling("builtin:colored-digits-sigma0.002", 0.05, 0,
                                      config=config)
    weak = detection.colour_ceiling("builtin:colored-digits-sigma0.2", 0.05, 0, config=config)
    assert strong["average_precision"] == 1.0 and strong["r_precision"] == 1.0
    # at sigma 0.2 many aligned digits look conflicting: the bound itself is far from perfect
    assert weak["average_precision"] < 0.9 and weak["r_precision"] < 0.9, weak
    assert weak["auroc"] > 0.8  # but the colour still says much
    assert weak["dataset"] == "colored-digits-sigma0.2" and weak["seed"] == 0


def test_a_run_from_before_biased_width_reads_as_the_classifier_width(detection):
    stored = RunConfig().to_dict()
    del stored["biased_width"]
    assert detection.run_base({"config": stored}).biased_width == stored["width"] == 16
    assert detection.run_base({"config": RunConfig(biased_width=6).to_dict()}).biased_width == 6


def test_the_earlier_rankers_keep_the_width_they_ran_at(detection):
    for name, overrides in detection.VARIANTS.items():
        assert "biased_width" in overrides and "biased_epochs" in overrides, name
    assert detection.VARIANTS["gce"]["biased_width"] == 16
    # what a stored run called `gce` (the then default epochs and width) is today's `gce`
    old = {k: v for k, v in RunConfig(biased_epochs=3).to_dict().items() if k != "biased_width"}
    base = detection.run_base({"config": old})
    assert base.with_overrides(ranker="gce") == base.with_overrides(**detection.VARIANTS["gce"])


def test_adding_datasets_refuses_a_ranker_that_means_something_else_now(detection):
    results = {"meta": {"config": RunConfig().to_dict(), "datasets": ["builtin:shape-scenes"],
                        "ratios": [0.01], "seeds": [0],
                        "variants": {"gce": {"ranker": "gce", "biased_epochs": 5}}},
               "rows": []}
    with pytest.raises(ValueError, match=r"rankers \['gce'\] are defined otherwise now"):
        detection.add_datasets(results, ["builtin:colored-digits-sigma0.2"], jobs=1,
                               threads=1, command="test")


def test_the_confirmation_pools_seeds_and_pairs_them(detection):
    def row(seed, ranker, ap):
        return {"dataset": "d", "conflict_ratio": 0.01, "seed": seed, "ranker": ranker,
                "average_precision": ap}

    grid = [row(0, "gce", 0.5), row(0, "gce-narrow", 0.9), row(0, "committee", 0.1)]
    extra = [row(5, "gce", 0.6), row(5, "gce-narrow", 0.5), row(6, "gce", 0.2),
             row(6, "gce-narrow", 0.8)]
    tables = importlib.import_module("detection_tables")
    lines = tables._confirmation_lines({"rows": extra, "passes": [
        {"command": "python bench/detection.py --confirm d", "wall_s": 60.0}]}, grid)
    (table_row,) = [line for line in lines if line.startswith("| d |")]
    cells = [c.strip() for c in table_row.strip("|").split("|")]
    assert cells[2:4] == ["gce-narrow", "3"]
    assert cells[-1] == "2 of 3"  # seed 5 went the other way
    diffs = np.array([0.4, -0.1, 0.6])
    assert cells[-2].startswith(f"{100 * diffs.mean():.1f} [")
    assert detection._seeds("0,5-7") == (0, 5, 6, 7)
