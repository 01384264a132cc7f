"""Cheap image augmentation for the zoo's training loops: each image rolled by a few pixels.

The built-ins already vary position, size and rotation; a small extra shift per step keeps a small
model from memorising the few hundred source images its corpus renders again and again. A roll
moves no object across the border: digits sit on black, shapes keep a margin of 3 px.
Knows: tensors and a numpy generator. Does not know: models or corpora.
"""

from __future__ import annotations

import numpy as np
import torch


def random_shift(images: torch.Tensor, rng: np.random.Generator, *,
                 max_shift: int = 2) -> torch.Tensor:
    """(B, C, H, W) images, each rolled by up to `max_shift` px down/up and right/left."""
    shifts = rng.integers(-max_shift, max_shift + 1, size=(len(images), 2))
    return torch.stack([torch.roll(image, (int(dy), int(dx)), dims=(1, 2))
                        for image, (dy, dx) in zip(images, shifts)])
