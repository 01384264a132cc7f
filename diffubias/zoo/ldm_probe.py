"""Measuring a text-to-image model by what it draws: sample prompts of known (class, attribute),
let a judge classify the images, and report how often each matches the prompt.

- `probe_prompts` picks corpus captions per (class, attribute) cell;
- `draw` samples them through `diffubias.diffusion.DiffusersGenerator` (the product's own path:
  DPM-Solver++ with Karras sigmas, one seeded CPU generator per image);
- `score_images` compares a judge's predictions with the prompts' cells;
- `QuickJudge` is a small two-headed CNN trained on corpus images, the fallback when no
  independent judge is given.

Knows nothing of training or checkpoints. Generated images come back at the corpus's size
(`fit_size` undoes the padding the model was trained with).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffubias.diffusion import DiffusersGenerator, DiffusionSettings
from diffubias.generation import WorkItem
from diffubias.text_filter import Prompt


class Judge(Protocol):
    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, 3, S, S) images at the corpus's size -> int (N,) classes, int (N,)
        attributes."""
        ...


@dataclass(frozen=True)
class ProbePrompt:
    text: str
    label: int  # the class the caption names: the judge's expected answer, never model input
    attribute: int


@dataclass(frozen=True)
class ProbeScore:
    n_images: int
    class_accuracy: float
    attribute_accuracy: float
    both_accuracy: float
    images_per_second: float
    per_class: tuple[float, ...]  # class accuracy of each class's prompts

    def as_dict(self) -> dict[str, Any]:
        return {"n_images": self.n_images, "class_accuracy": round(self.class_accuracy, 4),
                "attribute_accuracy": round(self.attribute_accuracy, 4),
                "both_accuracy": round(self.both_accuracy, 4),
                "images_per_second": round(self.images_per_second, 2),
                "per_class": [round(a, 3) for a in self.per_class]}


def probe_prompts(captions: Sequence[Sequence[str]], labels: np.ndarray, attributes: np.ndarray,
                  *, per_cell: int, seed: int) -> list[ProbePrompt]:
    """`per_cell` corpus captions for each (class, attribute) cell present, drawn with `seed`."""
    rng = np.random.default_rng(seed)
    prompts = []
    for label in np.unique(labels):
        for attribute in np.unique(attributes):
            members = np.flatnonzero((labels == label) & (attributes == attribute))
            if not len(members):
                continue
            for i in rng.choice(members, per_cell, replace=len(members) < per_cell):
                texts = captions[i]
                prompts.append(ProbePrompt(texts[rng.integers(len(texts))], int(label),
                                           int(attribute)))
    return prompts


def draw(generator: DiffusersGenerator, prompts: Sequence[ProbePrompt], *, seed: int,
         corpus_size: int) -> tuple[np.ndarray, float]:
    """uint8 (N, 3, corpus_size, corpus_size) images, one per prompt, and images per second.
    The generator sees only the text: each Prompt gets label 0."""
    items = [WorkItem(Prompt(p.text, 0, i, ()), f"probe{i}", 0, seed * 100_003 + i)
             for i, p in enumerate(prompts)]
    start = time.perf_counter()
    images = [np.asarray(image.convert("RGB")) for _, image in generator.generate_items(items)]
    seconds = time.perf_counter() - start
    batch = np.stack(images).transpose(0, 3, 1, 2)  # (N, H, W, 3) -> (N, 3, H, W)
    return fit_size(batch, corpus_size), len(images) / max(seconds, 1e-9)


def in_memory_generator(pipe: Any, *, steps: int = 25, guidance_scale: float = 7.5,
                        batch_size: int = 50) -> DiffusersGenerator:
    """A DiffusersGenerator over an assembled pipeline with the sampler the loader sets."""
    from diffubias.zoo.ldm import sampler_for

    pipe.scheduler = sampler_for(pipe.scheduler)
    pipe.set_progress_bar_config(disable=True)
    settings = DiffusionSettings(steps=steps, guidance_scale=guidance_scale,
                                 batch_size=batch_size)
    return DiffusersGenerator(pipe, "in-memory", settings)


def score_images(judge: Judge, images: np.ndarray, prompts: Sequence[ProbePrompt],
                 images_per_second: float = 0.0) -> ProbeScore:
    classes, attributes = judge.predict(images)
    want_class = np.array([p.label for p in prompts])
    want_attr = np.array([p.attribute for p in prompts])
    hit_class, hit_attr = classes == want_class, attributes == want_attr
    per_class = tuple(float(hit_class[want_class == c].mean()) for c in np.unique(want_class))
    return ProbeScore(len(prompts), float(hit_class.mean()), float(hit_attr.mean()),
                      float((hit_class & hit_attr).mean()), images_per_second, per_class)


def fit_size(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, 3, S, S) -> (N, 3, size, size). A small even margin (at most a quarter of the
    size) is centre-cropped or zero-padded (digits padded 28 -> 32 on black, as the corpus draws
    them); anything else is resized bilinearly (64 px scenes to a 32 px model and back)."""
    current = images.shape[-1]
    margin = current - size
    if margin == 0:
        return images
    if margin % 2 == 0 and abs(margin) <= min(current, size) // 4:
        m = abs(margin) // 2
        if margin > 0:
            return np.ascontiguousarray(images[:, :, m:m + size, m:m + size])
        return np.pad(images, ((0, 0), (0, 0), (m, m), (m, m)))
    resized = F.interpolate(torch.from_numpy(images).float(), size=(size, size),
                            mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8).numpy()


# -- judges ------------------------------------------------------------------------------------

@dataclass(eq=False)
class ZooJudge:
    """The independent zoo judge (`diffubias.zoo.judge`) behind the `Judge` protocol."""

    judge: Any
    folder: str

    @classmethod
    def load(cls, folder: str) -> ZooJudge:
        from diffubias.zoo.judge import load_judge

        return cls(load_judge(folder), str(folder))

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = self.judge.score(fit_size(images, self.judge.image_size))
        return scores.classes, scores.attributes

    def describe(self) -> str:
        return f"the zoo judge in {self.folder}"


class _TwoHeads(nn.Module):
    def __init__(self, num_classes: int, num_attributes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.classes = nn.Linear(256, num_classes)
        self.attributes = nn.Linear(256, num_attributes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)  # (B, 64 * 2 * 2)
        return self.classes(h), self.attributes(h)


@dataclass(eq=False)
class QuickJudge:
    """A small CNN with a class head and an attribute head, trained on corpus images. It has
    seen real images only, so a generated image it classifies correctly looks like the real
    thing at least to it; `held_out_accuracy` says how far to trust it."""

    model: _TwoHeads
    held_out_accuracy: tuple[float, float]  # (class, attribute) on corpus images it did not see

    @classmethod
    def train(cls, images: np.ndarray, labels: np.ndarray, attributes: np.ndarray, *,
              steps: int = 1000, seed: int = 0) -> QuickJudge:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(images))
        held, train = order[: len(order) // 10], order[len(order) // 10:]
        torch.manual_seed(seed)
        model = _TwoHeads(int(labels.max()) + 1, int(attributes.max()) + 1)
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        y_c, y_a = torch.from_numpy(labels).long(), torch.from_numpy(attributes).long()
        for _ in range(steps):
            idx = torch.from_numpy(rng.choice(train, 128))
            # shifted by up to 2 px: generated digits sit a little off where real ones do
            dy, dx = (int(v) for v in rng.integers(-2, 3, size=2))
            batch = torch.roll(_float(images[idx.numpy()]), shifts=(dy, dx), dims=(2, 3))
            logits_c, logits_a = model(batch)
            loss = F.cross_entropy(logits_c, y_c[idx]) + F.cross_entropy(logits_a, y_a[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        judge = cls(model.eval(), (0.0, 0.0))
        pred_c, pred_a = judge.predict(images[held])
        judge.held_out_accuracy = (float((pred_c == labels[held]).mean()),
                                   float((pred_a == attributes[held]).mean()))
        return judge

    def describe(self) -> str:
        return ("a quick CNN trained here on the judge corpus (check corpus: class "
                f"{self.held_out_accuracy[0]:.3f}, attribute {self.held_out_accuracy[1]:.3f})")

    @torch.no_grad()
    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        classes, attributes = [], []
        for start in range(0, len(images), 512):
            logits_c, logits_a = self.model(_float(images[start:start + 512]))
            classes.append(logits_c.argmax(1))
            attributes.append(logits_a.argmax(1))
        return torch.cat(classes).numpy(), torch.cat(attributes).numpy()


def _float(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).float() / 255.0
