"""Stages 7-8, debias: the vanilla model (training split only), the debiased model (training
split plus the generated images) and any baselines the config names, each evaluated on the test
split by bias group.

Every model gets the same seeded initialisation, schedule and validation-chosen checkpoint
(`diffubias.prepared.train_evaluated`), so the only difference between vanilla and debiased is
the generated data. Baselines run through `diffubias.baselines.run.run_baselines`, from the
given candidates (the ones a person kept). Knows nothing of where weights or metrics are stored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from diffubias.config import RunConfig
from diffubias.evaluation import GroupAccuracy
from diffubias.prepared import PreparedDataset, test_accuracy, train_evaluated
from diffubias.progress import ProgressFn, part, report
from diffubias.training import TrainResult


@dataclass(frozen=True, eq=False)
class TrainedModel:
    """One trained and evaluated classifier of the debias stage."""

    role: str  # vanilla, debiased, or a baseline's name
    training: TrainResult = field(repr=False)
    test: GroupAccuracy
    n_train: int  # samples per epoch
    n_generated: int = 0  # of those, generated images
    info: dict = field(default_factory=dict)  # method-specific figures (baselines)

    @property
    def model(self) -> nn.Module:
        return self.training.model

    def metrics(self, config: RunConfig) -> dict:
        """JSON-able: what report.json and the app's store keep of this model."""
        return {"test": self.test.to_dict(), "valid_accuracy": self.training.valid_accuracy,
                "best_epoch": self.training.best_epoch, "epochs": config.debias_epochs,
                "n_train": self.n_train, "n_generated": self.n_generated,
                "info": dict(self.info),
                "history": [vars(epoch) for epoch in self.training.history]}


@dataclass(frozen=True, eq=False)
class Debiasing:
    models: dict[str, TrainedModel]  # in training order: vanilla, debiased, baselines
    n_train: int
    n_generated: int


def train_debiased(data: PreparedDataset, config: RunConfig, generated_images: torch.Tensor,
                   generated_labels: torch.Tensor, *, train_vanilla: bool = True,
                   candidates: np.ndarray | None = None,
                   before_each: Callable[[str], None] | None = None,
                   progress: ProgressFn | None = None) -> Debiasing:
    """Vanilla and debiased models, then `config.baselines`.

    1. vanilla: CE on the training split (skipped when `train_vanilla` is False);
    2. debiased: CE on the training split plus `generated_images` (uint8 (N, 3, S, S)) with
       `generated_labels`;
    3. baselines, from `candidates` (dataset positions; None: their own GCE detection);
    4. every model evaluated on the test split.
    `before_each(name)` runs before each model: a log line, or the app's stop check.
    """
    n_train = len(data.split("train")[0])
    n_generated = len(generated_labels)
    # the vanilla/debiased pair gets a share of the bar by its rough cost against the baselines
    main_end = 1.0 / (1 + 0.8 * len(config.baselines))
    plan = [("debiased", (generated_images, generated_labels))]
    if train_vanilla:
        plan.insert(0, ("vanilla", None))
    models: dict[str, TrainedModel] = {}
    for i, (role, added) in enumerate(plan):
        if before_each is not None:
            before_each(role)
        span = part(progress, main_end * i / len(plan), main_end * (i + 1) / len(plan))
        training = train_evaluated(data, config, desc=f"{role} model", added=added,
                                   progress=span)
        n_added = n_generated if added is not None else 0
        models[role] = TrainedModel(role, training, test_accuracy(data, training.model, config),
                                    n_train + n_added, n_added)
    if config.baselines:
        from diffubias.baselines.run import run_baselines

        results = run_baselines(config.baselines, data, config, candidates=candidates,
                                progress=part(progress, main_end, 1.0), before_each=before_each)
        for name, result in results.items():
            models[name] = TrainedModel(name, result.training, result.test, result.n_train,
                                        0, {"seconds": result.seconds, **dict(result.info)})
    report(progress, 1.0, "trained and evaluated")
    return Debiasing(models, n_train, n_generated)
