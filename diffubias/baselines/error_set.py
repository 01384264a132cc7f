"""JTT's identification stage (`identify_errors` -> `ErrorSet`): the samples an ERM model gets
wrong, which JTT upsamples. The benchmark also ranks samples by its losses, to compare them with
the GCE detection's. It knows nothing of how the error set is weighted
(`diffubias.baselines.jtt`) or cached (`diffubias.baselines.shared.SharedStages.error_set`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from diffubias.config import RunConfig
from diffubias.evaluation import predict
from diffubias.prepared import PreparedDataset, new_classifier, train_config
from diffubias.progress import ProgressFn, part
from diffubias.scoring import score_samples
from diffubias.training import TrainResult, train_classifier


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
    best on an unbiased validation split would be the least biased), and finds its mistakes."""
    positions, train = data.split("train")
    _, valid = data.split("valid")
    device = config.resolved_device()
    training = train_classifier(new_classifier(data, config), train, valid=valid,
                                config=train_config(config, epochs=epochs, loss="ce",
                                                    selection="last"),
                                progress=part(progress, 0.0, 0.9), desc="JTT ERM (CE)")
    losses = score_samples(training.model, train, device=device)
    predictions, _ = predict(training.model, train, device=device)
    return ErrorSet(training, positions, losses, predictions != train.labels.numpy())
