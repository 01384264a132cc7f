"""A dataset ready for the classifiers, and the one schedule every classifier is trained with.

`PreparedDataset` is a loaded `ImageDataset` at the image size the classifiers use, with its splits
decoded on demand and the bias-aligned attribute of each class (when the bias is known).
`new_classifier`, `train_config`, `train_evaluated` and `test_accuracy` are what every stage and
every baseline use to build, train and evaluate a model, so the only difference between two
methods is what they train on. Knows nothing of stages, files or stores.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import nn

from diffubias.config import RunConfig
from diffubias.dataset import SPLITS, ImageDataset
from diffubias.dataset_sources import load_dataset
from diffubias.decoding import infer_image_size
from diffubias.evaluation import GroupAccuracy, aligned_bias_per_class, conflict_mask, evaluate
from diffubias.images import ImageSource, InMemoryImages, concat_sources, open_images
from diffubias.models import Classifier, build_classifier
from diffubias.progress import ProgressFn
from diffubias.training import StepLoss, TrainConfig, TrainResult, train_classifier


@dataclass(eq=False)
class PreparedDataset:
    """A dataset at the image size the classifiers use, with its splits decoded on demand."""

    ds: ImageDataset
    image_size: int

    @classmethod
    def load(cls, config: RunConfig, progress: ProgressFn | None = None) -> PreparedDataset:
        ds = load_dataset(config.dataset, cache_dir=config.cache_path, seed=config.seed,
                          conflict_ratio=config.conflict_ratio, progress=progress)
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
        """The test split, or valid when the dataset has no test split (plain ImageFolder); every
        front end says which (`diffubias.evaluation_split`)."""
        positions, source = self.split("test")
        return (positions, source) if len(positions) else self.split("valid")

    def bias_of(self, positions: np.ndarray) -> np.ndarray | None:
        return None if self.ds.bias is None else self.ds.bias[positions]

    def conflicts(self, positions: np.ndarray) -> np.ndarray | None:
        """True where a sample is bias-conflicting; None when the bias is unknown."""
        bias = self.bias_of(positions)
        return None if bias is None else conflict_mask(self.ds.labels[positions], bias,
                                                       self.aligned)

    def summary(self) -> dict:
        """What the dataset holds, for report.json and the app's Dataset tab."""
        ds = self.ds
        return {"name": ds.name, "root": str(ds.root), "image_size": self.image_size,
                "class_names": list(ds.class_names), "bias_names": list(ds.bias_names),
                "n_samples": len(ds.paths),
                "split_sizes": {s: int((ds.split == s).sum()) for s in SPLITS},
                "has_bias": ds.bias is not None,
                "n_captioned": sum(1 for c in ds.captions if c),
                "captions_per_sample": max((len(c) for c in ds.captions), default=0),
                "has_masks": ds.mask_paths is not None,
                "n_skipped": len(ds.skipped),
                "skipped": [{"path": s.path, "reason": s.reason} for s in ds.skipped]}


def new_classifier(data: PreparedDataset, config: RunConfig) -> Classifier:
    """The run's seeded initialisation: every model of a run starts from the same weights."""
    return build_classifier(num_classes=data.ds.num_classes, image_size=data.image_size,
                            arch=config.arch, width=config.width, seed=config.seed,
                            init_weights=config.init_weights or None)


def train_config(config: RunConfig, **changes) -> TrainConfig:
    return TrainConfig(batch_size=config.batch_size, lr=config.lr, seed=config.seed,
                       device=config.resolved_device(), **changes)


def train_evaluated(data: PreparedDataset, config: RunConfig, *, desc: str,
                    added: tuple[torch.Tensor, torch.Tensor] | None = None,
                    sample_weights: torch.Tensor | None = None, step_loss: StepLoss | None = None,
                    model: nn.Module | None = None,
                    progress: ProgressFn | None = None) -> TrainResult:
    """The schedule every evaluated model gets: the run's seeded initialisation (or `model`),
    `debias_epochs` of CE on the training split plus `added` (uint8 images, labels), checkpoint
    chosen on the validation split, never on test."""
    _, train = data.split("train")
    _, valid = data.split("valid")
    if added is not None:
        train = concat_sources(train, InMemoryImages(*added))
    return train_classifier(model if model is not None else new_classifier(data, config), train,
                            valid=valid,
                            config=train_config(config, epochs=config.debias_epochs, loss="ce"),
                            sample_weights=sample_weights, step_loss=step_loss,
                            progress=progress, desc=desc)


def test_accuracy(data: PreparedDataset, model: nn.Module, config: RunConfig) -> GroupAccuracy:
    positions, source = data.evaluation_split()
    return evaluate(model, source, bias=data.bias_of(positions), aligned=data.aligned,
                    device=config.resolved_device())
