"""Runs the methods of the registry (`diffubias.baselines.METHODS`) by name: one with
`run_method`, several sharing their stages with `run_baselines` (what the debias stage, the CLI
and the app call). It knows no method by name; each is resolved from the registry on use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from diffubias.baselines import get_method
from diffubias.baselines.shared import (
    DEFAULT_OPTIONS,
    BaselineOptions,
    MethodResult,
    SharedStages,
)
from diffubias.config import RunConfig
from diffubias.prepared import PreparedDataset
from diffubias.progress import ProgressFn, part


def run_method(name: str, data: PreparedDataset, config: RunConfig, *,
               options: BaselineOptions | None = None, shared: SharedStages | None = None,
               progress: ProgressFn | None = None) -> MethodResult:
    """Runs one registered method by name. Pass one `SharedStages` to every method of a run
    so the GCE detection, JTT's ERM model and generated images are computed once."""
    function = get_method(name).resolve()
    options = options or (shared.options if shared is not None else DEFAULT_OPTIONS)
    return function(data, config, options=options, shared=shared, progress=progress)


def run_baselines(names: Sequence[str], data: PreparedDataset, config: RunConfig, *,
                  candidates: np.ndarray | None = None, progress: ProgressFn | None = None,
                  before_each: Callable[[str], None] | None = None) -> dict[str, MethodResult]:
    """Several registered methods on one dataset, sharing their stages (one `SharedStages`,
    with `candidates` if given), each on an equal share of `progress`. `before_each(name)` runs
    before each method: a log line, or a check that the job was not stopped. Every name is
    checked before the first method trains."""
    for name in names:
        get_method(name)
    shared = SharedStages(data, config, candidates=candidates)
    results = {}
    for i, name in enumerate(names):
        if before_each is not None:
            before_each(name)
        span = part(progress, i / len(names), (i + 1) / len(names))
        if span is not None:
            span(0.0, f"baseline {name} ({i + 1} of {len(names)})")
        results[name] = run_method(name, data, config, shared=shared, progress=span)
    return results
