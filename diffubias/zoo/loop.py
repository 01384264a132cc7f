"""The zoo's training loop: seeded, checkpointed every few hundred steps, resumable after any kill.

`train_steps` runs an optimiser over `loss_at(step)` from the last checkpoint in
`checkpoint_dir` (or from the start) up to `steps`. A checkpoint holds the model, the optimiser,
the step, torch's global RNG state, the wall time spent so far and a fingerprint of everything
that defines the run; it is written atomically, so a kill leaves the previous one intact. The
same command resumes where the last checkpoint left off, and the result equals an uninterrupted
run's when `loss_at` is a pure function of the step and the model (draw batches from a generator
seeded by the step, noise from torch's global generator, which the checkpoint restores).

Knows: optimisation steps, checkpoints, the progress bar. Does not know: models, corpora, files
other than its checkpoint.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from diffubias.zoo.checkpoint import (load_checkpoint, optimizer_parts, optimizer_state,
                                      read_meta, save_checkpoint)

CHECKPOINT_NAME = "last.safetensors"


@dataclass(frozen=True)
class LoopResult:
    steps: int  # steps done in all
    resumed_from: int  # the checkpoint's step this session started from (0: a fresh start)
    wall_seconds: float  # training time summed over every session of this run
    last_loss: float  # the last step's loss (nan when no step ran)


def warmup_cosine(step: int, *, steps: int, warmup: int, floor: float = 0.1) -> float:
    """Learning-rate multiplier: linear warm-up over `warmup` steps, then a cosine decay to
    `floor` at `steps`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def train_steps(*, model: nn.Module, optimizer: torch.optim.Optimizer,
                loss_at: Callable[[int], torch.Tensor], steps: int, checkpoint_dir: Path,
                checkpoint_every: int, fingerprint: dict, learning_rate: float,
                warmup: int = 0, max_grad_norm: float = 1.0, desc: str = "train",
                show_progress: bool = True,
                on_checkpoint: Callable[[int], None] | None = None) -> LoopResult:
    """Train `model` until `steps` steps are done, resuming from `checkpoint_dir` when it holds
    a checkpoint of the same `fingerprint`; `on_checkpoint(step)` runs after each checkpoint."""
    from tqdm.auto import tqdm

    if steps < 1 or checkpoint_every < 1:
        raise ValueError(f"steps and checkpoint_every must be at least 1; got {steps}, "
                         f"{checkpoint_every}")
    path = Path(checkpoint_dir) / CHECKPOINT_NAME
    start, wall_before = _resume(path, model, optimizer, fingerprint)
    began = time.monotonic()
    loss_value = math.nan
    model.train()
    with tqdm(total=steps, initial=min(start, steps), desc=desc, disable=not show_progress,
              unit="step", dynamic_ncols=True) as bar:
        for step in range(start, steps):
            scale = warmup_cosine(step, steps=steps, warmup=warmup)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate * scale
            loss = loss_at(step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            loss_value = float(loss.detach())
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
            done = step + 1
            if done % checkpoint_every == 0 or done == steps:
                wall = wall_before + time.monotonic() - began
                _save(path, model, optimizer, done, wall, loss_value, fingerprint)
                if on_checkpoint is not None:
                    on_checkpoint(done)
    model.eval()
    wall = wall_before + time.monotonic() - began
    return LoopResult(max(start, steps), start, wall, loss_value)


class BatchOrder:
    """Batch `step`'s sample indices: epochs of a permutation seeded by (seed, epoch), so any
    step's batch is known without replaying the ones before it (what resuming needs)."""

    def __init__(self, size: int, batch_size: int, seed: int) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.per_epoch = size // batch_size
        self._epoch, self._order = -1, np.empty(0, dtype=np.int64)

    def at(self, step: int) -> np.ndarray:
        epoch, within = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.size)
        return self._order[within * self.batch_size:(within + 1) * self.batch_size]


def read_checkpoint_step(checkpoint_dir: Path) -> int:
    """The step of the checkpoint in `checkpoint_dir`, 0 when there is none."""
    path = Path(checkpoint_dir) / CHECKPOINT_NAME
    if not path.is_file():
        return 0
    return int(read_meta(path)["step"])


def _fingerprint_text(fingerprint: dict) -> str:
    return json.dumps(fingerprint, sort_keys=True, default=str)


def _save(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int,
          wall_seconds: float, loss: float, fingerprint: dict) -> None:
    opt_tensors, opt_layout = optimizer_parts(optimizer.state_dict())
    save_checkpoint(path, {"model": model.state_dict(), "optimizer": opt_tensors,
                           "rng": {"torch": torch.get_rng_state()}},
                    {"step": step, "wall_seconds": wall_seconds, "loss": loss,
                     "optimizer": opt_layout, "fingerprint": _fingerprint_text(fingerprint)})


def _resume(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
            fingerprint: dict) -> tuple[int, float]:
    """(step, wall seconds) of the checkpoint at `path`, loaded into model and optimiser;
    (0, 0.0) when there is none. A checkpoint of another run is refused, not overwritten."""
    if not path.is_file():
        return 0, 0.0
    groups, state = load_checkpoint(path)
    if state["fingerprint"] != _fingerprint_text(fingerprint):
        theirs, ours = json.loads(state["fingerprint"]), json.loads(_fingerprint_text(fingerprint))
        differ = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        raise ValueError(f"the checkpoint {path} belongs to another training run (differs in "
                         f"{', '.join(differ)}); train into another folder, or delete it to "
                         "start over")
    model.load_state_dict(groups["model"])
    optimizer.load_state_dict(optimizer_state(groups.get("optimizer", {}), state["optimizer"]))
    torch.set_rng_state(groups["rng"]["torch"])
    return int(state["step"]), float(state["wall_seconds"])
