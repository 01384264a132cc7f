"""Stages 1-3, detect: the deliberately biased model (the ranker's, `diffubias.rankers`: GCE by
default), every training sample's loss under it, and the top-K highest-loss samples of each
class: the bias-conflicting candidates; with the biased model's own diagnostics (is it biased?).

Knows nothing of where the scores are stored; the bias column is read only to measure the
ranking (precision@K, AUROC) when the dataset has one, never to rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from diffubias.config import RunConfig
from diffubias.evaluation import GroupAccuracy
from diffubias.prepared import PreparedDataset, test_accuracy
from diffubias.progress import ProgressFn, part
from diffubias.rankers import Diagnostics, diagnose, rank_samples
from diffubias.scoring import detection_metrics, ranks_in_class, top_k_per_class
from diffubias.training import TrainResult


@dataclass(frozen=True, eq=False)
class Detection:
    """The biased model, every train sample's loss, the top-K candidates, and the biased
    model's diagnostics."""

    training: TrainResult = field(repr=False)
    positions: np.ndarray  # dataset positions of the train samples, in score order
    losses: np.ndarray  # float32, CE under the biased model, aligned with positions
    labels: np.ndarray  # int64, class of each scored sample, aligned with positions
    selected: np.ndarray  # indices into positions: top-K per class, highest loss first
    is_conflict: np.ndarray | None  # known bias only: to measure, never to rank
    metrics: dict  # detection_metrics(...).to_dict(), or counts only when bias is unknown
    test: GroupAccuracy  # the biased model on the evaluation split
    diagnostics: Diagnostics | None = None  # its accuracies per epoch, a warning if unbiased
    # committee ranker: bool per scored sample, left out of the biased model's training
    dropped: np.ndarray | None = None

    @property
    def candidates(self) -> np.ndarray:
        """Dataset positions of the candidates."""
        return self.positions[self.selected]

    @property
    def is_candidate(self) -> np.ndarray:
        """bool per scored sample (aligned with positions): one of the top-K candidates."""
        mask = np.zeros(len(self.positions), dtype=bool)
        mask[self.selected] = True
        return mask

    @property
    def threshold(self) -> float | None:
        """The lowest candidate loss (K is per class: the lowest of the class thresholds)."""
        return float(self.losses[self.selected].min()) if len(self.selected) else None

    def rank_in_class(self) -> np.ndarray:
        """Per scored sample, its rank among its class's candidates (0: highest loss), -1 for
        samples that are not candidates."""
        rank = np.full(len(self.positions), -1, dtype=np.int64)
        rank[self.selected] = ranks_in_class(self.selected, self.labels)
        return rank

    def whole_classes(self, top_k: float, class_names) -> dict[str, int]:
        return whole_classes(self.labels, top_k, class_names)


def whole_classes(labels: np.ndarray, top_k: float, class_names) -> dict[str, int]:
    """{class name: size} of the classes a count K takes whole (K >= the class size)."""
    if top_k < 1:
        return {}
    names, sizes = np.unique(labels, return_counts=True)
    return {class_names[int(c)]: int(n) for c, n in zip(names, sizes) if top_k >= n}


def detect_bias(data: PreparedDataset, config: RunConfig, *,
                progress: ProgressFn | None = None) -> Detection:
    """Trains the ranker's biased model, scores every train sample with CE, picks top-K.

    1. rank (`config.ranker`): train the biased model for `biased_epochs` (GCE by default),
       keeping the last epoch (or, with `biased_selection` train-valid-gap, the one that
       generalises worst), and score each train sample's cross entropy under it;
    2. select: the `top_k` highest-loss samples of each class;
    3. diagnose the biased model from its train and validation accuracy (no bias label);
    4. evaluate the biased model, and the ranking where the bias is known.
    """
    positions, _ = data.split("train")
    _, valid = data.split("valid")
    # a best checkpoint on an unbiased validation split would be the least biased one, the
    # opposite of what this model is for: the rankers keep the last epoch by default
    ranking = rank_samples(data, config, progress=part(progress, 0.0, 0.95))
    losses = ranking.losses
    labels = data.ds.labels[positions].astype(np.int64)
    selected = top_k_per_class(losses, labels, k=config.top_k)
    diagnostics = diagnose(ranking, config, valid.labels.numpy())
    is_conflict = data.conflicts(positions)
    if is_conflict is not None:
        metrics = detection_metrics(losses, labels, is_conflict, k=config.top_k).to_dict()
    else:
        metrics = {"k_per_class": {str(c): int((labels[selected] == c).sum())
                                   for c in range(data.ds.num_classes)},
                   "n_selected": int(len(selected)), "n_conflicts": None,
                   "precision_at_k": None, "recall_at_k": None, "r_precision": None,
                   "auroc": None, "average_precision": None}
    if progress is not None:
        progress(0.95, "evaluating the biased model")
    test = test_accuracy(data, ranking.training.model, config)
    return Detection(ranking.training, positions, losses, labels, selected, is_conflict,
                     metrics, test, diagnostics, ranking.dropped)
