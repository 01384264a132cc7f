"""One training loop for every classifier the method trains: the biased model (Generalized Cross
Entropy), the vanilla model and the debiased model (plain cross entropy).

It takes a model and `ImageSource`s and returns the trained model with its history. The
checkpoint is selected on the validation split (never the test split: the reference code's defect).
It knows nothing of where images come from or what the models are for.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from diffubias.images import ImageSource
from diffubias.progress import ProgressFn

LOSSES = ("ce", "gce")
# valid_accuracy: the best epoch on validation (the models that should generalise); last: the last
# epoch; train_valid_gap: the epoch whose train accuracy most exceeds its validation accuracy,
# the one that fits the training set but generalises worst (a biased model, chosen without bias
# labels when the validation split is less biased than train)
SELECTIONS = ("valid_accuracy", "last", "train_valid_gap")

# (logits (B, C), labels (B,), positions (B,) into the training source, float images (B, 3, H, W))
# -> per-sample loss (B,). Replaces the configured loss; it may train a model of its own on the
# same batch (LfF's biased model does).
StepLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 6
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    loss: str = "ce"
    gce_q: float = 0.7  # LfF's value: large enough that easy (bias-aligned) samples dominate
    # "last" suits the biased model: its best checkpoint on an unbiased validation split is
    # its least biased one, the opposite of what detection needs.
    selection: str = "valid_accuracy"
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; expected one of {LOSSES}")
        if not 0 < self.gce_q <= 1:
            raise ValueError(f"gce_q must be in (0, 1], got {self.gce_q}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"unknown selection {self.selection!r}; expected one of {SELECTIONS}")


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    train_loss: float
    train_accuracy: float
    valid_accuracy: float | None


@dataclass(frozen=True)
class TrainResult:
    model: nn.Module = field(repr=False)
    history: tuple[EpochStats, ...]
    best_epoch: int
    valid_accuracy: float | None
    seconds: float


def gce_loss(logits: torch.Tensor, targets: torch.Tensor, q: float) -> torch.Tensor:
    """Per-sample Generalized Cross Entropy in LfF's form: CE * q * p_y^q (p_y detached).

    Its gradient is q times that of GCE's (1 - p_y^q) / q, i.e. CE's gradient scaled by
    q * p_y^q: samples the model already finds easy dominate, so it latches onto the shortcut.
    """
    p_y = F.softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1).detach()  # (B,)
    return F.cross_entropy(logits, targets, reduction="none") * q * p_y.pow(q)


def to_float(images: torch.Tensor, device: str) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float in [0, 1] on `device`."""
    return images.to(device, non_blocking=True).float().div_(255)


@torch.no_grad()
def accuracy(model: nn.Module, source: ImageSource, *, batch_size: int = 512,
             device: str = "cpu") -> float:
    was_training = model.training
    model.eval()
    correct = 0
    for images, labels, _ in source.batches(batch_size):
        correct += (model(to_float(images, device)).argmax(1).cpu() == labels).sum().item()
    model.train(was_training)
    return correct / max(len(source), 1)


def train_classifier(model: nn.Module, train: ImageSource, *, valid: ImageSource | None,
                     config: TrainConfig, sample_weights: torch.Tensor | None = None,
                     progress: ProgressFn | None = None, desc: str = "train",
                     step_loss: StepLoss | None = None) -> TrainResult:
    """Trains `model` in place and returns it loaded with the selected checkpoint.

    `sample_weights` (float, one per position of `train`) scales each sample's loss; baselines
    such as JTT use it. `step_loss`, when given, computes each step's per-sample loss instead of
    `config.loss` (LfF's relative-difficulty weighting). Same model init, data and config give
    the same weights.
    """
    if len(train) == 0:
        raise ValueError("the training set is empty")
    if sample_weights is not None and len(sample_weights) != len(train):
        raise ValueError(f"sample_weights has {len(sample_weights)} entries for {len(train)} samples")
    start = time.perf_counter()
    model.to(config.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = -(-len(train) // config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    history: list[EpochStats] = []
    best_state, best_epoch, best_valid, best_gap = None, config.epochs, None, None
    torch.manual_seed(config.seed)  # dropout/augmentation randomness, if a model has any
    bar = tqdm(total=total_steps, desc=desc, unit="step", leave=False)
    for epoch in range(1, config.epochs + 1):
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for images, labels, positions in train.batches(config.batch_size, shuffle=True,
                                                       seed=config.seed * 10_007 + epoch):
            labels = labels.to(config.device)
            inputs = to_float(images, config.device)
            logits = model(inputs)
            if step_loss is not None:
                per_sample = step_loss(logits, labels, positions, inputs)
            elif config.loss == "gce":
                per_sample = gce_loss(logits, labels, config.gce_q)
            else:
                per_sample = F.cross_entropy(logits, labels, reduction="none")
            if sample_weights is not None:
                per_sample = per_sample * sample_weights[positions].to(config.device)
            loss = per_sample.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(labels)
            correct += (logits.argmax(1) == labels).sum().item()
            seen += len(labels)
            bar.update(1)
            if progress is not None:
                progress(bar.n / total_steps, f"{desc}: epoch {epoch}/{config.epochs}")
        valid_acc = (accuracy(model, valid, device=config.device)
                     if valid is not None and len(valid) else None)
        history.append(EpochStats(epoch, loss_sum / seen, correct / seen, valid_acc))
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}",
                        valid=f"{valid_acc:.3f}" if valid_acc is not None else "-")
        if (config.selection == "valid_accuracy" and valid_acc is not None
                and (best_valid is None or valid_acc > best_valid)):
            best_valid, best_epoch = valid_acc, epoch
            best_state = copy.deepcopy(model.state_dict())
        gap = None if valid_acc is None else correct / seen - valid_acc
        if (config.selection == "train_valid_gap" and gap is not None
                and (best_gap is None or gap > best_gap)):
            best_gap, best_valid, best_epoch = gap, valid_acc, epoch
            best_state = copy.deepcopy(model.state_dict())
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_valid = history[-1].valid_accuracy
    model.eval()
    return TrainResult(model, tuple(history), best_epoch, best_valid, time.perf_counter() - start)
