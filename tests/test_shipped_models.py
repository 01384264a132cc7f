"""The models the project pretrains and ships (models/) are the built-in datasets' defaults: they
load offline through the product's own paths, draw what the prompt says (an independent judge
agrees), never read a sample's label, and the oracles are named as such."""

import numpy as np
import pytest
import torch

from diffubias.backends import make_captioner, make_generator
from diffubias.config import RunConfig
from diffubias.diffusion import SMALL_DENOISER, DiffusionSettings, auto_settings
from diffubias.generation import WorkItem
from diffubias.shipped_models import models_root, oracle_note, resolve, shipped_folder
from diffubias.text_filter import Prompt

DIGITS = "builtin:colored-digits"


def test_the_defaults_are_the_shipped_models_and_old_names_still_load():
    config = RunConfig()
    assert (resolve(config.captioner, DIGITS, kind="captioner"),
            resolve(config.generator, DIGITS, kind="generator")) == ("builtin-blip", "builtin-ldm")
    # a user's dataset: its own captions; a generator must be chosen (no model can be fetched)
    assert resolve(config.captioner, "pets", kind="captioner") == "metadata"
    with pytest.raises(ValueError, match="choose a generator for 'pets'.*--generator sd15"):
        make_generator(config.generator, dataset_name="pets", class_names=("cat", "dog"))
    assert RunConfig(generator="demo").generator == "oracle-renderer"  # saved before the rename
    for name in ("builtin-blip", "builtin-ldm", "judge"):
        assert (shipped_folder(name, DIGITS) / "README.md").is_file()  # a model card each


def test_shipped_models_refuse_other_datasets_and_say_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="built-in datasets only.*--captioner blip.*metadata"):
        shipped_folder("builtin-blip", "pets")
    monkeypatch.setenv("DIFFUBIAS_MODELS", str(tmp_path))
    assert models_root() == tmp_path
    with pytest.raises(ValueError, match="DIFFUBIAS_MODELS.*python -m diffubias.zoo train ldm"):
        shipped_folder("builtin-ldm", DIGITS)


def test_oracles_are_named_and_real_models_are_not():
    assert "oracle" in oracle_note("oracle-renderer", DIGITS)
    assert "oracle captions" in oracle_note("metadata", DIGITS)
    assert oracle_note("metadata", "pets") == ""  # a user's own captions are an ordinary captioner
    assert oracle_note("builtin-blip", DIGITS) == oracle_note("builtin-ldm", DIGITS) == ""


def test_the_sampler_settings_follow_the_model_size():
    small = torch.nn.Module()
    small.unet = torch.nn.Linear(10, 10)
    large = torch.nn.Module()
    large.unet = torch.nn.Linear(SMALL_DENOISER // 1000 + 1, 1000)
    assert (auto_settings(small, DiffusionSettings()).steps,
            auto_settings(small, DiffusionSettings()).batch_size) == (15, 128)
    assert (auto_settings(large, DiffusionSettings()).steps,
            auto_settings(large, DiffusionSettings()).batch_size) == (25, 8)
    chosen = auto_settings(small, DiffusionSettings(steps=7, batch_size=3))
    assert (chosen.steps, chosen.batch_size) == (7, 3)


@pytest.fixture(scope="module")
def ldm():
    from diffubias.builtin.colored_digits import CLASS_NAMES

    return make_generator("builtin-ldm", dataset_name=DIGITS, class_names=CLASS_NAMES,
                          device="cpu")


def _draw(generator, texts, labels, seeds):
    items = [WorkItem(Prompt(t, label, i, ()), f"p{i}", 0, seed)
             for i, (t, label, seed) in enumerate(zip(texts, labels, seeds))]
    return np.stack([np.asarray(image.convert("RGB")).transpose(2, 0, 1)
                     for _, image in generator.generate_items(items)])


def test_the_judge_sees_the_prompted_class_on_a_20_prompt_slice(ldm, one_torch_thread):
    from diffubias.builtin.colored_digits import CLASS_NAMES
    from diffubias.zoo.ldm_probe import ZooJudge

    colours = ("red", "green", "blue", "yellow")
    texts = [f"a {colours[i % 4]} handwritten {CLASS_NAMES[i % 10]}" for i in range(20)]
    images = _draw(ldm, texts, [0] * 20, range(20))  # the label says 0: the text alone decides
    classes, _ = ZooJudge.load(str(shipped_folder("judge", DIGITS))).predict(images)
    agreement = float((classes == np.arange(20) % 10).mean())
    assert agreement >= 0.8, agreement


def test_a_prompt_without_a_class_word_is_drawn_the_same_whatever_the_label(ldm,
                                                                            one_torch_thread):
    texts = ["a red digit on a black background"] * 4
    as_eights = _draw(ldm, texts, [8] * 4, range(4))
    as_threes = _draw(ldm, texts, [3] * 4, range(4))
    np.testing.assert_array_equal(as_eights, as_threes)  # nothing read the label


def test_the_shipped_captioner_is_the_default_and_loads_offline():
    captioner = make_captioner("builtin-blip", dataset_name=DIGITS, per_image=1, device="cpu")
    assert "colored-digits-captioner" in captioner.model_name
