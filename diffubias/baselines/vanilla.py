"""Vanilla ERM as a method: plain cross entropy on the training split, the reference every
debiasing method is compared with. The smallest method, so the template for a new one: take
(data, config, *, options, shared, progress), train through `train_evaluated`, return
`method_result`.
"""

from __future__ import annotations

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


def vanilla(data: PreparedDataset, config: RunConfig, *,
            options: BaselineOptions = DEFAULT_OPTIONS, shared: SharedStages | None = None,
            progress: ProgressFn | None = None) -> MethodResult:
    """ERM: plain cross entropy on the training split."""
    shared_stages_for(shared, data, config, options)
    training = train_evaluated(data, config, desc="vanilla", progress=progress)
    return method_result("vanilla", data, config, training, seconds=training.seconds)
