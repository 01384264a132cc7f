"""Shared fixtures: a tiny planted-bias image set (colour predicts the class for most samples,
a bar's orientation always does) that trains in seconds on a CPU."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

COLOURS = np.array([[200, 60, 60], [60, 170, 60]], dtype=np.uint8)  # red, green backgrounds


def make_bar_images(labels: np.ndarray, colours: np.ndarray, rng: np.random.Generator,
                    size: int = 12, *, bar: int = 4, strength: int = 40,
                    noise: int = 25) -> torch.Tensor:
    """A coloured background (the easy shortcut) with a short bar, `strength` brighter (the
    class: vertical for class 0, horizontal for 1) at a random place, under pixel noise."""
    images = np.broadcast_to(COLOURS[colours][:, None, None, :], (len(labels), size, size, 3))
    images = images.astype(np.int16) + rng.integers(-noise, noise + 1,
                                                    size=(len(labels), size, size, 3))
    for i, label in enumerate(labels):
        r, c = rng.integers(1, size - bar, size=2)
        if label == 0:
            images[i, r:r + bar, c] += strength
        else:
            images[i, r, c:c + bar] += strength
    return torch.from_numpy(images.clip(0, 255).astype(np.uint8)).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from threads, and OpenMP threads spin-waiting on 2 busy cores
    turn 50 ms calls into seconds; restored for the other test modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def builtin_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder for the whole session, so each built-in variant is generated once."""
    return tmp_path_factory.getbasetemp() / "builtin-cache"


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
