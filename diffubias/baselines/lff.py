"""Learning from Failure (LfF, Nam et al. 2020): a biased model trained with GCE next to the
debiased one, whose per-sample CE is weighted by how much harder the sample is for the biased
model. `LfFLoss` is the step loss that does both; `lff` trains and evaluates with it.
It knows nothing of the other methods.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from diffubias.baselines.shared import (
    DEFAULT_OPTIONS,
    BaselineOptions,
    MethodResult,
    SharedStages,
    method_result,
    shared_stages_for,
)
from diffubias.config import RunConfig
from diffubias.prepared import PreparedDataset, new_classifier, train_evaluated
from diffubias.progress import ProgressFn
from diffubias.training import gce_loss


class RelativeDifficulty:
    """LfF's per-sample weights W = L_B / (L_B + L_D + 1e-8), where each L is a sample's CE
    under one of two models (B: the biased one, D: the one being debiased), smoothed by an EMA
    over the epochs and divided by the largest smoothed loss of its class. Samples the biased
    model gets wrong (bias-conflicting ones) get W near 1, those it finds easy W near 0. DFA
    weights its intrinsic side the same way."""

    def __init__(self, labels: torch.Tensor, *, num_classes: int, ema: float) -> None:
        self.labels = labels.cpu()
        self.num_classes, self.ema = num_classes, ema
        n = len(labels)
        self.loss_b = torch.zeros(n)  # EMA of the biased model's CE per sample
        self.loss_d = torch.zeros(n)
        self.seen = torch.zeros(n)  # 1 once a sample's EMA holds a value

    def _smooth(self, ema: torch.Tensor, loss: torch.Tensor, positions: torch.Tensor) -> None:
        # the first value of a sample is taken as is; later ones are averaged in
        ema[positions] = self.ema * ema[positions] + (1 - self.ema * self.seen[positions]) * loss

    def _normalised(self, ema: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        class_max = torch.zeros(self.num_classes).scatter_reduce(0, self.labels, ema, "amax")
        return ema[positions] / class_max[self.labels[positions]].clamp_min(1e-8)

    def __call__(self, ce_biased: torch.Tensor, ce_debiased: torch.Tensor,
                 positions: torch.Tensor) -> torch.Tensor:
        """Folds this batch's CE of both models (per sample) into the EMAs; W of the batch."""
        self._smooth(self.loss_b, ce_biased.detach().cpu(), positions)
        self._smooth(self.loss_d, ce_debiased.detach().cpu(), positions)
        self.seen[positions] = 1.0
        loss_b = self._normalised(self.loss_b, positions)
        return loss_b / (loss_b + self._normalised(self.loss_d, positions) + 1e-8)


class LfFLoss:
    """LfF's step loss for `train_classifier`: on each batch it trains the biased model with GCE
    and returns the debiased model's CE weighted by relative difficulty (`RelativeDifficulty`).
    `weights` holds the last W of every training sample."""

    def __init__(self, biased: nn.Module, labels: torch.Tensor, *, num_classes: int, q: float,
                 ema: float, lr: float, weight_decay: float = 0.0, device: str = "cpu") -> None:
        self.biased = biased.to(device)
        self.optimizer = torch.optim.Adam(biased.parameters(), lr=lr, weight_decay=weight_decay)
        self.q = q
        self.difficulty = RelativeDifficulty(labels, num_classes=num_classes, ema=ema)
        self.weights = torch.ones(len(labels))

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor,
                 inputs: torch.Tensor) -> torch.Tensor:
        self.biased.train()
        logits_b = self.biased(inputs)
        ce_d = F.cross_entropy(logits, labels, reduction="none")
        weight = self.difficulty(F.cross_entropy(logits_b, labels, reduction="none"), ce_d,
                                 positions)  # (B,)
        self.weights[positions] = weight
        # The two models share no parameters, so stepping the biased one here, from the same
        # pre-step logits LfF uses, equals LfF's joint backward of both losses.
        self.optimizer.zero_grad(set_to_none=True)
        gce_loss(logits_b, labels, self.q).mean().backward()
        self.optimizer.step()
        return ce_d * weight.to(ce_d.device)


# LfF initialises its two models independently; the debiased one starts from the run's seeded
# initialisation like every compared model, the biased one from this seed offset
BIASED_SEED_OFFSET = 7919


def biased_initialisation(data: PreparedDataset, config: RunConfig) -> nn.Module:
    """LfF's biased model before training: seeded, and independent of the debiased model's."""
    return new_classifier(data, replace(config, seed=config.seed + BIASED_SEED_OFFSET))


def lff(data: PreparedDataset, config: RunConfig, *, options: BaselineOptions = DEFAULT_OPTIONS,
        shared: SharedStages | None = None, progress: ProgressFn | None = None) -> MethodResult:
    """Learning from Failure: biased (GCE) and debiased (CE, relative-difficulty weights)
    models trained jointly; the debiased one is evaluated."""
    shared_stages_for(shared, data, config, options)
    _, train = data.split("train")
    weighting = LfFLoss(biased_initialisation(data, config), train.labels,
                        num_classes=data.ds.num_classes, q=config.gce_q, ema=options.lff_ema,
                        lr=config.lr, device=config.resolved_device())
    training = train_evaluated(data, config, desc="LfF", progress=progress, step_loss=weighting)
    return method_result("lff", data, config, training, seconds=training.seconds,
                         info={"ema": options.lff_ema, "gce_q": config.gce_q},
                         weights=weighting.weights.numpy())
