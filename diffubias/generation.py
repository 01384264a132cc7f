"""Generation: new images from the kept prompts, each labelled with its source sample's class.

A generator turns prompts into images; every image keeps its provenance (prompt, source sample,
label, seed, backend, model, parameters) so nothing loses its label the way the reference code's
flat output folder did. The `demo` backend is the OFFLINE STAND-IN for a diffusion model: it
renders prompts for the built-in datasets procedurally (reads the class and attribute words and
draws that image). Real text-to-image pipelines (diffusers) follow the same protocol.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from diffubias.text_filter import Prompt
from diffubias.text_safety import check_prompt_text, from_csv_cell
from diffubias.training import ProgressFn

if TYPE_CHECKING:
    from diffubias.diffusion import DiffusionSettings

MANIFEST_FIELDS = ("file", "prompt", "source", "label", "label_name", "seed", "backend", "model",
                   "params")


@dataclass(frozen=True)
class GeneratedImage:
    image: Image.Image = field(repr=False)
    prompt: str
    source: int  # dataset position of the sample whose caption became the prompt
    label: int
    seed: int
    backend: str
    model: str | None = None
    params: Mapping = field(default_factory=dict)


class Generator(Protocol):
    backend: str

    def generate(self, prompts: Sequence[Prompt], *, images_per_prompt: int, seed: int,
                 progress: ProgressFn | None = None) -> list[GeneratedImage]: ...


def image_seed(base_seed: int, prompt_index: int, image_index: int, images_per_prompt: int) -> int:
    """One seed per output image, so any single image can be regenerated on its own."""
    return base_seed * 1_000_003 + prompt_index * images_per_prompt + image_index


def check_generation_inputs(prompts: Sequence[Prompt], images_per_prompt: int) -> None:
    if not prompts:
        raise ValueError("no prompts to generate from: keep at least one prompt")
    if images_per_prompt < 1:
        raise ValueError(f"images_per_prompt must be at least 1, got {images_per_prompt}")
    for i, prompt in enumerate(prompts):
        check_prompt_text(prompt.text, where=f"prompt {i + 1}")


@dataclass(frozen=True)
class DemoGenerator:
    """Renders prompts for a built-in dataset (offline stand-in for a latent diffusion model)."""

    dataset: str  # built-in name, e.g. "colored-digits"
    class_names: tuple[str, ...]
    backend: str = "demo"

    def generate(self, prompts: Sequence[Prompt], *, images_per_prompt: int = 1, seed: int = 0,
                 progress: ProgressFn | None = None) -> list[GeneratedImage]:
        from diffubias.builtin import get_renderer

        check_generation_inputs(prompts, images_per_prompt)
        renderer = get_renderer(self.dataset)
        out = []
        for i, prompt in enumerate(tqdm(prompts, desc="generate", leave=False)):
            for j in range(images_per_prompt):
                s = image_seed(seed, i, j, images_per_prompt)
                image = renderer.render(prompt.text, label_name=self.class_names[prompt.label],
                                        seed=s)
                out.append(GeneratedImage(image, prompt.text, prompt.source, prompt.label, s,
                                          self.backend, f"builtin:{self.dataset}",
                                          {"images_per_prompt": images_per_prompt}))
            if progress is not None:
                progress((i + 1) / len(prompts), "generating images")
        return out


def make_generator(name: str, *, dataset_name: str, class_names: Sequence[str],
                   settings: DiffusionSettings | None = None, device: str = "auto",
                   dtype: str = "auto", offload: str = "none", compile_mode: str = "",
                   log: Callable[[str], None] | None = None) -> Generator:
    """A generator by name: `demo` (built-in datasets only), or any diffusers text-to-image
    pipeline by hub id, local folder or short name (sd15, sdxl, sd35); the keyword options
    apply to diffusers only (see diffubias.diffusion.load_diffusers_generator)."""
    if name == "demo":
        builtin = dataset_name.removeprefix("builtin:")
        if not dataset_name.startswith("builtin:"):
            raise ValueError(
                f"the demo generator renders only the built-in datasets, not {dataset_name!r}; "
                "use a diffusion model generator, or run `detect` for detection only")
        return DemoGenerator(builtin, tuple(class_names))
    from diffubias.diffusion import load_diffusers_generator

    return load_diffusers_generator(name, settings=settings, device=device, dtype=dtype,
                                    offload=offload, compile_mode=compile_mode, log=log)


def read_manifest(manifest: Path) -> list[dict]:
    """The manifest's rows, text exactly as generated (the formula guard taken off)."""
    with open(manifest, newline="", encoding="utf-8") as f:
        return [{k: from_csv_cell(v) if isinstance(v, str) else v for k, v in row.items()}
                for row in csv.DictReader(f)]


def load_generated(manifest: Path, *, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images (N, 3, size, size), int64 labels (N,)) from a manifest written above."""
    rows = read_manifest(manifest)
    if not rows:
        return torch.empty(0, 3, size, size, dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
    arrays = []
    for row in rows:
        image = Image.open(manifest.parent / row["file"]).convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        arrays.append(np.asarray(image))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
    labels = torch.tensor([int(r["label"]) for r in rows], dtype=torch.int64)
    return images, labels
