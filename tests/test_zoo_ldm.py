"""The zoo's latent diffusion model on tiny configs: one token per corpus word, a saved pipeline
that the product's loader loads offline and generates with, training that lowers the loss on a
fixed batch, resume equal to never stopping, prompts that alone decide the image, and the whole
run (checkpoints, probe, export, model card, resume with more steps) end to end."""

import json

import numpy as np
import pytest
import torch

from diffubias.config import RunConfig
from diffubias.diffusion import DiffusionSettings, load_diffusers_generator
from diffubias.generation import WorkItem
from diffubias.stages.generate import MemorySink, generate_images
from diffubias.text_filter import Prompt
from diffubias.zoo.corpus import corpus_vocabulary
from diffubias.zoo.ldm import LDMConfig, build_parts, build_tokenizer, save_pipeline, word_merges
from diffubias.zoo.ldm_probe import QuickJudge, fit_size
from diffubias.zoo.ldm_run import RunSettings, add_arguments, train_ldm
from diffubias.zoo.ldm_train import CaptionedImages, LDMTrainer, TrainSettings

# 16 px images, 8 x 8 latents, a 2-level UNet 16/32 wide, a 16-wide 1-layer text encoder
TINY = LDMConfig(image_size=16, vae_channels=(8, 16), unet_channels=(16, 32),
                 attention_head_dim=8, text_width=16, text_layers=1, text_heads=2, max_tokens=12)
CAPTIONS = ("a red seven", "a blue seven", "a red one", "a blue one")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    yield


def tiny_images(n: int = 8, size: int = 16) -> CaptionedImages:
    """Red or blue squares, left (seven) or right (one)."""
    images = np.zeros((n, 3, size, size), dtype=np.uint8)
    captions = []
    for i in range(n):
        colour, side = i % 2, (i // 2) % 2
        left = 2 if side == 0 else 9
        images[i, 0 if colour == 0 else 2, 4:12, left:left + 5] = 250
        captions.append((CAPTIONS[colour + 2 * side],))
    return CaptionedImages(images, tuple(captions))


def trainer(**settings) -> LDMTrainer:
    defaults = dict(steps=4, vae_steps=2, batch_size=4, vae_batch_size=4, warmup=1,
                    checkpoint_every=2, device="cpu")
    return LDMTrainer(TINY, tiny_images(), TrainSettings(**(defaults | settings)))


@pytest.fixture(scope="module")
def tiny_ldm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-ldm")
    return save_pipeline(build_parts(TINY, CAPTIONS), folder)


def test_every_corpus_word_is_one_token_and_no_word_is_unknown():
    words = corpus_vocabulary("colored-digits")
    assert len(word_merges(words)) < 400
    tokenizer = build_tokenizer(words, max_tokens=20)
    for word in words:
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    ids = tokenizer("a zebra drawn in 7 hues").input_ids
    assert tokenizer.unk_token_id not in ids[1:-1]  # unknown words fall apart into letters


def test_saved_pipeline_loads_offline_and_generates_through_the_stage(tiny_ldm):
    generator = load_diffusers_generator(str(tiny_ldm), device="cpu",
                                         settings=DiffusionSettings(steps=2, batch_size=2))
    assert type(generator.pipe).__name__ == "StableDiffusionPipeline"
    assert type(generator.pipe.tokenizer).__name__ == "CLIPTokenizer"
    assert type(generator.pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    sink = MemorySink()
    prompts = [Prompt("a red seven", 0, 0, ("red",)), Prompt("a blue one", 1, 1, ("blue",))]
    result = generate_images(generator, prompts, RunConfig(images_per_prompt=1, seed=3),
                             class_names=("seven", "one"), sink=sink)
    assert result.n_new == 2 and len(sink.images) == 2
    assert all(image.size == (16, 16) for _, image in sink.images)
    weights = sum(p.stat().st_size for p in tiny_ldm.rglob("*.safetensors"))
    assert weights < 15e6


def test_the_prompt_alone_decides_the_image(tiny_ldm):
    """Same text and seed, different labels: identical pixels; a prompt without a class word is
    drawn from its words only."""
    generator = load_diffusers_generator(str(tiny_ldm), device="cpu",
                                         settings=DiffusionSettings(steps=2, batch_size=2))
    items = [WorkItem(Prompt("a red digit", label, 5, ()), "p", 0, 11) for label in (0, 1)]
    first, second = [np.asarray(image) for _, image in generator.generate_items(items)]
    np.testing.assert_array_equal(first, second)
    assert generator.pipe.tokenizer("a red digit").input_ids == \
        generator.pipe.tokenizer("a red digit ").input_ids  # nothing appended to the text


def test_a_few_steps_lower_the_loss_on_a_fixed_batch():
    t = trainer(vae_steps=1)
    t.train_vae()
    before = t.unet_loss(0).item()
    opt = torch.optim.Adam(t._denoiser_params(), lr=3e-3)
    for _ in range(15):
        loss = t.unet_loss(0)  # step 0's batch, noise and timesteps every time
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert t.unet_loss(0).item() < 0.7 * before


def test_resume_ends_in_the_same_state_as_continuing(tmp_path):
    straight = trainer()
    straight.train_vae()
    straight.train_unet()
    stopped = trainer()
    stopped.train_vae()
    stopped.train_unet(until=2)
    stopped.save(tmp_path / "state.safetensors")
    resumed = trainer()
    resumed.load(tmp_path / "state.safetensors")
    resumed.train_unet()
    assert resumed.state.unet_step == straight.state.unet_step == 4
    assert resumed.state.scaling_factor == straight.state.scaling_factor
    for key, value in straight._denoiser_state().items():
        torch.testing.assert_close(resumed._denoiser_state()[key], value, rtol=0, atol=0)
        torch.testing.assert_close(resumed.ema[key], straight.ema[key], rtol=0, atol=0)


def test_a_checkpoint_of_another_config_is_refused(tmp_path):
    t = trainer()
    t.save(tmp_path / "state.safetensors")
    other = LDMTrainer(LDMConfig(**{**TINY.__dict__, "pooled_text": False}), tiny_images(),
                       TrainSettings(steps=4, vae_steps=2, batch_size=4, vae_batch_size=4,
                                     device="cpu"))
    with pytest.raises(ValueError, match="config"):
        other.load(tmp_path / "state.safetensors")


def test_fit_size_pads_and_crops_back():
    images = np.random.default_rng(0).integers(0, 256, (2, 3, 28, 28), dtype=np.uint8)
    padded = fit_size(images, 32)
    assert padded.shape == (2, 3, 32, 32) and padded[:, :, :2].max() == 0
    np.testing.assert_array_equal(fit_size(padded, 28), images)


def test_the_run_checkpoints_probes_ships_and_resumes(tmp_path):
    config = LDMConfig(image_size=32, vae_channels=(8, 16, 16), unet_channels=(16, 32),
                       attention_head_dim=8, text_width=16, text_layers=1, text_heads=2)
    train = TrainSettings(steps=2, vae_steps=2, batch_size=4, vae_batch_size=4, warmup=1,
                          checkpoint_every=2, device="cpu")
    from diffubias.models import build_classifier
    from diffubias.zoo.judge import Judge, save_judge

    names = tuple(str(i) for i in range(10))  # a random zoo judge: the final measurement's
    zoo_judge = save_judge(Judge(build_classifier(num_classes=20, image_size=28), names, names),
                           tmp_path / "judge" / "judge.safetensors")
    run = RunSettings(per_cell=1, probe_every=2, eval_per_cell=1, judge_steps=2,
                      judge_per_cell=1, judge=str(zoo_judge.parent))
    out = tmp_path / "ldm"
    logs = []
    result = train_ldm("colored-digits", out, train=train, run=run, config=config,
                       log=logs.append)
    assert result["n_images"] == 100 and 0 <= result["class_accuracy"] <= 1
    assert (out / "model_index.json").is_file()
    assert (out / "checkpoint" / "last.safetensors").is_file()
    card = (out / "README.md").read_text()
    assert "below the targets" in card
    # the retrain command carries the options that differ from the defaults
    assert "python -m diffubias.zoo.ldm_run --domain colored-digits" in card
    assert f"--batch-size 4 --per-cell 1 --judge {zoo_judge.parent}" in card
    assert "At guidance 3.0 (100 images)" in card and "| 2 | 0." in card  # the probe table
    assert f"the zoo judge in {zoo_judge.parent}" in card
    history = json.loads((out / "checkpoint" / "history.json").read_text())
    assert [h["step"] for h in history["state"]["history"] if h["phase"] == "probe"] == [2]
    load_diffusers_generator(str(out), device="cpu")  # the shipped folder loads

    more = TrainSettings(**{**train.__dict__, "steps": 4})
    quick = RunSettings(**{**run.__dict__, "eval_per_cell": 0, "judge": ""})  # the best probe
    train_ldm("colored-digits", out, train=more, run=quick, config=config, log=logs.append)
    assert any("resumed at VAE step 2, UNet step 2" in line for line in logs)
    history = json.loads((out / "checkpoint" / "history.json").read_text())
    assert history["state"]["unet_step"] == 4


def test_the_zoo_command_dispatches_ldm_and_the_module_takes_every_option(monkeypatch):
    import argparse

    from diffubias.zoo import cli, ldm_run

    calls = []
    monkeypatch.setattr(ldm_run, "train_ldm", lambda *a, **k: calls.append((a, k)) or {})
    assert cli.main(["train", "ldm", "--domain", "colored-digits", "--out", "m", "--steps", "9",
                     "--seed", "2", "--no-progress"]) == 0
    (domain, out), kwargs = calls[0]
    assert (domain, str(out), kwargs["train"].steps, kwargs["train"].seed) == \
        ("colored-digits", "m", 9, 2)
    assert kwargs["train"].device == "auto" and not kwargs["run"].show_progress

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--domain", "colored-digits", "--out", "m", "--steps", "9",
                              "--device", "cuda", "--max-minutes", "5"])
    assert (args.steps, args.device, args.max_minutes) == (9, "cuda", 5.0)


def test_the_quick_judge_learns_a_planted_class_and_attribute():
    data = tiny_images(n=64)
    attributes = np.arange(64) % 2  # red or blue
    labels = (np.arange(64) // 2) % 2  # left or right
    judge = QuickJudge.train(data.images, labels, attributes, steps=60, seed=0)
    classes, colours = judge.predict(data.images)
    assert (classes == labels).mean() > 0.9 and (colours == attributes).all()


def test_the_card_gives_the_command_that_retrains_the_model():
    from diffubias.zoo.ldm_card import _retrain_command
    from diffubias.zoo.ldm_run import RunSettings
    from diffubias.zoo.ldm_train import TrainSettings

    assert _retrain_command("colored-digits", TrainSettings(steps=300), RunSettings()) == (
        "python -m diffubias.zoo train ldm --domain colored-digits --out "
        "models/colored-digits-ldm --steps 300 --seed 0")
    command = _retrain_command("shape-scenes", TrainSettings(steps=6000, vae_steps=2500),
                               RunSettings(per_cell=250, probe_judge="models/shape-scenes-judge"))
    assert command.startswith("python -m diffubias.zoo.ldm_run --domain shape-scenes")
    assert command.endswith("--vae-steps 2500 --per-cell 250 --probe-judge "
                            "models/shape-scenes-judge")
