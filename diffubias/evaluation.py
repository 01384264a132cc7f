"""Evaluation on a labelled split: overall, bias-aligned, bias-conflicting and unbiased accuracy.

A sample is bias-aligned when its bias attribute is the one its class mostly carries in the
training split (built-in datasets: class i <-> attribute i); unbiased accuracy is the mean over
all (class, attribute) groups present, so rare groups count as much as common ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from diffubias.images import ImageSource
from diffubias.training import to_float


def aligned_bias_per_class(labels: np.ndarray, bias: np.ndarray) -> dict[int, int]:
    """The majority bias attribute of each class among samples whose bias is known (>= 0)."""
    known = bias >= 0
    out = {}
    for c in np.unique(labels[known]):
        values, counts = np.unique(bias[known & (labels == c)], return_counts=True)
        out[int(c)] = int(values[np.argmax(counts)])
    return out


def conflict_mask(labels: np.ndarray, bias: np.ndarray, aligned: dict[int, int]) -> np.ndarray:
    """True where a sample's attribute differs from its class's aligned attribute."""
    expected = np.array([aligned.get(int(c), -1) for c in labels])
    return (bias >= 0) & (bias != expected)


@torch.no_grad()
def predict(model: nn.Module, source: ImageSource, *, batch_size: int = 512,
            device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(predicted class int64 (N,), softmax probabilities float32 (N, C)) in source order."""
    was_training = model.training
    model.eval().to(device)
    preds = np.empty(len(source), dtype=np.int64)
    probs = None
    for images, _, positions in source.batches(batch_size):
        p = model(to_float(images, device)).softmax(1).cpu().numpy()
        if probs is None:
            probs = np.empty((len(source), p.shape[1]), dtype=np.float32)
        probs[positions.numpy()] = p
        preds[positions.numpy()] = p.argmax(1)
    model.train(was_training)
    return preds, probs if probs is not None else np.empty((0, 0), dtype=np.float32)


@dataclass(frozen=True)
class GroupAccuracy:
    overall: float
    aligned: float | None  # None when the bias attribute is unknown
    conflicting: float | None
    unbiased: float | None
    n: int
    n_conflicting: int

    def to_dict(self) -> dict:
        return asdict(self)


def group_accuracy(preds: np.ndarray, labels: np.ndarray, bias: np.ndarray | None,
                   aligned: dict[int, int] | None) -> GroupAccuracy:
    correct = preds == labels
    overall = float(correct.mean()) if len(correct) else float("nan")
    if bias is None or aligned is None or not (bias >= 0).any():
        return GroupAccuracy(overall, None, None, None, len(labels), 0)
    known = bias >= 0
    conflicting = conflict_mask(labels, bias, aligned)
    aligned_mask = known & ~conflicting

    def mean(mask: np.ndarray) -> float | None:
        return float(correct[mask].mean()) if mask.any() else None

    groups = [correct[known & (labels == c) & (bias == b)].mean()
              for c, b in sorted(set(zip(labels[known].tolist(), bias[known].tolist())))]
    return GroupAccuracy(overall, mean(aligned_mask), mean(conflicting),
                         float(np.mean(groups)), len(labels), int(conflicting.sum()))


def evaluate(model: nn.Module, source: ImageSource, *, bias: np.ndarray | None,
             aligned: dict[int, int] | None, device: str = "cpu") -> GroupAccuracy:
    """Group accuracies of `model` on `source` (labels from the source, bias per position)."""
    preds, _ = predict(model, source, device=device)
    return group_accuracy(preds, source.labels.numpy(), bias, aligned)
