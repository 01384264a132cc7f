"""Just Train Twice (JTT, Liu et al. 2021): retrain with the error set of an ERM model
(`diffubias.baselines.error_set`) up-weighted by lambda. It knows nothing of the other methods.
"""

from __future__ import annotations

import torch

from diffubias.baselines.shared import (
    DEFAULT_OPTIONS,
    BaselineOptions,
    MethodResult,
    SharedStages,
    method_result,
    shared_stages_for,
)
from diffubias.config import RunConfig
from diffubias.prepared import PreparedDataset, train_evaluated
from diffubias.progress import ProgressFn, part


def jtt(data: PreparedDataset, config: RunConfig, *, options: BaselineOptions = DEFAULT_OPTIONS,
        shared: SharedStages | None = None, progress: ProgressFn | None = None) -> MethodResult:
    """Just Train Twice: ERM for T epochs, then retrain with its error set's loss weighted by
    lambda (the expectation of repeating each error lambda times, at the cost of one epoch)."""
    shared = shared_stages_for(shared, data, config, options)
    errors = shared.error_set(part(progress, 0.0, 0.3))
    weights = torch.ones(len(errors.errors))
    weights[torch.from_numpy(errors.errors)] = options.jtt_upweight
    training = train_evaluated(data, config, desc="JTT", progress=part(progress, 0.3, 1.0),
                               sample_weights=weights)
    return method_result("jtt", data, config, training,
                         seconds=training.seconds + shared.seconds["error_set"],
                         info={"epochs_T": shared.jtt_epochs, "upweight": options.jtt_upweight,
                               "error_set_size": int(errors.errors.sum())},
                         weights=weights.numpy())
