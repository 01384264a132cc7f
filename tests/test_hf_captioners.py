"""Model captioners on tiny random BLIP and LLaVA checkpoints loaded by path: counts, order,
provenance, seeding, one load per model, and actionable errors for models that are not there."""

import os
import time

import pytest
import torch

from diffubias.backends import make_captioner
from diffubias.captions import MetadataCaptioner
from diffubias.dataset_sources import load_dataset
from diffubias.hf_captioners import CaptionSettings, ModelCaptioner
from diffubias.hf_loading import pick_device, pick_dtype
from tiny_models import build_tiny_blip, build_tiny_llava, write_tiny_dataset

POSITIONS = [0, 1, 2, 10, 11]  # three cats, two dogs


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="session")
def tiny_blip(tmp_path_factory):
    return str(build_tiny_blip(tmp_path_factory.mktemp("tiny-blip")))


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory):
    return str(build_tiny_llava(tmp_path_factory.mktemp("tiny-llava")))


@pytest.fixture(scope="session")
def tiny_ds(tmp_path_factory):
    root = write_tiny_dataset(tmp_path_factory.mktemp("data") / "pets")
    return load_dataset(str(root), cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.mark.parametrize("which, kind", [("tiny_blip", "blip"), ("tiny_llava", "vlm")])
def test_captions_per_image_in_position_order_with_provenance(request, tiny_ds, which, kind):
    path = request.getfixturevalue(which)
    captioner = make_captioner(path, per_image=3, batch_size=2, max_new_tokens=6,
                               instruction="Describe the background.")
    assert isinstance(captioner, ModelCaptioner) and captioner.backend == kind
    captions = captioner.caption(tiny_ds, POSITIONS)
    assert [c.position for c in captions] == [p for p in POSITIONS for _ in range(3)]
    assert all(c.backend == kind and c.model == path for c in captions)
    params = captions[0].params
    assert params["per_image"] == 3 and params["max_new_tokens"] == 6 and params["seed"] == 0
    assert params["dtype"] == "float32"  # fp32 on the CPU
    assert ("instruction" in params) == (kind == "vlm")
    if kind == "vlm":
        assert params["instruction"] == "Describe the background."
    assert all(isinstance(c.text, str) for c in captions)


@pytest.mark.parametrize("which", ["tiny_blip", "tiny_llava"])
def test_same_seed_same_captions_and_model_loaded_once(request, tiny_ds, which):
    path = request.getfixturevalue(which)
    first = make_captioner(path, per_image=2, batch_size=4, max_new_tokens=6, seed=3)
    again = make_captioner(path, per_image=2, batch_size=4, max_new_tokens=6, seed=3)
    other = make_captioner(path, per_image=2, batch_size=4, max_new_tokens=6, seed=4)
    assert again.model is first.model  # cached: not reloaded
    texts = [c.text for c in first.caption(tiny_ds, POSITIONS)]
    assert texts == [c.text for c in again.caption(tiny_ds, POSITIONS)]
    assert texts != [c.text for c in other.caption(tiny_ds, POSITIONS)]


def test_captioning_leaves_the_global_rng_alone(tiny_blip, tiny_ds):
    captioner = make_captioner(tiny_blip, per_image=2, max_new_tokens=4)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    captioner.caption(tiny_ds, POSITIONS[:2])
    assert torch.equal(torch.rand(3), expected)


def test_beam_search_without_sampling(tiny_blip, tiny_ds):
    captioner = make_captioner(tiny_blip, per_image=2, max_new_tokens=4)
    beams = ModelCaptioner(captioner.model, captioner.processor, captioner.model_name,
                           captioner.kind, CaptionSettings(per_image=2, do_sample=False,
                                                           max_new_tokens=4))
    assert len(beams.caption(tiny_ds, [0, 1])) == 4


def test_metadata_is_still_the_default_backend():
    assert isinstance(make_captioner("metadata", per_image=2), MetadataCaptioner)


def test_uncached_hub_id_fails_fast_naming_the_id_and_the_ways_to_provide_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ValueError) as err:
        make_captioner("nobody-here/no-such-captioner")
    message = str(err.value)
    assert "nobody-here/no-such-captioner" in message
    assert "HF_HOME" in message and "local folder" in message and "network" in message
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize("model", ["./no/such/folder", "not a model id!"])
def test_missing_folder_or_bad_id_is_a_value_error(model):
    with pytest.raises(ValueError, match="folder|hub id"):
        make_captioner(model)


def test_folder_without_a_model_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="save_pretrained"):
        make_captioner(str(tmp_path))


@pytest.mark.parametrize("bad", [{"per_image": 0}, {"top_p": 0.0}, {"batch_size": 0}])
def test_settings_are_validated(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        CaptionSettings(**bad)


def test_device_and_dtype_defaults(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert pick_dtype("auto", "cpu") == torch.float32
    assert pick_dtype("fp16", "cpu") == torch.float16
    assert pick_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        assert pick_device("auto") == "cpu"
    with pytest.raises(ValueError, match="float8"):
        pick_dtype("float8", "cpu")
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # the suite never reaches the Hub


def test_cli_caption_with_a_local_blip_records_provenance_and_keywords(tmp_path, tiny_blip):
    import csv
    import json

    from diffubias import cli
    from tiny_models import make_run_folder

    root = write_tiny_dataset(tmp_path / "pets")
    run = make_run_folder(tmp_path / "run", root, k=2, device="cpu")
    argv = ["caption", "--out", str(run.out_dir), "--captioner", tiny_blip,
            "--captions-per-image", "2", "--caption-max-new-tokens", "5"]
    assert cli.main(argv) == 0
    report = json.loads(run.report_path.read_text())
    assert report["captions"]["backend"] == "blip" and report["captions"]["model"] == tiny_blip
    assert report["captions"]["n_captions"] == 8  # 2 candidates x 2 classes x 2 captions
    assert set(report["keywords"]) == {"cat", "dog"}
    with open(run.out_dir / "captions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and json.loads(rows[0]["params"])["per_image"] == 2
    with open(run.out_dir / "aligned_captions.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 8


def test_cli_reports_an_uncached_model_in_one_line(tmp_path, capsys, monkeypatch):
    from diffubias import cli
    from tiny_models import make_run_folder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = make_run_folder(tmp_path / "run", write_tiny_dataset(tmp_path / "pets"))
    assert cli.main(["caption", "--out", str(run.out_dir), "--captioner",
                     "nobody-here/no-such-captioner"]) == 2
    err = capsys.readouterr().err
    assert "error: model 'nobody-here/no-such-captioner' is not in the Hugging Face cache" in err
    assert "Traceback" not in err


def test_a_cached_hub_id_loads_offline_through_the_same_code(tmp_path, tiny_blip):
    """The tiny BLIP placed in a Hugging Face cache layout (refs/main -> snapshot) loads by hub
    id with downloads off; run in a child process so HF_HOME is read fresh."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    commit = "0" * 40
    repo = tmp_path / "hf" / "hub" / "models--tiny-org--tiny-blip"
    shutil.copytree(tiny_blip, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    code = ("from diffubias.backends import make_captioner; "
            "c = make_captioner('tiny-org/tiny-blip', per_image=1, max_new_tokens=3); "
            "print(c.kind, c.model_name)")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["blip", "tiny-org/tiny-blip"]


def test_vlm_without_a_processor_template_uses_the_tokenizer_template(tiny_llava, tiny_ds):
    import copy

    from diffubias.hf_captioners import vlm_prompt

    base = make_captioner(tiny_llava, per_image=1, max_new_tokens=4)
    processor = copy.deepcopy(base.processor)
    processor.chat_template = None
    processor.tokenizer.chat_template = (
        "{% for m in messages %}USER: {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
    assert vlm_prompt(processor, "describe") == "USER: <image>\ndescribe ASSISTANT:"
    captioner = ModelCaptioner(base.model, processor, base.model_name, "vlm", base.settings)
    assert len(captioner.caption(tiny_ds, [0, 1])) == 2
    processor.tokenizer.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        vlm_prompt(processor, "describe")
