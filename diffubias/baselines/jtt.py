"""Just Train Twice (JTT, Liu et al. 2021): retrain on the training set with the error set of an
ERM model (`diffubias.baselines.error_set`) upsampled, each error appearing lambda times, as the
paper and its code do (a loss weight instead would take fewer optimizer steps, and Adam damps
rare large gradients). It knows nothing of the other methods.
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
from diffubias.decoding import read_images
from diffubias.prepared import PreparedDataset, train_evaluated
from diffubias.progress import ProgressFn, part


def jtt(data: PreparedDataset, config: RunConfig, *, options: BaselineOptions = DEFAULT_OPTIONS,
        shared: SharedStages | None = None, progress: ProgressFn | None = None) -> MethodResult:
    """Just Train Twice: ERM for T epochs, then retrain on the training set plus lambda - 1
    extra copies of each of its errors (so each error appears lambda times per epoch)."""
    shared = shared_stages_for(shared, data, config, options)
    errors = shared.error_set(part(progress, 0.0, 0.3))
    upsampled = errors.positions[errors.errors]
    extra = int(options.jtt_upweight) - 1
    added = None
    if extra and len(upsampled):
        images = read_images(data.ds, upsampled, size=data.image_size)
        labels = torch.from_numpy(data.ds.labels[upsampled].astype(np.int64))
        added = (images.repeat_interleave(extra, 0), labels.repeat_interleave(extra))
    training = train_evaluated(data, config, desc="JTT", added=added,
                               progress=part(progress, 0.3, 1.0))
    n_added = 0 if added is None else len(added[1])
    return method_result("jtt", data, config, training,
                         seconds=training.seconds + shared.seconds["error_set"],
                         n_added=n_added,
                         info={"epochs_T": shared.jtt_epochs, "upweight": options.jtt_upweight,
                               "error_set_size": int(errors.errors.sum()),
                               "n_upsampled": n_added},
                         added_from=np.repeat(upsampled, extra) if n_added else None)
