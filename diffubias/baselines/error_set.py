"""JTT's identification stage (`identify_errors` -> `ErrorSet`): the samples an ERM model gets
wrong, which JTT upsamples. Its model and losses are the `erm-early` ranker's
(`diffubias.rankers`). It knows nothing of how the error set is weighted
(`diffubias.baselines.jtt`) or cached (`diffubias.baselines.shared.SharedStages.error_set`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from diffubias.config import RunConfig
from diffubias.evaluation import predict
from diffubias.prepared import PreparedDataset
from diffubias.progress import ProgressFn
from diffubias.rankers import train_and_score
from diffubias.training import TrainResult


@dataclass(frozen=True, eq=False)
class ErrorSet:
    """JTT's identification stage: an ERM model trained for T epochs, the CE loss of every
    training sample under it (higher: more likely bias-conflicting), and its mistakes."""

    training: TrainResult = field(repr=False)
    positions: np.ndarray  # dataset positions of the train samples, in source order
    losses: np.ndarray  # float32, CE under the ERM model, aligned with positions
    errors: np.ndarray  # bool, misclassified by the ERM model, aligned with positions


def identify_errors(data: PreparedDataset, config: RunConfig, *, epochs: int,
                    progress: ProgressFn | None = None) -> ErrorSet:
    """Trains ERM (plain CE) for `epochs`, keeping the last epoch (as for the biased model, the
    best on an unbiased validation split would be the least biased), and finds its mistakes.
    The model is the `erm-early` ranker's (`diffubias.rankers.train_and_score` with CE)."""
    positions, train = data.split("train")
    training, losses = train_and_score(data, config, loss="ce", epochs=epochs,
                                       desc="JTT ERM (CE)", progress=progress)
    predictions, _ = predict(training.model, train, device=config.resolved_device())
    return ErrorSet(training, positions, losses, predictions != train.labels.numpy())
