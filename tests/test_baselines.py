"""The registry of methods (`diffubias.baselines`), running them by name
(`diffubias.baselines.run`) with their shared stages (`diffubias.baselines.shared`), and the
benchmark's core (bench/debias.py), on the planted-bias folder: the registry is the one list,
loads no torch, and a method registered at run time trains as a baseline through the debias
stage; every method reports the same metrics; the benchmark runs end to end and returns rows of
the documented shape. Each method's own behaviour is tested in test_<its module>.py."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from planted_methods import (  # noqa: F401
    PlantedGenerator,
    planted_config,
    planted_folder,
    planted_run,
)

import diffubias.baselines
from diffubias.baselines import (
    METHODS,
    Method,
    baseline_methods,
    baseline_names,
    get_method,
    register,
)
from diffubias.baselines.run import run_baselines, run_method
from diffubias.baselines.shared import (
    DEFAULT_OPTIONS,
    BaselineOptions,
    SharedStages,
    method_result,
    shared_stages_for,
)
from diffubias.config import BASELINES, RunConfig
from diffubias.decoding import read_images
from diffubias.prepared import PreparedDataset, train_evaluated
from diffubias.stages.debias import train_debiased

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- the registry ---------------------------------------------------------------------------------

def test_the_registry_lists_every_method_and_which_are_baselines():
    assert tuple(METHODS) == ("vanilla", "lff", "jtt", "dfa", "jtt-tuned", "jtt-tuned-blind",
                              "oversample-topk", "diffubias",
                              "diffubias-no-filter", "diffubias-unanchored",
                              "diffubias-checked", "diffubias-oracle", "group-balanced")
    assert baseline_names() == ("lff", "jtt", "oversample-topk", "diffubias-no-filter")
    assert BASELINES == baseline_names()  # the config's list is the registry's
    assert [m.name for m in baseline_methods()] == list(baseline_names())
    assert {m.name for m in METHODS.values() if m.generates} == {
        "diffubias", "diffubias-no-filter", "diffubias-unanchored", "diffubias-checked",
        "diffubias-oracle"}
    # the upper bound is never a baseline the app or the CLI offers
    assert [m.name for m in METHODS.values() if m.upper_bound] == ["diffubias-oracle",
                                                                   "group-balanced"]
    for method in METHODS.values():
        function = method.resolve()
        assert callable(function) and function.__module__ == method.target.split(":")[0]
        assert method.label and method.summary and "\n" not in method.summary


def test_no_function_of_the_package_is_named_like_it():
    package = Path(diffubias.baselines.__file__).parent
    modules = [diffubias.baselines, *(importlib.import_module(f"diffubias.baselines.{m.name}")
                                      for m in pkgutil.iter_modules([str(package)]))]
    assert len(modules) > 5
    for module in modules:
        names = {name for name, _ in inspect.getmembers(module, inspect.isfunction)}
        assert "diffubias" not in names, module.__name__


def test_importing_the_registry_and_the_config_loads_no_torch():
    code = ("import sys, diffubias.baselines, diffubias.config; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout.strip()
    assert out == "False"


def test_bad_entries_and_unknown_names_are_named():
    with pytest.raises(ValueError, match="unknown method 'groupdro'.*'lff'"):
        get_method("groupdro")
    with pytest.raises(ValueError, match="'module:function'.*'groupdro'"):
        Method("groupdro", "GroupDRO", "worst-group loss", generates=False, baseline=True,
               target="groupdro")
    with pytest.raises(ValueError, match="already registered"):
        register(METHODS["lff"])
    missing = Method("groupdro", "GroupDRO", "worst-group loss", generates=False, baseline=True,
                     target="diffubias.baselines.lff:groupdro")
    with pytest.raises(ValueError, match="diffubias.baselines.lff has no function 'groupdro'"):
        missing.resolve()


# -- a method added by one registry entry and its function ----------------------------------------

def doubled_loss(data: PreparedDataset, config: RunConfig, *,
                 options: BaselineOptions = DEFAULT_OPTIONS, shared: SharedStages | None = None,
                 progress=None):
    """A throw-away method: vanilla with every sample's loss doubled."""
    shared_stages_for(shared, data, config, options)
    n = len(data.split("train")[0])
    training = train_evaluated(data, config, desc="doubled", progress=progress,
                               sample_weights=torch.full((n,), 2.0))
    return method_result("doubled-loss", data, config, training, seconds=training.seconds,
                         info={"weight": 2.0}, weights=np.full(n, 2.0))


@pytest.fixture
def registered_method():
    """`doubled_loss` registered as a baseline for one test, by its entry alone."""
    method = register(Method("doubled-loss", "doubled loss", "ERM with every loss doubled",
                             generates=False, baseline=True,
                             target=f"{__name__}:doubled_loss"))
    yield method
    del METHODS[method.name]


def test_a_registered_method_trains_as_a_baseline_with_no_other_edit(planted_run,
                                                                     registered_method):
    cfg, data, _ = planted_run
    assert "doubled-loss" in baseline_names()
    cfg = replace(cfg, baselines=("doubled-loss",))  # the config asks the registry
    seen = []
    results = run_baselines(cfg.baselines, data, cfg, before_each=seen.append)
    assert seen == ["doubled-loss"] and set(results) == {"doubled-loss"}
    result = results["doubled-loss"]
    assert result.info == {"weight": 2.0} and (result.weights == 2.0).all()
    assert result.n_train == len(data.split("train")[0])
    positions, _ = data.split("train")  # four of them stand in for the generated images
    images = read_images(data.ds, positions[:4], size=data.image_size)
    labels = torch.from_numpy(data.ds.labels[positions[:4]].astype(np.int64))
    debiasing = train_debiased(data, cfg, images, labels, train_vanilla=False)
    assert list(debiasing.models) == ["debiased", "doubled-loss"]
    trained = debiasing.models["doubled-loss"]
    assert trained.info["weight"] == 2.0 and trained.test.unbiased is not None


def test_an_unregistered_baseline_is_refused_by_the_config():
    with pytest.raises(ValueError, match=r"unknown baselines \['doubled-loss'\]; choose from lff"):
        RunConfig(baselines=("doubled-loss",))


# -- running methods by name ----------------------------------------------------------------------

def test_every_method_reports_the_same_metrics(planted_run):
    cfg, data, _ = planted_run
    shared = SharedStages(data, cfg, generator=PlantedGenerator(data.ds.class_names))
    for name in METHODS:
        if METHODS[name].upper_bound and METHODS[name].generates:  # built-ins only: below
            with pytest.raises(ValueError, match="needs a built-in dataset"):
                run_method(name, data, cfg, shared=shared)
            continue
        result = run_method(name, data, cfg, shared=shared).to_dict()
        assert result["method"] == name
        assert set(result["test"]) >= {"overall", "aligned", "conflicting", "unbiased"}
        assert json.dumps(result)  # JSON-able


class CopyingGenerator:
    """Returns the training image the prompt came from: every image is a copy."""

    backend = "copying"

    def __init__(self, data):
        self.data = data

    def describe(self):
        return {"backend": self.backend, "model": None, "params": {}}

    def generate_items(self, items, *, progress=None):
        from PIL import Image

        pixels = read_images(self.data.ds, [item.prompt.source for item in items],
                             size=self.data.image_size)
        for item, image in zip(items, pixels, strict=True):
            yield item, Image.fromarray(image.permute(1, 2, 0).numpy())


def test_drop_leaves_failing_images_out_of_the_baselines_training_too(planted_run):
    """image_checks 'drop' applies to the DiffuBias methods as to the CLI and the app: copies
    of the training images are all left out, and a run with nothing left says so."""
    cfg, data, _ = planted_run
    kept = run_method("diffubias", data, cfg,
                      shared=SharedStages(data, cfg, generator=CopyingGenerator(data)))
    assert kept.info["n_generated"] > 0  # propose (the default): advice only
    dropping = replace(cfg, image_checks="drop")
    with pytest.raises(ValueError, match="every generated image failed the checks"):
        run_method("diffubias", data, dropping,
                   shared=SharedStages(data, dropping, generator=CopyingGenerator(data)))
    fine = run_method("diffubias", data, dropping, shared=SharedStages(
        data, dropping, generator=PlantedGenerator(data.ds.class_names)))
    assert fine.info["n_generated"] == kept.info["n_generated"]
    assert 0 < fine.info["n_trained_generated"] < fine.info["n_generated"]
    assert kept.info["n_trained_generated"] == kept.info["n_generated"]


class ColourOnlyCaptioner:
    """Captions each sample by its colour alone, never naming its class: every kept prompt
    needs anchoring."""

    backend = "colour-only"

    def caption(self, ds, positions):
        from diffubias.captions import Caption

        return [Caption(int(p), f"a bar on {ds.bias[p]}", self.backend) for p in positions]


class RecordingGenerator(PlantedGenerator):
    """The planted generator, keeping every prompt text it was asked to draw."""

    def __init__(self, class_names):
        super().__init__(class_names)
        self.texts: list[str] = []

    def generate_items(self, items, *, progress=None):
        self.texts += [item.prompt.text for item in items]
        yield from super().generate_items(items, progress=progress)


def test_the_ablations_share_the_run_and_change_only_their_setting(planted_run):
    """`diffubias-unanchored` sends the captions as they are and `diffubias-checked` trains
    only on images passing the checks; both reuse the run's detection and captions, and the
    checked one its generated images too (the generator draws each final prompt once)."""
    cfg, data, _ = planted_run
    generator = RecordingGenerator(data.ds.class_names)
    shared = SharedStages(data, cfg, captioner=ColourOnlyCaptioner(), generator=generator)
    method = run_method("diffubias", data, cfg, shared=shared)
    n_images = len(generator.texts)
    assert method.info["n_anchored"] == method.info["n_prompts"] > 0
    assert all(text.endswith(("a vertical", "a horizontal")) for text in generator.texts)

    checked = run_method("diffubias-checked", data, cfg, shared=shared)
    assert len(generator.texts) == n_images  # the same images, not drawn again
    assert checked.info["image_checks"] == "drop" and method.info["image_checks"] == "propose"
    assert checked.info["n_generated"] == method.info["n_generated"] == n_images
    assert checked.info["n_trained_generated"] <= checked.info["n_generated"]

    unanchored = run_method("diffubias-unanchored", data, cfg, shared=shared)
    assert unanchored.info["n_anchored"] == 0
    assert unanchored.info["n_prompts"] == method.info["n_prompts"]
    new = generator.texts[n_images:]
    assert len(new) == n_images and all(text.startswith("a bar on") and "vertical" not in text
                                        and "horizontal" not in text for text in new)
    assert shared.seconds.keys() >= {"detection", "captions", "generation"}
    with pytest.raises(ValueError, match="with_settings takes only"):
        shared.with_settings(top_k=3)


def test_bad_names_and_mismatched_shared_stages_are_named(planted_run, tmp_path):
    cfg, data, _ = planted_run
    with pytest.raises(ValueError, match="unknown method 'groupdro'.*'lff'"):
        run_method("groupdro", data, cfg)
    with pytest.raises(ValueError, match="unknown method 'groupdro'.*'lff'"):
        run_baselines(("vanilla", "groupdro"), data, cfg, before_each=pytest.fail)  # before any
    with pytest.raises(ValueError, match="another dataset, config or options"):
        run_method("vanilla", data, replace(cfg, seed=1), shared=SharedStages(data, cfg))
    with pytest.raises(ValueError, match="jtt_upweight"):
        BaselineOptions(jtt_upweight=0.5)


# -- the benchmark's core -------------------------------------------------------------------------

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
    base = planted_config(planted_folder, tmp_path, biased_epochs=1, debias_epochs=1)
    results = bench.run_grid([str(planted_folder)], ratios=(0.01,), seeds=(0,), base=base,
                             generator_factory=lambda data: PlantedGenerator(data.ds.class_names))
    rows = [r for r in results["rows"] if r["role"] == "method"]
    assert sorted(r["method"] for r in rows) == sorted(
        m for m in METHODS if not (METHODS[m].upper_bound and METHODS[m].generates))
    # the oracle reads a built-in's own renderer: on a folder it is skipped, with the reason
    assert [(s["method"], "built-in" in s["reason"]) for s in results["skipped"]] == [
        ("diffubias-oracle", True)]
    assert {(r["info"]["generator"], r["info"]["oracle"]) for r in rows
            if METHODS[r["method"]].generates} == {("planted", False)}
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


def test_the_oracle_upper_bound_shares_detection_and_uses_the_builtin_backends(
        builtin_cache, tmp_path):
    """`diffubias-oracle` reuses the GCE detection of `diffubias` but captions and draws with
    the built-in's oracles, and says so in its row; the real method's row names its models."""
    cfg = RunConfig(dataset="builtin:colored-digits", conflict_ratio=0.01, seed=0,
                    cache_dir=str(builtin_cache), width=8, biased_epochs=1, debias_epochs=1,
                    top_k=2, captions_per_image=1, images_per_prompt=1, batch_size=256)
    data = PreparedDataset.load(cfg)
    shared = SharedStages(data, cfg)
    oracle = run_method("diffubias-oracle", data, cfg, shared=shared)
    child = shared.with_backends(captioner="metadata", generator="oracle-renderer")
    assert child.detection() is shared.detection()  # trained once
    assert child is shared.with_backends(captioner="metadata", generator="oracle-renderer")
    assert oracle.info["captioner"] == "metadata"
    assert oracle.info["generator"] == "oracle-renderer" and oracle.info["oracle"] is True
    assert oracle.info["n_generated"] == 20  # 2 candidates x 10 classes x 1 caption x 1 image
    real = run_method("diffubias", data, cfg, shared=shared)
    assert (real.info["captioner"], real.info["generator"], real.info["oracle"]) == (
        "builtin-blip", "builtin-ldm", False)


def test_a_win_needs_a_paired_interval_above_zero():
    """The benchmark's verdict: the paired 95 % t interval over seeds, not the mean alone."""
    bench = _load_bench()
    mean, low, high = bench.paired_interval([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0) and high - mean == pytest.approx(4.3027 / 3 ** 0.5, 1e-3)
    assert np.isnan(bench.paired_interval([5.0])[1])

    def rows(method, values):
        return [{"role": "method", "dataset": "d", "conflict_ratio": r, "seed": s,
                 "method": method, "unbiased": v} for (r, s), v in values.items()]
    ours = {(0.01, 0): 0.50, (0.01, 1): 0.52, (0.01, 2): 0.54,  # +10 points on every seed
            (0.05, 0): 0.60, (0.05, 1): 0.40, (0.05, 2): 0.55}  # up and down: unclear
    theirs = {(0.01, 0): 0.40, (0.01, 1): 0.42, (0.01, 2): 0.44,
              (0.05, 0): 0.50, (0.05, 1): 0.50, (0.05, 2): 0.50}
    [row] = [r for r in bench.standing(rows("diffubias", ours) + rows("vanilla", theirs))
             if r["baseline"] == "vanilla"]
    assert (row["wins"], row["losses"], row["unclear"]) == (1, 0, 1)
    assert row["cells"][0]["low"] > 0 > row["cells"][1]["low"]


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
    base = planted_config(planted_folder, tmp_path, biased_epochs=1, debias_epochs=1)
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
