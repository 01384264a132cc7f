"""What a loaded image dataset is: `ImageDataset` (per-sample arrays aligned with its paths), the
files left out of it (`SkippedFile`), and the rules every on-disk layout's loader shares.

The format (what users upload, as a folder or a .zip): images under any sub-folders plus
`metadata.csv` with columns `path, split, label`, and optionally `bias` (an attribute name, used
for evaluation only), `caption`, `caption_2`, ... (any number, empty cells allowed) and `mask`
(a binary object mask PNG, same size as its image). A plain ImageFolder (`<class>/<image>`, no
CSV) also loads, with a seeded stratified train/valid split. Built-ins (`builtin:<name>`) are
generated into the cache on first use by `diffubias.builtin`.

Knows: the fields of a loaded dataset, the split names, positions into it, and what every
layout's loader shares (indexing names, the error when nothing is left). Does not know: reading
any layout from disk (`diffubias.dataset_sources.load_dataset` picks `metadata_csv`,
`image_folder` or `archives`), decoding images (`decoding`), models, training, batching (see
`images.py`), or what the captions and bias attributes mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

SPLITS = ("train", "valid", "test")
METADATA_FILE = "metadata.csv"


@dataclass(frozen=True)
class SkippedFile:
    """A row or file left out at load time, and why."""

    path: str
    reason: str


@dataclass(frozen=True, eq=False)  # eq=False: numpy fields make == ambiguous
class ImageDataset:
    """One loaded dataset: per-sample arrays aligned with `paths`."""

    name: str  # "builtin:colored-digits" for built-ins, else the folder or zip name
    root: Path  # folder holding metadata.csv (the extracted folder for a zip)
    paths: tuple[str, ...]  # posix paths relative to root
    split: np.ndarray  # object (N,), each one of SPLITS
    labels: np.ndarray  # int64 (N,), index into class_names
    class_names: tuple[str, ...]  # sorted unique label names
    bias: (
        np.ndarray | None
    )  # int64 (N,), index into bias_names, -1 for an empty cell; None: no column
    bias_names: tuple[str, ...]  # sorted unique bias names; () when there is no bias column
    captions: tuple[tuple[str, ...], ...]  # per sample, the non-empty captions in column order
    mask_paths: tuple[str | None, ...] | None  # per sample, relative to root; None: no mask column
    skipped: tuple[SkippedFile, ...]  # rows and files dropped at load, with the reason

    def __post_init__(self) -> None:
        n = len(self.paths)
        lengths = {
            "split": len(self.split),
            "labels": len(self.labels),
            "captions": len(self.captions),
        }
        if self.bias is not None:
            lengths["bias"] = len(self.bias)
        if self.mask_paths is not None:
            lengths["mask_paths"] = len(self.mask_paths)
        wrong = {field: length for field, length in lengths.items() if length != n}
        if wrong:
            raise ValueError(
                f"ImageDataset fields must have one entry per path ({n}); got lengths {wrong}"
            )

    def indices(self, split: str) -> np.ndarray:
        """int64 positions of the samples in `split` (one of train, valid, test)."""
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
        return np.flatnonzero(self.split == split).astype(np.int64)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def as_positions(positions: Sequence[int] | np.ndarray | torch.Tensor, length: int) -> np.ndarray:
    """`positions` as an int64 array, each checked to lie in [0, length)."""
    if isinstance(positions, torch.Tensor):
        positions = positions.detach().cpu().numpy()
    array = np.asarray(positions)
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            "positions must be a 1-D sequence of integers; "
            f"got shape {array.shape}, dtype {array.dtype}"
        )
    if array.min() < 0 or array.max() >= length:
        bad = array[(array < 0) | (array >= length)][0]
        raise ValueError(f"position {int(bad)} is out of range; expected 0 <= position < {length}")
    return array.astype(np.int64, copy=False)


def check_anything_left(num_rows: int, keep: list[int], skipped: list[SkippedFile]) -> None:
    """ValueError when a loader kept none of its `num_rows` rows, with a few of the reasons."""
    if keep:
        return
    if num_rows == 0:
        raise ValueError(f"{METADATA_FILE} has no rows; expected one row per image")
    examples = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:3])
    raise ValueError(f"all {num_rows} images were skipped, e.g. {examples}")


def index_names(values: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """int64 index of each value into the sorted unique non-empty names; -1 for an empty value."""
    names = tuple(sorted(set(values) - {""}))
    lookup = {name: i for i, name in enumerate(names)}
    return np.array([lookup.get(v, -1) for v in values], dtype=np.int64), names
