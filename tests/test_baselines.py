"""Baselines on a tiny planted-bias folder dataset (colour predicts the class except for 18
planted conflicts): each method finds or weights the planted conflicts the way it should, and the
benchmark's core runs end to end and returns rows of the documented shape."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_bar_images
from diffubias.baselines import (METHODS, BaselineOptions, SharedStages, jtt, lff,
                                 oversample_top_k, run_method)
from diffubias.config import RunConfig
from diffubias.prepared import PreparedDataset

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ("vertical", "horizontal")  # make_bar_images' class 0 and 1
COLOURS = ("red", "green")  # conftest.COLOURS order


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """These models are tiny; on a shared 2-core machine two threads per process make them
    ~10x slower (measured), so this module runs on one and then restores the setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _write_split(root: Path, split: str, images, labels, colours) -> list[str]:
    (root / split).mkdir(parents=True)
    rows = []
    for i, (image, label, colour) in enumerate(zip(images, labels, colours)):
        path = f"{split}/{i:04d}.png"
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / path)
        shape, colour_name = SHAPES[int(label)], COLOURS[int(colour)]
        rows.append(f"{path},{split},{shape},{colour_name},a {shape} bar on {colour_name},"
                    f"a {colour_name} square with a {shape} line,the of and")
    return rows


@pytest.fixture(scope="module")
def planted_folder(tmp_path_factory, planted_bias) -> Path:
    """The planted set in the project's folder format, with bias labels and three captions per
    image (the last one all stop words, so the text filter has something to drop)."""
    root = tmp_path_factory.mktemp("planted")
    p = planted_bias
    rows = _write_split(root, "train", p["images"], p["labels"], p["bias"])
    # the unbiased set alternates class every sample and colour every 100: pairs of samples
    # alternate between valid and test, so both hold every (class, colour) cell
    for split, half in (("valid", 0), ("test", 1)):
        take = np.flatnonzero(np.arange(len(p["test_labels"])) // 2 % 2 == half)
        rows += _write_split(root, split, p["test_images"][take], p["test_labels"][take],
                             p["test_bias"][take])
    (root / "metadata.csv").write_text(
        "path,split,label,bias,caption,caption_2,caption_3\n" + "\n".join(rows) + "\n")
    return root


class PlantedGenerator:
    """Weight-free stand-in for a diffusion model: draws the bar of the prompt's class on the
    background colour the prompt names."""

    backend = "planted"

    def __init__(self, class_names: tuple[str, ...]):
        self.class_names = class_names

    def describe(self):
        return {"backend": self.backend, "model": None, "params": {}}

    def generate_items(self, items, *, progress=None):
        for item in items:
            rng = np.random.default_rng(item.seed)
            shape = SHAPES.index(self.class_names[item.prompt.label])
            colour = next((i for i, c in enumerate(COLOURS) if c in item.prompt.text.split()), 0)
            tile = make_bar_images(np.full(1, shape), np.full(1, colour), rng)[0]
            yield item, Image.fromarray(tile.permute(1, 2, 0).numpy())


def _config(folder: Path, tmp_path: Path, **changes) -> RunConfig:
    cfg = RunConfig(dataset=str(folder), cache_dir=str(tmp_path / "cache"), device="cpu",
                    width=8, batch_size=64, lr=3e-3, biased_epochs=2, debias_epochs=2, top_k=9,
                    captions_per_image=3, images_per_prompt=2)
    return replace(cfg, **changes)


@pytest.fixture(scope="module")
def planted_run(planted_folder, tmp_path_factory):
    cfg = _config(planted_folder, tmp_path_factory.mktemp("run"))
    data = PreparedDataset.load(cfg)
    positions, _ = data.split("train")
    return cfg, data, data.conflicts(positions)


def test_lff_weights_the_planted_conflicts_more_than_aligned_samples(planted_run):
    cfg, data, is_conflict = planted_run
    # LfF's weights part only once the debiased model starts fitting the conflicts
    result = lff(data, replace(cfg, debias_epochs=10))
    weights = result.weights
    assert weights.shape == is_conflict.shape
    assert weights[is_conflict].mean() > 3 * weights[~is_conflict].mean()
    assert weights[is_conflict].min() > np.median(weights[~is_conflict])
    assert result.test.unbiased is not None and result.training.best_epoch >= 1


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


def test_diffubias_variants_share_detection_and_differ_only_in_prompts(planted_run):
    cfg, data, is_conflict = planted_run
    shared = SharedStages(data, cfg, generator=PlantedGenerator(data.ds.class_names))
    with_filter = run_method("diffubias", data, cfg, shared=shared)
    without = run_method("diffubias-no-filter", data, cfg, shared=shared)
    n_candidates = len(shared.detection().candidates)
    # the all-stop-word caption is dropped by the filter and kept without it
    assert with_filter.info["n_prompts"] == 2 * n_candidates
    assert without.info["n_prompts"] == 3 * n_candidates
    assert without.info["n_generated"] == 3 * n_candidates * cfg.images_per_prompt
    assert set(with_filter.added_from) <= set(shared.detection().candidates)
    assert shared.seconds.keys() >= {"detection", "captions", "generation_and_training"}
    assert with_filter.seconds > shared.seconds["detection"]


def test_every_method_reports_the_same_metrics(planted_run):
    cfg, data, _ = planted_run
    shared = SharedStages(data, cfg, generator=PlantedGenerator(data.ds.class_names))
    for name in METHODS:
        result = run_method(name, data, cfg, shared=shared).to_dict()
        assert result["method"] == name
        assert set(result["test"]) >= {"overall", "aligned", "conflicting", "unbiased"}
        assert json.dumps(result)  # JSON-able


def test_bad_names_and_mismatched_shared_stages_are_named(planted_run, tmp_path):
    cfg, data, _ = planted_run
    with pytest.raises(ValueError, match="unknown method 'dfa'.*'lff'"):
        run_method("dfa", data, cfg)
    with pytest.raises(ValueError, match="another dataset, config or options"):
        run_method("vanilla", data, replace(cfg, seed=1), shared=SharedStages(data, cfg))
    with pytest.raises(ValueError, match="jtt_upweight"):
        BaselineOptions(jtt_upweight=0.5)


def _load_bench():
    """bench/debias.py as the module `debias`, importable by name from bench/ on sys.path, as
    its spawned worker processes (which get this sys.path) need."""
    bench_dir = str(ROOT / "bench")
    if bench_dir not in sys.path:
        sys.path.insert(0, bench_dir)
    return importlib.import_module("debias")


def test_benchmark_smoke_rows_json_and_report(planted_folder, tmp_path):
    """The CI-sized benchmark: one dataset, one seed, every method, tables and plots."""
    bench = _load_bench()
    base = _config(planted_folder, tmp_path, biased_epochs=1, debias_epochs=1)
    results = bench.run_grid([str(planted_folder)], ratios=(0.01,), seeds=(0,), base=base,
                             generator_factory=lambda data: PlantedGenerator(data.ds.class_names))
    rows = [r for r in results["rows"] if r["role"] == "method"]
    assert sorted(r["method"] for r in rows) == sorted(METHODS)
    for row in rows:
        assert {"method", "dataset", "conflict_ratio", "seed", "unbiased", "conflicting",
                "aligned", "overall"} <= set(row)
        assert row["conflict_ratio"] == pytest.approx(18 / 600)  # measured on a folder
    assert {r["ranking"] for r in results["detection"]} == {"gce", "erm", "jtt-error-set"}
    path = bench.write_json(results, tmp_path / "benchmarks.json")
    assert json.loads(path.read_text())["rows"] == json.loads(json.dumps(results["rows"]))
    images = bench.draw_plots(results, tmp_path / "img")
    assert images and all(p.stat().st_size > 1000 for p in images)
    text = bench.render_debias(results, images, image_root=tmp_path, command="pytest")
    assert "| method |" in text and "diffubias" in text


def test_benchmark_reference_scoring_loop_matches_batched_scoring(planted_run):
    """The efficiency section's stand-in for the reference code scores exactly like ours."""
    bench = _load_bench()
    from diffubias.prepared import new_classifier
    from diffubias.scoring import score_samples

    cfg, data, _ = planted_run
    positions, train = data.split("train")
    model = new_classifier(data, cfg)
    reference = bench.score_like_reference(model, data.ds, positions[:50], size=data.image_size)
    ours = score_samples(model, train)[:50]
    assert np.allclose(reference, ours, atol=1e-5)


def test_benchmark_worker_processes_give_the_one_process_results(planted_folder, tmp_path):
    """`--jobs 2` runs settings in spawned workers; the rows are those one process gets."""
    bench = _load_bench()
    base = _config(planted_folder, tmp_path, biased_epochs=1, debias_epochs=1)
    methods = ("vanilla", "oversample-topk")
    one = bench.run_grid([str(planted_folder)], ratios=(0.01,), seeds=(0, 1), base=base,
                         methods=methods)
    two = bench.run_grid([str(planted_folder)], ratios=(0.01,), seeds=(0, 1), base=base,
                         methods=methods, jobs=2, checkpoint=tmp_path / "partial.json")

    def accuracies(results):
        return sorted((r["seed"], r["method"], r["unbiased"], r["overall"])
                      for r in results["rows"])

    assert accuracies(two) == accuracies(one)
    assert [s["seed"] for s in two["settings"]] == [0, 1]
    assert two["meta"]["jobs"] == 2
    assert len(json.loads((tmp_path / "partial.json").read_text())["settings"]) == 2
