"""Oversampled top-K: DiffuBias's candidates repeated instead of generated, what is left of
DiffuBias without captions and generation. It knows nothing of the other methods.
"""

from __future__ import annotations

import numpy as np

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
from diffubias.prepared import PreparedDataset, train_evaluated
from diffubias.progress import ProgressFn, part


def oversample_top_k(data: PreparedDataset, config: RunConfig, *,
                     options: BaselineOptions = DEFAULT_OPTIONS, shared: SharedStages | None = None,
                     progress: ProgressFn | None = None) -> MethodResult:
    """DiffuBias's top-K candidates repeated instead of generated: what is left of DiffuBias
    without generation. Each candidate gets the same number of copies."""
    shared = shared_stages_for(shared, data, config, options)
    candidates = shared.candidate_positions(part(progress, 0.0, 0.3))
    copies = options.oversample_copies or config.captions_per_image * config.images_per_prompt
    if config.max_images:
        copies = max(1, min(copies, config.max_images // max(len(candidates), 1)))
    images, labels = repeated_samples(data, candidates, copies)
    training = train_evaluated(data, config, desc="oversampled top-K", added=(images, labels),
                               progress=part(progress, 0.3, 1.0))
    return method_result("oversample-topk", data, config, training,
                         seconds=training.seconds + shared.seconds.get("detection", 0.0),
                         n_added=len(labels),
                         info={"copies_per_candidate": copies, **shared.candidate_info()},
                         added_from=np.repeat(candidates, copies))
