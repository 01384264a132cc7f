"""Random shifts: every image keeps its pixels, moved by at most max_shift, the same for the same
generator."""

import numpy as np
import torch

from diffubias.zoo.augment import random_shift


def test_shift_moves_pixels_without_changing_them():
    images = torch.zeros(16, 3, 12, 12, dtype=torch.uint8)
    images[:, :, 5, 6] = 255  # one bright pixel in the middle
    shifted = random_shift(images, np.random.default_rng(0), max_shift=2)
    assert shifted.dtype == torch.uint8 and shifted.shape == images.shape
    ys, xs = torch.nonzero(shifted[:, 0] == 255, as_tuple=True)[1:]
    assert len(ys) == 16 and (abs(ys - 5) <= 2).all() and (abs(xs - 6) <= 2).all()
    assert len(set(zip(ys.tolist(), xs.tolist()))) > 1
    again = random_shift(images, np.random.default_rng(0), max_shift=2)
    assert torch.equal(shifted, again)
