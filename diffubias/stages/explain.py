"""Stage 9, explain: Grad-CAM of two models on the same images, and how much of each map falls
on the object when the dataset has object masks.

`cam_positions` picks what to explain (by default a seeded sample of the bias-conflicting
evaluation samples, where a biased model is meant to fail); `explain_models` computes both
models' maps, predictions and object masses. Knows nothing of how maps are drawn or stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from diffubias.config import CAM_SAMPLE_SETS, RunConfig
from diffubias.decoding import read_images, read_masks
from diffubias.gradcam import CamComparison, compare_models
from diffubias.prepared import PreparedDataset
from diffubias.progress import ProgressFn, report


@dataclass(frozen=True, eq=False)
class Explanation:
    positions: np.ndarray  # dataset positions explained, in position order
    images: torch.Tensor = field(repr=False)  # uint8 (N, 3, S, S)
    masks: np.ndarray | None = field(repr=False)  # bool (N, S, S), datasets with masks only
    comparison: CamComparison = field(repr=False)

    def mass_summary(self) -> dict:
        c = self.comparison
        return {"object_mass_before": _finite(c.mean_object_mass_before),
                "object_mass_after": _finite(c.mean_object_mass_after),
                "object_area": float(self.masks.mean()) if self.masks is not None else None}


def cam_positions(data: PreparedDataset, config: RunConfig, sample_set: str = "conflicting",
                  candidates: Sequence[int] = ()) -> np.ndarray:
    """Dataset positions to explain, a seeded sample of at most `cam_samples` in position order:
    `conflicting` (the evaluation split's bias-conflicting samples; all of it when the bias is
    unknown), `all` (the evaluation split) or `candidates` (the given train positions)."""
    if sample_set not in CAM_SAMPLE_SETS:
        raise ValueError(f"unknown sample set {sample_set!r}; choose one of "
                         f"{', '.join(CAM_SAMPLE_SETS)}")
    if sample_set == "candidates":
        pool = np.asarray(candidates, dtype=np.int64)
    else:
        pool, _ = data.evaluation_split()
        conflicting = data.conflicts(pool) if sample_set == "conflicting" else None
        if conflicting is not None and conflicting.any():
            pool = pool[conflicting]
    rng = np.random.default_rng(config.seed)
    return np.sort(rng.permutation(pool)[: config.cam_samples])


def explain_models(data: PreparedDataset, config: RunConfig, before: nn.Module, after: nn.Module,
                   positions: np.ndarray, *, progress: ProgressFn | None = None) -> Explanation:
    """Grad-CAM (`cam_method`) of two models on the same images, each explaining its own
    prediction (where does the model look when it decides?); object masses with masks."""
    if len(positions) == 0:
        raise ValueError("no samples to explain; choose another sample set")
    report(progress, 0.0, f"Grad-CAM of both models on {len(positions)} images")
    images = read_images(data.ds, positions, size=data.image_size)
    masks = (read_masks(data.ds, positions, size=data.image_size)
             if data.ds.mask_paths is not None else None)
    comparison = compare_models(before, after, images, masks=masks, labels=None,
                                method=config.cam_method, device=config.resolved_device())
    report(progress, 1.0, "Grad-CAM done")
    return Explanation(np.asarray(positions), images, masks, comparison)


def _finite(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)
