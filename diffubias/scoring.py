"""Scoring: per-sample cross entropy under the biased model, top-K per class, detection quality.

Higher loss = more likely bias-conflicting (the biased model gets it wrong). Scoring uses plain
CE, not GCE, as the method does. Arrays in, arrays and frozen dataclasses out; nothing here
knows about files or models beyond calling one.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from diffubias.images import ImageSource
from diffubias.progress import ProgressFn
from diffubias.training import to_float


@torch.no_grad()
def score_samples(model: nn.Module, source: ImageSource, *, batch_size: int = 512,
                  device: str = "cpu", progress: ProgressFn | None = None) -> np.ndarray:
    """Per-sample CE loss (float32, one per position of `source`, in source order), batched."""
    was_training = model.training
    model.eval().to(device)
    losses = np.empty(len(source), dtype=np.float32)
    n_batches = -(-len(source) // batch_size)
    for i, (images, labels, positions) in enumerate(
            tqdm(source.batches(batch_size), total=n_batches, desc="score", leave=False)):
        logits = model(to_float(images, device))
        losses[positions.numpy()] = F.cross_entropy(
            logits, labels.to(device), reduction="none").cpu().numpy()
        if progress is not None:
            progress((i + 1) / n_batches, "scoring training samples")
    model.train(was_training)
    return losses


def k_for_classes(labels: np.ndarray, k: int | float) -> dict[int, int]:
    """K per class: a number >= 1 is a count, a number in (0, 1) a fraction of the class size.

    A K larger than a class is clamped to the class size; every class gets at least one.
    """
    if isinstance(k, bool) or not isinstance(k, numbers.Real) or not k > 0:
        raise ValueError(f"k must be a count >= 1 or a fraction in (0, 1), got {k!r}")
    if k >= 1 and k != int(k):
        raise ValueError(f"a count k must be a whole number, got {k}")
    classes, sizes = np.unique(labels, return_counts=True)
    return {c: int(min(max(round(k * n) if k < 1 else int(k), 1), n))
            for c, n in zip(classes.tolist(), sizes.tolist())}


def top_k_per_class(losses: np.ndarray, labels: np.ndarray, *, k: int | float,
                    highest: bool = True, classes=None) -> np.ndarray:
    """Positions of the K highest-loss samples of each class (lowest with `highest=False`:
    the most bias-aligned ones), grouped by class, each group ordered from most to least
    extreme. Ties break by position so the result is deterministic. `classes` (labels) keeps
    only those classes (None: every class)."""
    losses, labels = np.asarray(losses), np.asarray(labels)
    if losses.shape != labels.shape:
        raise ValueError(f"losses {losses.shape} and labels {labels.shape} differ in shape")
    picked = []
    for c, kc in k_for_classes(labels, k).items():
        if classes is not None and c not in classes:
            continue
        members = np.flatnonzero(labels == c)
        key = -losses[members] if highest else losses[members]
        order = np.lexsort((members, key))  # primary key last
        picked.append(members[order[:kc]])
    return np.concatenate(picked) if picked else np.empty(0, dtype=np.int64)


def ranks_in_class(selected: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """For indices `selected` grouped by class, highest loss first (as `top_k_per_class` returns
    them), each one's rank in its class: 0 for the highest."""
    ranks = np.empty(len(selected), dtype=np.int64)
    seen: dict[int, int] = {}
    for i, index in enumerate(selected):
        label = int(labels[index])
        ranks[i] = seen.get(label, 0)
        seen[label] = ranks[i] + 1
    return ranks


@dataclass(frozen=True)
class DetectionMetrics:
    """How well the loss ranking finds the known bias-conflicting samples."""

    k_per_class: dict[int, int]
    n_selected: int
    n_conflicts: int
    precision_at_k: float  # share of the selected top-K that are conflicts
    recall_at_k: float  # share of all conflicts that are in the top-K
    r_precision: float  # precision when each class's K equals its true number of conflicts
    auroc: float  # over all samples: does a higher loss mean a conflict?
    # over all samples: the mean precision at each conflict's rank in the global loss order;
    # unlike AUROC it stays low when many aligned samples outrank the few conflicts
    average_precision: float

    def to_dict(self) -> dict:
        return {"k_per_class": {str(c): k for c, k in self.k_per_class.items()},
                "n_selected": self.n_selected, "n_conflicts": self.n_conflicts,
                "precision_at_k": self.precision_at_k, "recall_at_k": self.recall_at_k,
                "r_precision": self.r_precision, "auroc": self.auroc,
                "average_precision": self.average_precision}


def detection_metrics(losses: np.ndarray, labels: np.ndarray, is_conflict: np.ndarray, *,
                      k: int | float) -> DetectionMetrics:
    """Detection quality of top-K-per-class selection; needs the bias attribute (evaluation only)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    losses, labels = np.asarray(losses), np.asarray(labels)
    is_conflict = np.asarray(is_conflict, dtype=bool)
    selected = top_k_per_class(losses, labels, k=k)
    hits = int(is_conflict[selected].sum())
    n_conflicts = int(is_conflict.sum())
    r_hits = r_total = 0
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n_c = int(is_conflict[members].sum())
        if n_c == 0:
            continue
        order = np.lexsort((members, -losses[members]))
        r_hits += int(is_conflict[members[order[:n_c]]].sum())
        r_total += n_c
    both = 0 < n_conflicts < len(losses)
    return DetectionMetrics(
        k_per_class=k_for_classes(labels, k),
        n_selected=len(selected),
        n_conflicts=n_conflicts,
        precision_at_k=hits / max(len(selected), 1),
        recall_at_k=hits / n_conflicts if n_conflicts else float("nan"),
        r_precision=r_hits / r_total if r_total else float("nan"),
        auroc=float(roc_auc_score(is_conflict, losses)) if both else float("nan"),
        average_precision=(float(average_precision_score(is_conflict, losses)) if both
                           else float("nan")),
    )
