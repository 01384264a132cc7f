"""Disentangled Feature Augmentation (DFA, Lee et al. 2021): two encoders, one for the intrinsic
attributes and one for the bias, trained side by side; the bias side with GCE (it learns the
shortcut), the intrinsic side with LfF's relative-difficulty weights; after a first part of
training, bias features are swapped between the samples of a batch, which makes new
bias-conflicting feature combinations (the augmentation). It knows nothing of the other methods.

Each side has a linear classifier on the concatenation [z_intrinsic, z_bias]; the intrinsic one
never sends gradients into the bias features and the bias one never into the intrinsic features.
The evaluated model predicts with the intrinsic classifier. A DFA model is not the product's
`Classifier` (two encoders), so it is a benchmark method, not a baseline the app stores.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffubias.baselines.lff import BIASED_SEED_OFFSET, RelativeDifficulty
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

# DFA's own settings for Colored MNIST: GCE and swap terms weighted 10, swap loss weight 1, and
# the swap starting after a fifth of the training steps (10k of its 50k)
LAMBDA_DIS_ALIGN = 10.0
LAMBDA_SWAP_ALIGN = 10.0
LAMBDA_SWAP = 1.0
SWAP_AFTER = 0.2


class DisentangledModel(nn.Module):
    """Intrinsic and bias encoders with a linear classifier each over [z_i, z_b]. `forward`
    returns the intrinsic classifier's logits, with the bias features detached; it keeps the
    last features for the step loss."""

    def __init__(self, intrinsic: nn.Module, bias: nn.Module, dim: int, num_classes: int):
        super().__init__()
        self.intrinsic, self.bias = intrinsic, bias
        self.classify_intrinsic = nn.Linear(2 * dim, num_classes)
        self.classify_bias = nn.Linear(2 * dim, num_classes)
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        z_i, z_b = self.intrinsic(images), self.bias(images)
        self.last = (z_i, z_b)
        return self.classify_intrinsic(torch.cat((z_i, z_b.detach()), dim=1))

    def bias_logits(self, z_i: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        return self.classify_bias(torch.cat((z_i.detach(), z_b), dim=1))


def encoder(data: PreparedDataset, config: RunConfig) -> tuple[nn.Module, int]:
    """The run's classifier without its last linear layer: images to features."""
    model = new_classifier(data, config)
    backbone = model.backbone
    if isinstance(backbone, nn.Sequential) and isinstance(backbone[-1], nn.Linear):
        dim = backbone[-1].in_features
        backbone[-1] = nn.Identity()
    else:  # torchvision's ResNet
        dim = backbone.fc.in_features
        backbone.fc = nn.Identity()
    return model, dim


class DFALoss:
    """DFA's step loss: W * CE of the intrinsic classifier plus GCE of the bias classifier, and,
    after `swap_after_step`, the same on bias features permuted within the batch (the bias
    classifier then predicts the permuted samples' labels). W is LfF's relative difficulty
    (`RelativeDifficulty`) from both classifiers' per-sample CE."""

    def __init__(self, model: DisentangledModel, labels: torch.Tensor, *, num_classes: int,
                 q: float, ema: float, swap_after_step: int, seed: int) -> None:
        self.model, self.q = model, q
        self.difficulty = RelativeDifficulty(labels, num_classes=num_classes, ema=ema)
        self.swap_after_step, self.step, self.swapped_steps = swap_after_step, 0, 0
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor,
                 inputs: torch.Tensor) -> torch.Tensor:
        z_i, z_b = self.model.last
        logits_b = self.model.bias_logits(z_i, z_b)
        ce_i = F.cross_entropy(logits, labels, reduction="none")
        weight = self.difficulty(F.cross_entropy(logits_b, labels, reduction="none"), ce_i,
                                 positions).to(ce_i.device)
        loss = weight * ce_i + LAMBDA_DIS_ALIGN * gce_loss(logits_b, labels, self.q)
        self.step += 1
        if self.step > self.swap_after_step:
            order = torch.from_numpy(self.rng.permutation(len(labels))).to(z_b.device)
            z_swap = z_b[order]
            mixed_i = self.model.classify_intrinsic(torch.cat((z_i, z_swap.detach()), dim=1))
            mixed_b = self.model.bias_logits(z_i, z_swap)
            loss = loss + LAMBDA_SWAP * (
                weight * F.cross_entropy(mixed_i, labels, reduction="none")
                + LAMBDA_SWAP_ALIGN * gce_loss(mixed_b, labels[order], self.q))
            self.swapped_steps += 1
        return loss


def dfa(data: PreparedDataset, config: RunConfig, *, options: BaselineOptions = DEFAULT_OPTIONS,
        shared: SharedStages | None = None, progress: ProgressFn | None = None) -> MethodResult:
    """DFA: disentangled intrinsic and bias features, the bias side trained with GCE, the
    intrinsic side reweighted, bias features swapped within batches after a fifth of training;
    evaluated with the intrinsic classifier."""
    shared_stages_for(shared, data, config, options)
    intrinsic, dim = encoder(data, config)
    # independent of the intrinsic encoder's, as LfF's biased model
    bias, _ = encoder(data, replace(config, seed=config.seed + BIASED_SEED_OFFSET))
    model = DisentangledModel(intrinsic, bias, dim, data.ds.num_classes)
    _, train = data.split("train")
    steps = config.debias_epochs * -(-len(train) // config.batch_size)
    loss = DFALoss(model, train.labels, num_classes=data.ds.num_classes, q=config.gce_q,
                   ema=options.lff_ema, swap_after_step=int(SWAP_AFTER * steps),
                   seed=config.seed)
    training = train_evaluated(data, config, desc="DFA", model=model, step_loss=loss,
                               progress=progress)
    return method_result("dfa", data, config, training, seconds=training.seconds,
                         info={"swapped_steps": loss.swapped_steps, "steps": loss.step,
                               "lambda_dis_align": LAMBDA_DIS_ALIGN,
                               "lambda_swap_align": LAMBDA_SWAP_ALIGN,
                               "lambda_swap": LAMBDA_SWAP, "ema": options.lff_ema})
