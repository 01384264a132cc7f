"""The diffusers backend on a tiny random Stable Diffusion pipeline loaded by path: shapes,
labels and seeds carried, identical outputs for identical seeds, manifest rows, resume after an
interruption, batch halving on (injected) CUDA out-of-memory, safety-checker drops, the CLI, and
2-process sharding under `accelerate launch` with no duplicates or gaps."""

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput
from PIL import Image

from diffubias import cli
from diffubias.backends import make_generator
from diffubias.config import RunConfig
from diffubias.diffusion import DiffusersGenerator, DiffusionSettings, load_diffusers_generator
from diffubias.generated_folder import (GenerationOutput, generate_to_folder, load_generated,
                                        read_manifest)
from diffubias.generation import OracleRenderer, item_seed, plan_images, prompt_id
from diffubias.pipeline import read_prompts
from diffubias.run_folder import Run
from diffubias.stages.generate import MemorySink, generate_images
from diffubias.text_filter import Prompt
from tiny_models import build_tiny_sd, make_run_folder, write_tiny_dataset

CLASSES = ("cat", "dog")
PROMPTS = [Prompt("a cat on a green background", 0, 3, ("green",)),
           Prompt("a dog on a red background", 1, 12, ("red",)),
           Prompt("a photo of a green cat", 0, 5, ("green",))]
FAST = DiffusionSettings(steps=2, batch_size=2)
# diffusers 0.42 DPM-Solver builds sigmas with np.array(tensor, copy=False) semantics
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    return str(build_tiny_sd(tmp_path_factory.mktemp("tiny-sd")))


@pytest.fixture(scope="session")
def generator(tiny_sd):
    return load_diffusers_generator(tiny_sd, settings=FAST, device="cpu")


class WrappedPipe:
    """Delegates to a real pipeline; `hook(call_number, prompts)` may raise or return flags for
    the safety checker."""

    def __init__(self, pipe, hook):
        self._pipe, self._hook, self.batch_sizes = pipe, hook, []

    def __call__(self, **kwargs):
        self.batch_sizes.append(len(kwargs["prompt"]))
        flags = self._hook(len(self.batch_sizes), kwargs["prompt"])
        out = self._pipe(**kwargs)
        if flags is not None:
            return StableDiffusionPipelineOutput(images=out.images, nsfw_content_detected=flags)
        return out

    def __getattr__(self, name):
        return getattr(self._pipe, name)


def _wrapped(generator, hook, logs=None, batch_size=2):
    settings = DiffusionSettings(steps=2, batch_size=batch_size)
    return DiffusersGenerator(WrappedPipe(generator.pipe, hook), generator.model, settings,
                              log=(logs.append if logs is not None else print))


def _generate(generator, prompts, *, images_per_prompt=1, seed=0):
    """(item, image) pairs through the generate stage, in memory."""
    sink = MemorySink()
    generate_images(generator, prompts, RunConfig(images_per_prompt=images_per_prompt, seed=seed),
                    class_names=CLASSES, sink=sink)
    return sink.images


def _to_folder(generator, prompts, out_dir, *, images_per_prompt, seed, **kwargs):
    return generate_to_folder(generator, prompts, out_dir,
                              RunConfig(images_per_prompt=images_per_prompt, seed=seed), **kwargs)


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


# -- planning ----------------------------------------------------------------------------------

def test_plan_is_stable_under_reordering_and_collapses_repeats():
    plan = plan_images(PROMPTS, images_per_prompt=2, seed=0)
    assert len(plan) == 6 and len({it.key for it in plan}) == 6
    assert [it.image_index for it in plan] == [0, 1] * 3
    reordered = plan_images([PROMPTS[2], PROMPTS[0], PROMPTS[0]], images_per_prompt=2, seed=0)
    assert {it.key for it in reordered} == {it.key for it in plan if it.prompt != PROMPTS[1]}
    assert plan[0].seed == item_seed(0, prompt_id(PROMPTS[0]), 0)
    assert {it.seed for it in plan_images(PROMPTS, images_per_prompt=2, seed=1)}.isdisjoint(
        {it.seed for it in plan})
    with pytest.raises(ValueError, match="no prompts"):
        plan_images([], images_per_prompt=1, seed=0)


def test_prompt_id_depends_on_text_source_and_label():
    base = prompt_id(PROMPTS[0])
    assert base == prompt_id(Prompt(PROMPTS[0].text, 0, 3, ()))  # matched words do not count
    assert len({base, prompt_id(Prompt(PROMPTS[0].text, 1, 3, ())),
                prompt_id(Prompt(PROMPTS[0].text, 0, 4, ())),
                prompt_id(Prompt("another text", 0, 3, ()))}) == 4


# -- the pipeline ------------------------------------------------------------------------------

def test_generate_carries_labels_sources_seeds_and_provenance(generator, tiny_sd):
    images = _generate(generator, PROMPTS, images_per_prompt=2, seed=0)
    assert len(images) == 6
    assert [(it.prompt.label, it.prompt.source) for it, _ in images] == [
        (p.label, p.source) for p in PROMPTS for _ in range(2)]
    assert all(image.size == (32, 32) and image.mode == "RGB" for _, image in images)
    assert len({it.seed for it, _ in images}) == 6
    described = generator.describe()
    assert described["backend"] == "diffusers" and described["model"] == tiny_sd
    params = described["params"]
    assert params["steps"] == 2 and params["scheduler"] == "DPMSolverMultistepScheduler"
    assert params["pipeline"] == "StableDiffusionPipeline" and params["dtype"] == "float32"


def test_identical_seeds_give_identical_images_whatever_the_batch(generator):
    first = _generate(generator, PROMPTS[:2], images_per_prompt=2, seed=7)
    again = _generate(generator, PROMPTS[:2], images_per_prompt=2, seed=7)
    assert all(np.array_equal(np.asarray(a), np.asarray(b))
               for (_, a), (_, b) in zip(first, again))
    one_by_one = DiffusersGenerator(generator.pipe, generator.model,
                                    DiffusionSettings(steps=2, batch_size=1))
    singles = _generate(one_by_one, PROMPTS[:2], images_per_prompt=2, seed=7)
    # the same latents per seed; batching may move a pixel by float rounding at most
    assert max(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b)).max()
               for (_, a), (_, b) in zip(first, singles)) <= 2
    other = _generate(generator, PROMPTS[:1], images_per_prompt=1, seed=8)
    assert not np.array_equal(np.asarray(other[0][1]), np.asarray(first[0][1]))


def test_size_and_negative_prompt_reach_the_pipeline(generator):
    g = DiffusersGenerator(generator.pipe, generator.model, DiffusionSettings(
        steps=2, width=48, height=40, negative_prompt="blurry"))
    images = _generate(g, PROMPTS[:1], images_per_prompt=1, seed=0)
    assert images[0][1].size == (48, 40) and g.describe()["params"]["negative_prompt"] == "blurry"


@pytest.mark.parametrize("bad", [{"steps": -1}, {"batch_size": -1}, {"width": 30},
                                 {"scheduler": "euler"}])
def test_settings_are_validated(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        DiffusionSettings(**bad)


def test_offload_needs_cuda_and_unknown_models_fail_fast(tiny_sd, monkeypatch):
    with pytest.raises(ValueError, match="CUDA"):
        load_diffusers_generator(tiny_sd, device="cpu", offload="model")
    with pytest.raises(ValueError, match="offload"):
        load_diffusers_generator(tiny_sd, device="cpu", offload="disk")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="nobody-here/no-such-pipeline.*HF_HOME.*local folder"):
        make_generator("nobody-here/no-such-pipeline", dataset_name="x", class_names=CLASSES)


# -- the resumable folder ----------------------------------------------------------------------

def test_folder_has_one_manifest_row_per_image_and_loads_resized(generator, tmp_path):
    out = _to_folder(generator, PROMPTS, tmp_path / "gen", images_per_prompt=2, seed=0,
                             class_names=CLASSES)
    assert isinstance(out, GenerationOutput)
    assert (out.n_images, out.n_new, out.n_existing, out.n_blocked) == (6, 6, 0, 0)
    rows = read_manifest(out.manifest)
    planned = plan_images(PROMPTS, images_per_prompt=2, seed=0)
    assert [(r["prompt_id"], int(r["seed"])) for r in rows] == [(it.prompt_id, it.seed)
                                                                 for it in planned]
    for row, it in zip(rows, planned):
        assert row["prompt"] == it.prompt.text and int(row["source"]) == it.prompt.source
        assert int(row["label"]) == it.prompt.label
        assert row["label_name"] == CLASSES[it.prompt.label]
        assert row["file"].startswith(CLASSES[it.prompt.label] + "/")
        assert json.loads(row["params"])["steps"] == 2 and row["model"] == generator.model
        assert Image.open(out.manifest.parent / row["file"]).size == (32, 32)  # original kept
    images, labels = load_generated(out.manifest, size=16)  # the dataset's resolution
    assert images.shape == (6, 3, 16, 16) and images.dtype == torch.uint8
    assert labels.tolist() == [0, 0, 1, 1, 0, 0]
    assert not list((tmp_path / "gen").rglob("*.tmp"))


def test_interrupted_run_resumes_without_duplicates(generator, tmp_path):
    def power_cut(call, prompts):
        if call == 2:
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        _to_folder(_wrapped(generator, power_cut), PROMPTS, tmp_path / "gen",
                           images_per_prompt=2, seed=0, class_names=CLASSES)
    assert len(list((tmp_path / "gen" / "rows").glob("*.json"))) == 2  # the first batch

    resumed_gen = _wrapped(generator, lambda call, prompts: None)
    resumed = _to_folder(resumed_gen, PROMPTS, tmp_path / "gen", images_per_prompt=2,
                                 seed=0, class_names=CLASSES)
    assert (resumed.n_existing, resumed.n_new, resumed.n_images) == (2, 4, 6)
    assert resumed_gen.pipe.batch_sizes == [2, 2]
    rows = read_manifest(resumed.manifest)
    assert len({(r["prompt_id"], r["seed"]) for r in rows}) == 6
    assert len(list((tmp_path / "gen").glob("*/*.png"))) == 6

    straight = _to_folder(generator, PROMPTS, tmp_path / "straight", images_per_prompt=2,
                                  seed=0, class_names=CLASSES)
    for a, b in zip(rows, read_manifest(straight.manifest)):
        assert a["file"] == b["file"]
        assert np.array_equal(_pixels(resumed.manifest.parent / a["file"]),
                              _pixels(straight.manifest.parent / b["file"]))

    # a complete rerun generates nothing; a lost row (crash between PNG and row) is redone
    assert _to_folder(resumed_gen, PROMPTS, tmp_path / "gen", images_per_prompt=2,
                              seed=0, class_names=CLASSES).n_new == 0
    next((tmp_path / "gen" / "rows").glob("*.json")).unlink()
    again = _to_folder(resumed_gen, PROMPTS, tmp_path / "gen", images_per_prompt=2,
                               seed=0, class_names=CLASSES)
    assert (again.n_new, again.n_images) == (1, 6)
    # more images per prompt keeps the existing ones
    more = _to_folder(resumed_gen, PROMPTS, tmp_path / "gen", images_per_prompt=3,
                              seed=0, class_names=CLASSES)
    assert (more.n_existing, more.n_new, more.n_images) == (6, 3, 9)


def test_other_settings_start_the_folder_afresh(generator, tmp_path):
    _to_folder(generator, PROMPTS[:1], tmp_path / "gen", images_per_prompt=1, seed=0,
                       class_names=CLASSES)
    logs = []
    other = DiffusersGenerator(generator.pipe, generator.model,
                               DiffusionSettings(steps=3, batch_size=2))
    out = _to_folder(other, PROMPTS[:1], tmp_path / "gen", images_per_prompt=1, seed=0,
                             class_names=CLASSES, log=logs.append)
    assert (out.n_existing, out.n_new) == (0, 1)
    assert any("afresh" in m for m in logs)


def test_cuda_out_of_memory_halves_the_batch_and_says_so(generator, tmp_path):
    def small_gpu(call, prompts):
        if len(prompts) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")

    logs = []
    g = _wrapped(generator, small_gpu, logs, batch_size=4)
    out = _to_folder(g, PROMPTS, tmp_path / "gen", images_per_prompt=2, seed=0,
                             class_names=CLASSES)
    assert out.n_images == 6
    assert g.pipe.batch_sizes == [4, 2, 1, 1, 1, 1, 1, 1]  # halved twice, then kept at 1
    assert sum("halving the batch to" in m for m in logs) == 2

    def no_gpu(call, prompts):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")

    with pytest.raises(ValueError, match="even with 1 image"):
        _generate(_wrapped(generator, no_gpu, []), PROMPTS[:1], images_per_prompt=1, seed=0)


def test_safety_checker_blackouts_are_dropped_counted_and_not_redone(generator, tmp_path):
    def checker(call, prompts):
        return ["dog" in p for p in prompts]

    g = _wrapped(generator, checker)
    out = _to_folder(g, PROMPTS, tmp_path / "gen", images_per_prompt=2, seed=0,
                             class_names=CLASSES)
    assert (out.n_images, out.n_blocked) == (4, 2)
    assert all(r["label_name"] == "cat" for r in read_manifest(out.manifest))
    again = _to_folder(g, PROMPTS, tmp_path / "gen", images_per_prompt=2, seed=0,
                               class_names=CLASSES)
    assert (again.n_new, again.n_blocked, again.n_images) == (0, 2, 4)


def test_oracle_renderer_goes_through_the_same_writer(tmp_path):
    from diffubias.builtin.colored_digits import CLASS_NAMES

    demo = OracleRenderer("colored-digits", tuple(CLASS_NAMES))
    prompts = [Prompt(f"a {name} digit on a red background", i, i, ())
               for i, name in enumerate(CLASS_NAMES[:3])]
    out = _to_folder(demo, prompts, tmp_path / "gen", images_per_prompt=2, seed=0,
                             class_names=CLASS_NAMES)
    assert (out.backend, out.n_images, out.n_new) == ("oracle-renderer", 6, 6)
    rows = read_manifest(out.manifest)
    assert [int(r["label"]) for r in rows] == [0, 0, 1, 1, 2, 2]
    assert _to_folder(demo, prompts, tmp_path / "gen", images_per_prompt=2, seed=0,
                              class_names=CLASS_NAMES).n_existing == 6


# -- the CLI and accelerate --------------------------------------------------------------------

@pytest.fixture()
def run_dir(tmp_path, tiny_sd):
    root = write_tiny_dataset(tmp_path / "pets")
    prompts = [("cat", "a cat on a red background", 0), ("dog", "a dog on a green background", 10),
               ("cat", "a photo of a green cat", 5), ("dog", "a red dog", 15),
               ("cat", "a small cat", 1)]
    make_run_folder(tmp_path / "run", root, prompts=prompts, generator=tiny_sd, device="cpu",
                    images_per_prompt=2, gen_batch_size=2)
    return tmp_path / "run"


def test_cli_generate_with_a_local_pipeline_reports_and_resumes(run_dir, tiny_sd, capsys):
    assert cli.main(["generate", "--out", str(run_dir), "--steps", "2", "--max-images", "4"]) == 0
    report = json.loads((run_dir / "report.json").read_text())
    gen = report["generation"]
    assert (gen["backend"], gen["model"], gen["n_images"]) == ("diffusers", tiny_sd, 4)
    assert gen["manifest"] == "generated/manifest.csv" and report["config"]["gen_steps"] == 2
    assert (run_dir / "generated_samples.png").exists()
    # no detect stage ran (the prompts were written by hand): the checks are skipped, said so
    assert gen["checks"] == {"skipped": "no biased model: run the detect stage"}
    assert cli.main(["generate", "--out", str(run_dir), "--max-images", "6"]) == 0
    gen = json.loads((run_dir / "report.json").read_text())["generation"]
    assert (gen["n_existing"], gen["n_new"], gen["n_images"]) == (4, 2, 6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_accelerate_launch_shards_over_two_processes_without_duplicates_or_gaps(run_dir):
    # --multi_gpu starts N processes through torchrun (--cpu would start one, or need MPI);
    # ACCELERATE_USE_CPU keeps them on the CPU even where a GPU is present.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
           "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "diffubias", "generate", "--out", str(run_dir), "--steps", "2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "process 0/2: 5 of 10 images" in done.stderr
    assert "process 1/2: 5 of 10 images" in done.stderr
    with open(run_dir / "generated" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    planned = plan_images(read_prompts(Run.open(run_dir)), images_per_prompt=2, seed=0)
    assert [(r["prompt_id"], int(r["seed"])) for r in rows] == [(it.prompt_id, it.seed)
                                                                 for it in planned]
    assert len(list((run_dir / "generated").glob("*/*.png"))) == 10
    report = json.loads((run_dir / "report.json").read_text())["generation"]
    assert (report["n_images"], report["n_new"]) == (10, 10)
