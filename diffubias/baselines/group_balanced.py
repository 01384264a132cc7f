"""Group-balanced ERM, the group-aware upper bound: plain cross entropy with every (class, bias)
group of the training split weighted equally, read from the dataset's true bias labels. It is
what a method could reach if it knew which samples are bias-conflicting (the reweighting
baseline of GroupDRO's paper, Sagawa et al. 2020), so it is labelled an upper bound wherever it
appears and never offered as a default. It knows nothing of the other methods.
"""

from __future__ import annotations

import numpy as np
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
from diffubias.progress import ProgressFn


def group_weights(labels: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """One loss weight per sample: n / (groups x the size of its (label, bias) group), so every
    group weighs the same in total and the weights average 1."""
    groups = labels.astype(np.int64) * (int(bias.max()) + 1) + bias.astype(np.int64)
    _, index, counts = np.unique(groups, return_inverse=True, return_counts=True)
    return (len(labels) / (len(counts) * counts[index])).astype(np.float32)


def group_balanced(data: PreparedDataset, config: RunConfig, *,
                   options: BaselineOptions = DEFAULT_OPTIONS, shared: SharedStages | None = None,
                   progress: ProgressFn | None = None) -> MethodResult:
    """ERM with the training split's (class, bias) groups weighted equally: an upper bound that
    reads the true bias labels."""
    shared_stages_for(shared, data, config, options)
    positions, _ = data.split("train")
    bias = data.bias_of(positions)
    if bias is None or (bias < 0).any():
        raise ValueError("group-balanced needs the bias attribute of every training sample "
                         "(the dataset's bias column): it is an upper bound that reads them")
    weights = group_weights(data.ds.labels[positions], bias)
    training = train_evaluated(data, config, desc="group-balanced (bias labels)",
                               progress=progress, sample_weights=torch.from_numpy(weights))
    return method_result("group-balanced", data, config, training, seconds=training.seconds,
                         info={"n_groups": int(len(np.unique(weights)))}, weights=weights)
