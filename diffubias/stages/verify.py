"""Stage 6b, verify: automatic checks of every generated image before anything trains on it.

A text-to-image model does not always draw what the prompt says. Three checks, each a number per
image and a verdict against a threshold of `RunConfig`:

- **shows its class**: the project's captioner describes the image, and the caption must name
  the image's class (`diffubias.anchoring.names_class`, with `class_synonyms` and a built-in's
  own words for its classes, such as numerals). Skipped (None)
  when the captioner cannot describe new images (`metadata` reads captions from the dataset).
- **bias-conflicting**: the biased (GCE) model's cross-entropy loss on the image for its label,
  the score candidate mining uses. An image that would not have been mined, its loss below the
  lowest loss among its class's top-K candidates (`loss_thresholds`; or below `check_min_loss`
  when that is set), is bias-aligned and adds nothing.
- **not a copy**: the Hamming distance between the image's perceptual hash and the nearest
  training image's (imagehash's pHash of each colour channel, 3 x 64 bits, at the classifier's
  image size). At most `check_max_hash_distance` bits apart, it is a near-copy of the data the
  run started from. A recoloured copy is not a copy: the channels differ.

An image failing any check is *proposed* for rejection, never deleted. What follows is the front
end's: a person reviews proposals in the app; `image_checks = "drop"` leaves them out of training.
Knows nothing of where images or results are stored.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from diffubias.anchoring import names_class
from diffubias.config import RunConfig
from diffubias.images import stack_images
from diffubias.prepared import PreparedDataset
from diffubias.progress import ProgressFn, part, report
from diffubias.stages.generate import class_synonyms
from diffubias.training import to_float

HASH_BITS = 3 * 64
_TRAIN_HASHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # per PreparedDataset


@dataclass(frozen=True)
class ImageCheck:
    """The checks of one generated image."""

    label: int
    caption: str | None  # what the captioner saw; None when the class was not checked
    shows_class: bool | None  # None: not checked
    bias_loss: float  # the biased model's CE loss for the image's label
    conflicting: bool  # bias_loss >= the class's loss threshold
    nearest_train: int  # dataset position of the training image with the nearest hash
    hash_distance: int  # bits between the two hashes, 0 .. HASH_BITS
    copy: bool  # hash_distance <= check_max_hash_distance

    @property
    def reasons(self) -> tuple[str, ...]:
        """Why the image is proposed for rejection; empty when it passes every check."""
        return tuple(reason for reason, failed in (
            ("does not show its class", self.shows_class is False),
            ("bias-aligned (the biased model finds it easy)", not self.conflicting),
            ("near-copy of a training image", self.copy)) if failed)

    @property
    def passed(self) -> bool:
        return not self.reasons

    def to_dict(self) -> dict:
        return {**asdict(self), "reasons": list(self.reasons)}


@dataclass(frozen=True)
class Verification:
    """Every image's checks, in input order, with the thresholds they were judged by."""

    checks: tuple[ImageCheck, ...]
    min_loss: dict[int, float]  # per class: the loss an image needs to count as conflicting
    max_hash_distance: int
    class_checked_by: str | None  # the captioner's name, or None when the class was not checked
    class_check_skipped: str = ""  # why the class was not checked, when it was not

    def summary(self) -> dict:
        return {**count_checks([c.to_dict() for c in self.checks]),
                "min_loss": {str(k): v for k, v in self.min_loss.items()},
                "max_hash_distance": self.max_hash_distance,
                "class_checked_by": self.class_checked_by,
                "class_check_skipped": self.class_check_skipped}


def count_checks(checks: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many of `checks` (`ImageCheck.to_dict()`s, as stored) passed and failed each check."""
    return {"n_images": len(checks), "n_passed": sum(not c["reasons"] for c in checks),
            "n_wrong_class": sum(c["shows_class"] is False for c in checks),
            "n_aligned": sum(not c["conflicting"] for c in checks),
            "n_copies": sum(c["copy"] for c in checks)}


def check_generated(images: Sequence[Image.Image], labels: Sequence[int], *,
                    data: PreparedDataset, biased_model: nn.Module, train_losses: np.ndarray,
                    train_labels: np.ndarray, is_candidate: np.ndarray, config: RunConfig,
                    progress: ProgressFn | None = None) -> Verification:
    """The stage as every front end calls it: loss thresholds from the detection's scores
    (`train_*`, aligned arrays) and the project's captioner, one caption per image."""
    from diffubias.backends import captioner_for

    thresholds = loss_thresholds(config, np.asarray(train_losses), np.asarray(train_labels),
                                 np.asarray(is_candidate, dtype=bool), data.ds.num_classes)
    try:
        captioner = captioner_for(replace(config, captions_per_image=1),
                                  dataset_name=data.ds.name)
    except (ValueError, OSError) as error:  # the images exist; checking their class can wait
        captioner, note = None, f"captioner {config.captioner!r} unavailable: {error}"
    else:
        note = "" if hasattr(captioner, "caption_images") else (
            f"captioner {config.captioner!r} cannot describe new images")
    result = verify_images(images, labels, data=data, biased_model=biased_model,
                           min_loss=thresholds, config=config, captioner=captioner,
                           progress=progress)
    return replace(result, class_check_skipped=note)


def loss_thresholds(config: RunConfig, losses: np.ndarray, labels: np.ndarray,
                    is_candidate: np.ndarray, num_classes: int) -> dict[int, float]:
    """Per class, the biased-model loss a generated image needs to count as bias-conflicting:
    `check_min_loss` when set, else the lowest loss among the class's top-K candidates (so an
    image passes where it would have been mined itself); ln 2 for a class with no candidate."""
    if config.check_min_loss > 0:
        return dict.fromkeys(range(num_classes), float(config.check_min_loss))
    out = {}
    for c in range(num_classes):
        mined = losses[(labels == c) & is_candidate]
        out[c] = float(mined.min()) if len(mined) else float(np.log(2))
    return out


def verify_images(images: Sequence[Image.Image], labels: Sequence[int], *,
                  data: PreparedDataset, biased_model: nn.Module,
                  min_loss: dict[int, float], config: RunConfig, captioner=None,
                  progress: ProgressFn | None = None) -> Verification:
    """The checks of each (image, label). `min_loss`: per class, from `loss_thresholds`.
    `captioner` needs `caption_images` (a model captioner); without one the class is not
    checked."""
    labels = [int(y) for y in labels]
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    report(progress, 0.0, f"checking {len(images)} generated images")
    pixels = stack_images(list(images), size=data.image_size)
    losses = bias_losses(biased_model, pixels, labels, device=config.resolved_device())
    train_positions, train_hashes = training_hashes(data, progress=part(progress, 0.0, 0.4))
    nearest, distance = nearest_hashes(channel_hashes(pixels), train_hashes)
    captions = caption_texts(captioner, images, progress=part(progress, 0.4, 1.0))
    names = data.ds.class_names
    synonyms = class_synonyms(config, names)
    checks = tuple(
        ImageCheck(label, caption,
                   None if caption is None else names_class(caption, names[label],
                                                            synonyms.get(names[label], ())),
                   float(loss), bool(loss >= min_loss[label]),
                   int(train_positions[near]), int(dist),
                   bool(dist <= config.check_max_hash_distance))
        for label, caption, loss, near, dist in zip(labels, captions, losses, nearest, distance,
                                                    strict=True))
    report(progress, 1.0, f"{sum(c.passed for c in checks)} of {len(checks)} images passed")
    return Verification(checks, dict(min_loss), config.check_max_hash_distance,
                        getattr(captioner, "model_name", None) if captioner is not None else None)


@torch.inference_mode()
def bias_losses(model: nn.Module, pixels: torch.Tensor, labels: Sequence[int], *,
                device: str = "cpu", batch_size: int = 512) -> np.ndarray:
    """float32 CE loss of `model` for each uint8 (N, 3, S, S) image and its label."""
    was_training = model.training
    model.eval().to(device)
    targets = torch.tensor(labels, dtype=torch.int64)
    out = np.empty(len(pixels), dtype=np.float32)
    for start in range(0, len(pixels), batch_size):
        logits = model(to_float(pixels[start:start + batch_size], device))
        out[start:start + batch_size] = F.cross_entropy(
            logits, targets[start:start + batch_size].to(device), reduction="none").cpu().numpy()
    model.train(was_training)
    return out


def channel_hashes(pixels: torch.Tensor) -> np.ndarray:
    """uint64 (N, 3): the pHash of each colour channel of each uint8 (N, 3, S, S) image."""
    import imagehash

    array = pixels.numpy()
    out = np.empty((len(array), 3), dtype=np.uint64)
    for i, image in enumerate(array):
        for c in range(3):
            bits = imagehash.phash(Image.fromarray(image[c], mode="L")).hash.ravel()
            out[i, c] = np.packbits(bits).view(">u8")[0]
    return out


def training_hashes(data: PreparedDataset, *, progress: ProgressFn | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(dataset positions, channel hashes) of the training split, computed once per dataset."""
    cached = _TRAIN_HASHES.get(data)
    if cached is None:
        positions, source = data.split("train")
        hashes = np.empty((len(positions), 3), dtype=np.uint64)
        n_batches = max(1, -(-len(positions) // 1024))
        for i, (images, _, order) in enumerate(source.batches(1024)):
            hashes[order.numpy()] = channel_hashes(images)
            report(progress, (i + 1) / n_batches, "hashing the training images")
        cached = _TRAIN_HASHES[data] = (positions, hashes)
    return cached


def nearest_hashes(hashes: np.ndarray, reference: np.ndarray, *, chunk: int = 256
                   ) -> tuple[np.ndarray, np.ndarray]:
    """For each row of `hashes`, the index of the nearest `reference` row and the Hamming
    distance over all channels."""
    nearest = np.zeros(len(hashes), dtype=np.int64)
    distance = np.full(len(hashes), HASH_BITS, dtype=np.int64)
    if not len(reference):
        return nearest, distance
    for start in range(0, len(hashes), chunk):
        block = hashes[start:start + chunk, None, :] ^ reference[None, :, :]
        bits = np.bitwise_count(block).sum(axis=2)
        nearest[start:start + chunk] = bits.argmin(axis=1)
        distance[start:start + chunk] = bits.min(axis=1)
    return nearest, distance


def caption_texts(captioner, images: Sequence[Image.Image], *, batch_size: int = 64,
                  progress: ProgressFn | None = None) -> list[str | None]:
    """One caption per image from a model captioner; Nones when there is none."""
    if captioner is None or not hasattr(captioner, "caption_images"):
        return [None] * len(images)
    out: list[str | None] = []
    for start in range(0, len(images), batch_size):
        texts = captioner.caption_images(list(images[start:start + batch_size]),
                                         batch_seed=start)
        out += [per_image[0] if per_image else "" for per_image in texts]
        report(progress, min(1.0, (start + batch_size) / len(images)),
               "captioning the generated images")
    return out
