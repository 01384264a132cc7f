"""The method's stages as computations: dataset in, frozen results out, nothing written.

`pipeline` (the CLI's run folder) and the web app (the SQLite store) both call these and persist
the results their own way. Each function takes a `PreparedDataset` (a loaded dataset at a fixed
image size) and the run's `RunConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
from torch import nn

from diffubias.config import RunConfig
from diffubias.dataset import ImageDataset
from diffubias.dataset_sources import load_dataset
from diffubias.decoding import infer_image_size, read_images, read_masks
from diffubias.evaluation import GroupAccuracy, aligned_bias_per_class, conflict_mask, evaluate
from diffubias.images import ImageSource, InMemoryImages, concat_sources, open_images
from diffubias.models import Classifier, build_classifier
from diffubias.scoring import detection_metrics, score_samples, top_k_per_class
from diffubias.training import ProgressFn, TrainConfig, TrainResult, train_classifier


@dataclass(eq=False)
class PreparedDataset:
    """A dataset at the image size the classifiers use, with its splits decoded on demand."""

    ds: ImageDataset
    image_size: int

    @classmethod
    def load(cls, config: RunConfig) -> PreparedDataset:
        ds = load_dataset(config.dataset, cache_dir=config.cache_path, seed=config.seed,
                          conflict_ratio=config.conflict_ratio)
        return cls(ds, config.image_size or infer_image_size(ds))

    @cached_property
    def aligned(self) -> dict[int, int] | None:
        """Each class's majority bias attribute in train; None when the bias is unknown."""
        if self.ds.bias is None:
            return None
        train = self.ds.indices("train")
        return aligned_bias_per_class(self.ds.labels[train], self.ds.bias[train])

    def split(self, name: str) -> tuple[np.ndarray, ImageSource]:
        """(dataset positions, image source in the same order) of one split, cached."""
        if name not in self._splits:
            positions = self.ds.indices(name)
            self._splits[name] = (positions, open_images(self.ds, positions, size=self.image_size))
        return self._splits[name]

    @cached_property
    def _splits(self) -> dict[str, tuple[np.ndarray, ImageSource]]:
        return {}

    def evaluation_split(self) -> tuple[np.ndarray, ImageSource]:
        """The test split, or valid when the dataset has no test split (plain ImageFolder)."""
        positions, source = self.split("test")
        return (positions, source) if len(positions) else self.split("valid")

    def bias_of(self, positions: np.ndarray) -> np.ndarray | None:
        return None if self.ds.bias is None else self.ds.bias[positions]

    def conflicts(self, positions: np.ndarray) -> np.ndarray | None:
        """True where a sample is bias-conflicting; None when the bias is unknown."""
        bias = self.bias_of(positions)
        return None if bias is None else conflict_mask(self.ds.labels[positions], bias,
                                                       self.aligned)


def new_classifier(data: PreparedDataset, config: RunConfig) -> Classifier:
    return build_classifier(num_classes=data.ds.num_classes, image_size=data.image_size,
                            arch=config.arch, width=config.width, seed=config.seed,
                            init_weights=config.init_weights or None)


def train_config(config: RunConfig, **changes) -> TrainConfig:
    return TrainConfig(batch_size=config.batch_size, lr=config.lr, seed=config.seed,
                       device=config.resolved_device(), **changes)


def test_accuracy(data: PreparedDataset, model: nn.Module, config: RunConfig) -> GroupAccuracy:
    positions, source = data.evaluation_split()
    return evaluate(model, source, bias=data.bias_of(positions), aligned=data.aligned,
                    device=config.resolved_device())


@dataclass(frozen=True, eq=False)
class Detection:
    """Stages 1-3: the biased model, every train sample's loss, and the top-K candidates."""

    training: TrainResult = field(repr=False)
    positions: np.ndarray  # dataset positions of the train samples, in score order
    losses: np.ndarray  # float32, CE under the biased model, aligned with positions
    selected: np.ndarray  # indices into positions: top-K per class, highest loss first
    is_conflict: np.ndarray | None  # known bias only
    metrics: dict  # detection_metrics(...).to_dict(), or counts only when bias is unknown

    @property
    def candidates(self) -> np.ndarray:
        """Dataset positions of the candidates."""
        return self.positions[self.selected]

    @property
    def threshold(self) -> float | None:
        return float(self.losses[self.selected].min()) if len(self.selected) else None


def detect_bias(data: PreparedDataset, config: RunConfig, *,
                progress: ProgressFn | None = None) -> Detection:
    """Trains the biased model with GCE, scores every train sample with CE, picks top-K."""
    positions, train = data.split("train")
    _, valid = data.split("valid")
    # selection="last": the best checkpoint on an unbiased validation split would be the
    # least biased one, the opposite of what this model is for.
    result = train_classifier(new_classifier(data, config), train, valid=valid,
                              config=train_config(config, epochs=config.biased_epochs,
                                                  loss="gce", gce_q=config.gce_q,
                                                  selection="last"),
                              progress=_part(progress, 0.0, 0.9), desc="biased model (GCE)")
    losses = score_samples(result.model, train, device=config.resolved_device(),
                           progress=_part(progress, 0.9, 1.0))
    labels = data.ds.labels[positions]
    selected = top_k_per_class(losses, labels, k=config.top_k)
    is_conflict = data.conflicts(positions)
    if is_conflict is not None:
        metrics = detection_metrics(losses, labels, is_conflict, k=config.top_k).to_dict()
    else:
        metrics = {"k_per_class": {str(c): int((labels[selected] == c).sum())
                                   for c in range(data.ds.num_classes)},
                   "n_selected": int(len(selected)), "n_conflicts": None,
                   "precision_at_k": None, "recall_at_k": None, "r_precision": None,
                   "auroc": None}
    return Detection(result, positions, losses, selected, is_conflict, metrics)


@dataclass(frozen=True, eq=False)
class Debiasing:
    """Stage 7: the vanilla model (train only) and the debiased one (train + generated)."""

    vanilla: TrainResult = field(repr=False)
    debiased: TrainResult = field(repr=False)
    n_train: int
    n_generated: int


def train_debiased(data: PreparedDataset, config: RunConfig, generated_images: torch.Tensor,
                   generated_labels: torch.Tensor, *, progress: ProgressFn | None = None,
                   train_vanilla: bool = True) -> Debiasing:
    """Same init, schedule and validation selection for both models, so the only difference
    is the generated data."""
    _, train = data.split("train")
    _, valid = data.split("valid")
    augmented = concat_sources(train, InMemoryImages(generated_images, generated_labels))
    cfg = train_config(config, epochs=config.debias_epochs, loss="ce")
    vanilla = (train_classifier(new_classifier(data, config), train, valid=valid, config=cfg,
                                progress=_part(progress, 0.0, 0.5), desc="vanilla model")
               if train_vanilla else None)
    debiased = train_classifier(new_classifier(data, config), augmented, valid=valid, config=cfg,
                                progress=_part(progress, 0.5 if train_vanilla else 0.0, 1.0),
                                desc="debiased model")
    return Debiasing(vanilla, debiased, len(train), len(generated_labels))


def cam_positions(data: PreparedDataset, config: RunConfig) -> np.ndarray:
    """Evaluation samples to explain: by default the bias-conflicting ones (where the biased
    model is meant to fail), a seeded sample of at most `cam_samples`, in position order."""
    positions, _ = data.evaluation_split()
    conflicting = data.conflicts(positions)
    if conflicting is not None and conflicting.any():
        positions = positions[conflicting]
    rng = np.random.default_rng(config.seed)
    return np.sort(rng.permutation(positions)[: config.cam_samples])


def gradcam_comparison(data: PreparedDataset, config: RunConfig, before: nn.Module,
                       after: nn.Module, positions: np.ndarray):
    """Grad-CAM of two models on the same images, each explaining its own prediction (where
    does the model look when it decides?); object masses when the dataset has masks.
    Returns (images uint8, masks or None, CamComparison)."""
    from diffubias.gradcam import compare_models

    images = read_images(data.ds, positions, size=data.image_size)
    masks = (read_masks(data.ds, positions, size=data.image_size)
             if data.ds.mask_paths is not None else None)
    comparison = compare_models(before, after, images, masks=masks, labels=None,
                                method=config.cam_method, device=config.resolved_device())
    return images, masks, comparison


def _part(progress: ProgressFn | None, start: float, end: float) -> ProgressFn | None:
    """Maps a sub-task's progress in [0, 1] onto [start, end] of the caller's bar."""
    if progress is None:
        return None
    return lambda fraction, message: progress(start + (end - start) * fraction, message)
