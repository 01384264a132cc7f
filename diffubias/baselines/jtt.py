"""Just Train Twice (JTT, Liu et al. 2021): retrain on the training set with the error set of an
ERM model (`diffubias.baselines.error_set`) upsampled, each error appearing lambda times, as the
paper and its code do (a loss weight instead would take fewer optimizer steps, and Adam damps
rare large gradients).

`jtt` uses the fixed T and lambda of `BaselineOptions`. `jtt_tuned` chooses them on the
validation split as the paper does, over `TUNING_GRID`: by worst-group accuracy, which reads the
validation split's bias labels (JTT's own protocol), or, in `jtt_tuned_blind`, by worst-class
accuracy, which needs no bias label. It knows nothing of the other methods.
"""

from __future__ import annotations

import numpy as np

from diffubias.baselines.error_set import ErrorSet, identify_errors
from diffubias.baselines.shared import (
    DEFAULT_OPTIONS,
    BaselineOptions,
    MethodResult,
    SharedStages,
    method_result,
    repeated_samples,
    shared_stages_for,
)
from diffubias.config import RunConfig
from diffubias.evaluation import predict
from diffubias.prepared import PreparedDataset, train_evaluated
from diffubias.progress import ProgressFn, part
from diffubias.training import TrainResult

# the values JTT's paper sweeps for its image datasets, cut to fit a CPU budget: T in epochs of
# the identification model, lambda the times each error appears
TUNING_GRID = {"epochs_T": (1, 2), "upweight": (20, 50)}


def jtt(data: PreparedDataset, config: RunConfig, *, options: BaselineOptions = DEFAULT_OPTIONS,
        shared: SharedStages | None = None, progress: ProgressFn | None = None) -> MethodResult:
    """Just Train Twice: ERM for T epochs, then retrain on the training set plus lambda - 1
    extra copies of each of its errors (so each error appears lambda times per epoch)."""
    shared = shared_stages_for(shared, data, config, options)
    errors = shared.error_set(part(progress, 0.0, 0.3))
    training, extra = _retrain(data, config, errors, options.jtt_upweight,
                               part(progress, 0.3, 1.0))
    return _result("jtt", data, config, training, errors, options.jtt_upweight, extra,
                   seconds=training.seconds + shared.seconds["error_set"],
                   info={"epochs_T": shared.jtt_epochs})


def jtt_tuned(data: PreparedDataset, config: RunConfig, *,
              options: BaselineOptions = DEFAULT_OPTIONS, shared: SharedStages | None = None,
              progress: ProgressFn | None = None) -> MethodResult:
    """JTT with T and lambda chosen on the validation split by worst-group accuracy, reading
    the validation split's bias labels as JTT's paper does."""
    return _tuned("jtt-tuned", "worst-group", data, config, options, shared, progress)


def jtt_tuned_blind(data: PreparedDataset, config: RunConfig, *,
                    options: BaselineOptions = DEFAULT_OPTIONS,
                    shared: SharedStages | None = None,
                    progress: ProgressFn | None = None) -> MethodResult:
    """JTT with T and lambda chosen on the validation split by worst-class accuracy: no bias
    label is read."""
    return _tuned("jtt-tuned-blind", "worst-class", data, config, options, shared, progress)


def _tuned(name: str, criterion: str, data: PreparedDataset, config: RunConfig,
           options: BaselineOptions, shared: SharedStages | None,
           progress: ProgressFn | None) -> MethodResult:
    shared = shared_stages_for(shared, data, config, options)
    positions, valid = data.split("valid")
    bias = data.bias_of(positions)
    if criterion == "worst-group" and (bias is None or (bias < 0).any()):
        raise ValueError(f"{name} chooses T and lambda by worst-group accuracy, which needs the "
                         "validation split's bias labels; use jtt-tuned-blind")
    labels = data.ds.labels[positions]
    groups = labels if criterion == "worst-class" else labels * (int(bias.max()) + 1) + bias
    grid = [(t, lam) for t in TUNING_GRID["epochs_T"] for lam in TUNING_GRID["upweight"]]
    best, tried, seconds, counted = None, [], 0.0, set()
    for i, (epochs_t, upweight) in enumerate(grid):
        span = part(progress, i / len(grid), (i + 1) / len(grid))
        # one identification model per T and one retraining per (T, lambda), shared with the
        # other criterion's run: both variants train the same candidates and differ only in
        # which they keep. Each still counts every candidate's time.
        errors = shared.once(("jtt-identification", epochs_t), "jtt_tuning", lambda: (
            identify_errors(data, config, epochs=epochs_t, progress=part(span, 0.0, 0.3))))
        if epochs_t not in counted:
            counted.add(epochs_t)
            seconds += errors.training.seconds
        training, extra = shared.once(("jtt-candidate", epochs_t, upweight), "jtt_tuning",
                                      lambda: _retrain(data, config, errors, upweight,
                                                       part(span, 0.3, 1.0)))
        seconds += training.seconds
        predictions, _ = predict(training.model, valid, device=config.resolved_device())
        correct = predictions == labels
        score = float(min(correct[groups == g].mean() for g in np.unique(groups)))
        tried.append({"epochs_T": epochs_t, "upweight": upweight, criterion: score})
        if best is None or score > best[0]:
            best = (score, epochs_t, upweight, errors, training, extra)
    score, epochs_t, upweight, errors, training, extra = best
    return _result(name, data, config, training, errors, upweight, extra, seconds=seconds,
                   info={"epochs_T": epochs_t, "selected_by": f"validation {criterion} "
                         "accuracy", "validation_score": score, "grid": tried})


def _retrain(data: PreparedDataset, config: RunConfig, errors: ErrorSet, upweight: int,
             progress: ProgressFn | None) -> tuple[TrainResult, int]:
    """The second training: the training set plus upweight - 1 copies of each error."""
    upsampled = errors.positions[errors.errors]
    extra = int(upweight) - 1
    added = None
    if extra and len(upsampled):
        added = repeated_samples(data, upsampled, extra)
    return train_evaluated(data, config, desc="JTT", added=added, progress=progress), (
        extra if added is not None else 0)


def _result(name: str, data: PreparedDataset, config: RunConfig, training: TrainResult,
            errors: ErrorSet, upweight: int, extra: int, *, seconds: float,
            info: dict) -> MethodResult:
    upsampled = errors.positions[errors.errors]
    n_added = extra * len(upsampled)
    return method_result(name, data, config, training, seconds=seconds, n_added=n_added,
                         info={**info, "upweight": upweight,
                               "error_set_size": int(errors.errors.sum()),
                               "n_upsampled": n_added},
                         added_from=np.repeat(upsampled, extra) if n_added else None)

