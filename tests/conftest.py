"""Shared fixtures: a tiny planted-bias image set (colour predicts the class for most samples,
a bar's orientation always does) that trains in seconds on a CPU."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

COLOURS = np.array([[230, 40, 40], [40, 200, 40]], dtype=np.uint8)  # red, green


def make_bar_images(labels: np.ndarray, colours: np.ndarray, rng: np.random.Generator,
                    size: int = 12) -> torch.Tensor:
    """Class 0: a vertical bar, class 1: a horizontal bar, drawn in the given colour index."""
    images = np.zeros((len(labels), size, size, 3), dtype=np.uint8)
    for i, (label, colour) in enumerate(zip(labels, colours)):
        offset = rng.integers(2, size - 2)
        if label == 0:
            images[i, 1:-1, offset - 1:offset + 1] = COLOURS[colour]
        else:
            images[i, offset - 1:offset + 1, 1:-1] = COLOURS[colour]
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW


@pytest.fixture(scope="session")
def planted_bias():
    """600 train samples, 2 classes; colour == class except for 18 planted conflicts."""
    rng = np.random.default_rng(0)
    n = 600
    labels = np.repeat([0, 1], n // 2)
    colours = labels.copy()
    conflicts = np.concatenate([rng.choice(n // 2, 9, replace=False),
                                n // 2 + rng.choice(n // 2, 9, replace=False)])
    colours[conflicts] = 1 - labels[conflicts]
    images = make_bar_images(labels, colours, rng)
    test_labels = np.tile([0, 1], 100)
    test_colours = np.repeat([0, 1], 100)  # unbiased: every (class, colour) pair equally often
    test_images = make_bar_images(test_labels, test_colours, rng)
    is_conflict = np.zeros(n, dtype=bool)
    is_conflict[conflicts] = True
    return {"images": images, "labels": torch.from_numpy(labels), "bias": colours,
            "is_conflict": is_conflict, "test_images": test_images,
            "test_labels": torch.from_numpy(test_labels), "test_bias": test_colours}
