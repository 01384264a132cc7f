"""Fixtures for the tests of `diffubias.baselines`: the conftest's planted-bias set (colour
predicts the class except for 18 planted conflicts) written in the project's folder format, a
tiny run config over it, and a weight-free generator that draws what a prompt names. Test
modules import the fixtures they use; each module builds its own (about a second)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_bar_images
from diffubias.config import RunConfig
from diffubias.prepared import PreparedDataset

SHAPES = ("vertical", "horizontal")  # make_bar_images' class 0 and 1
COLOURS = ("red", "green")  # conftest.COLOURS order


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


def planted_config(folder: Path, tmp_path: Path, **changes) -> RunConfig:
    cfg = RunConfig(dataset=str(folder), cache_dir=str(tmp_path / "cache"), device="cpu",
                    width=8, batch_size=64, lr=3e-3, biased_epochs=2, debias_epochs=2, top_k=9,
                    captions_per_image=3, images_per_prompt=2)
    return replace(cfg, **changes)


@pytest.fixture(scope="module")
def planted_run(planted_folder, tmp_path_factory):
    """(config, prepared data, is_conflict per training sample) of the planted folder."""
    cfg = planted_config(planted_folder, tmp_path_factory.mktemp("run"))
    data = PreparedDataset.load(cfg)
    positions, _ = data.split("train")
    return cfg, data, data.conflicts(positions)
