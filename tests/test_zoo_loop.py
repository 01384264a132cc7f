"""The zoo's training loop: a run killed after a checkpoint and started again ends where an
uninterrupted run ends, and a checkpoint of another run is refused."""

import pytest
import torch

from diffubias.zoo.captioner import train_captioner
from diffubias.zoo.checkpoint import load_checkpoint
from diffubias.zoo.corpus import make_corpus
from diffubias.zoo.loop import (CHECKPOINT_NAME, BatchOrder, read_checkpoint_step,
                                warmup_cosine)
from tests.zoo_support import TINY_SPEC


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def corpus():
    return make_corpus("colored-digits", per_cell=2, seed=0)


def _train(corpus, folder, *, steps=6, on_checkpoint=None, spec=TINY_SPEC):
    return train_captioner(corpus, folder, spec=spec, steps=steps, seed=0, checkpoint_every=3,
                           show_progress=False, on_checkpoint=on_checkpoint)


def _checkpoint(folder):
    groups, meta = load_checkpoint(folder / CHECKPOINT_NAME)
    return {**meta, **groups}


def test_killed_and_resumed_run_equals_an_uninterrupted_one(corpus, tmp_path, one_torch_thread):
    whole = _train(corpus, tmp_path / "whole")

    def kill(step, model, processor):
        if step == 3:
            raise Killed
    with pytest.raises(Killed):
        _train(corpus, tmp_path / "killed", on_checkpoint=kill)
    assert read_checkpoint_step(tmp_path / "killed") == 3
    resumed = _train(corpus, tmp_path / "killed")
    assert resumed.loop.resumed_from == 3 and resumed.loop.steps == 6
    for (name, a), b in zip(whole.model.state_dict().items(),
                            resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    first, second = _checkpoint(tmp_path / "whole"), _checkpoint(tmp_path / "killed")
    assert first["step"] == second["step"] == 6
    for name, tensor in first["model"].items():
        assert torch.equal(tensor, second["model"][name]), name
    # nothing half-written next to it
    assert sorted(p.name for p in (tmp_path / "killed").iterdir()) == [CHECKPOINT_NAME]


def test_steps_at_or_below_the_checkpoint_write_the_model_as_it_stands(corpus, tmp_path,
                                                                        one_torch_thread):
    first = _train(corpus, tmp_path, steps=3)
    again = _train(corpus, tmp_path, steps=3)
    assert again.loop.resumed_from == 3 and again.loop.steps == 3
    for a, b in zip(first.model.parameters(), again.model.parameters()):
        assert torch.equal(a, b)


def test_a_checkpoint_of_another_run_is_refused(corpus, tmp_path, one_torch_thread):
    _train(corpus, tmp_path, steps=3)
    other = TINY_SPEC.__class__(**{**TINY_SPEC.to_dict(), "learning_rate": 0.01})
    with pytest.raises(ValueError, match="belongs to another training run .*learning_rate"):
        _train(corpus, tmp_path, steps=6, spec=other)


def test_batch_order_covers_each_epoch_once_and_is_a_function_of_the_step():
    order = BatchOrder(10, 3, seed=0)
    epoch = sorted(i for step in range(3) for i in order.at(step).tolist())
    assert len(set(epoch)) == 9  # 3 full batches a 10-sample epoch; one sample waits
    fresh = BatchOrder(10, 3, seed=0)
    assert fresh.at(4).tolist() == order.at(4).tolist()


def test_warmup_then_cosine_to_the_floor():
    lrs = [warmup_cosine(s, steps=100, warmup=10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert warmup_cosine(100, steps=100, warmup=10) == pytest.approx(0.1)
