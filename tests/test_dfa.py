"""DFA (`diffubias.baselines.dfa`) on the planted-bias folder: two independently initialised
encoders, the swap augmentation switched on after a fifth of training, and a model that beats
vanilla on the planted conflicting test samples."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from planted_methods import planted_folder, planted_run  # noqa: F401, F811

from diffubias.baselines.dfa import SWAP_AFTER, dfa, encoder
from diffubias.baselines.vanilla import vanilla

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_dfa_swaps_after_a_fifth_and_beats_vanilla_on_conflicts(planted_run):
    cfg, data, _ = planted_run
    cfg = replace(cfg, debias_epochs=10)
    result = dfa(data, cfg)
    steps = result.info["steps"]
    assert steps == cfg.debias_epochs * -(-len(data.split("train")[0]) // cfg.batch_size)
    assert result.info["swapped_steps"] == steps - int(SWAP_AFTER * steps)
    assert result.test.conflicting >= vanilla(data, cfg).test.conflicting + 0.3


def test_the_two_encoders_start_apart(planted_run):
    cfg, data, _ = planted_run
    first, dim = encoder(data, cfg)
    other, _ = encoder(data, replace(cfg, seed=cfg.seed + 1))
    images = torch.rand(4, 3, data.image_size, data.image_size) * 255
    assert first(images).shape == (4, dim)
    assert not torch.equal(first(images), other(images))
