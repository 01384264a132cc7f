"""Image sources: batches of uint8 images with their labels, from memory or streamed from disk.

Small datasets are decoded once into one tensor so epochs never re-decode files; large ones are
decoded batch by batch in DataLoader worker processes. Both yield the same batches in the same
order for the same seed. Knows: `ImageDataset` and `read_images`. Does not know: models,
normalisation or augmentation (images stay uint8 (B, 3, H, W); the consumer converts them).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from diffubias.dataset import ImageDataset, as_positions
from diffubias.decoding import read_images

# images uint8 (B, 3, H, W), labels int64 (B,), positions int64 (B,) into the source
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class ImageSource(Protocol):
    """N labelled images, served in batches."""

    @property
    def labels(self) -> torch.Tensor:  # int64 (N,)
        ...

    def __len__(self) -> int: ...

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0) -> Iterator[Batch]:
        """(images uint8 (B,3,H,W), labels int64 (B,), positions int64 (B,) into this source).

        Every position appears exactly once per call. `shuffle` draws the order from a
        torch.Generator seeded with `seed`: same seed, same order.
        """
        ...


@dataclass(frozen=True, eq=False)
class InMemoryImages:
    """Decoded images held in one tensor; batching is tensor indexing, no per-item Python work."""

    images: torch.Tensor  # uint8 (N, 3, H, W)
    labels: torch.Tensor  # int64 (N,)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(
                "images must be uint8 (N, 3, H, W); "
                f"got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (len(self.images),):
            raise ValueError(
                f"labels must be int64 ({len(self.images)},); "
                f"got {self.labels.dtype} {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def take(self, local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels at positions `local` (int64) of this source."""
        return self.images[local], self.labels[local]

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0) -> Iterator[Batch]:
        for local in _batch_order(len(self), batch_size, shuffle, seed):
            yield self.images[local], self.labels[local], local


@dataclass(frozen=True, eq=False)
class StreamingImages:
    """Images of `ds` at `positions`, decoded per batch by `num_workers` DataLoader processes."""

    ds: ImageDataset
    positions: np.ndarray  # int64 (N,) positions into ds
    size: int
    num_workers: int = 2
    labels: torch.Tensor = field(init=False)  # int64 (N,)

    def __post_init__(self) -> None:
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0; got {self.num_workers}")
        positions = as_positions(self.positions, len(self.ds.paths))
        object.__setattr__(self, "positions", positions)
        object.__setattr__(
            self, "labels", torch.from_numpy(self.ds.labels[positions].astype(np.int64))
        )

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.size, self.size)

    def take(self, local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = read_images(self.ds, self.positions[local.numpy()], size=self.size)
        return images, self.labels[local]

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0) -> Iterator[Batch]:
        yield from _stream(
            self, _batch_order(len(self), batch_size, shuffle, seed), self.num_workers
        )


@dataclass(frozen=True, eq=False)
class ConcatImages:
    """Sources one after another; position i of the concatenation maps to one part."""

    parts: tuple[InMemoryImages | StreamingImages, ...]
    labels: torch.Tensor = field(init=False)
    offsets: torch.Tensor = field(init=False)  # int64 (len(parts) + 1,), start of each part

    def __post_init__(self) -> None:
        lengths = torch.tensor([0] + [len(part) for part in self.parts], dtype=torch.int64)
        object.__setattr__(self, "offsets", lengths.cumsum(0))
        object.__setattr__(self, "labels", torch.cat([part.labels for part in self.parts]))

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.parts[0].image_shape

    def take(self, local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.empty((len(local), *self.image_shape), dtype=torch.uint8)
        part_of = (
            torch.searchsorted(self.offsets, local, right=True) - 1
        )  # (B,) part index per position
        for k in part_of.unique().tolist():
            chosen = part_of == k
            images[chosen] = self.parts[k].take(local[chosen] - self.offsets[k])[0]
        return images, self.labels[local]

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0) -> Iterator[Batch]:
        workers = max(
            (p.num_workers for p in self.parts if isinstance(p, StreamingImages)), default=0
        )
        yield from _stream(self, _batch_order(len(self), batch_size, shuffle, seed), workers)


def open_images(
    ds: ImageDataset,
    positions: Sequence[int],
    *,
    size: int,
    max_memory_bytes: int = 2 * 1024**3,
    num_workers: int = 2,
) -> InMemoryImages | StreamingImages:
    """Images of `ds` at `positions`: decoded into memory when N*3*size*size bytes fit in
    `max_memory_bytes` (with `num_workers` decoding threads), else streamed by that many workers."""
    positions = as_positions(positions, len(ds.paths))
    if len(positions) * 3 * size * size <= max_memory_bytes:
        images = read_images(ds, positions, size=size, num_workers=num_workers)
        return InMemoryImages(images, torch.from_numpy(ds.labels[positions].astype(np.int64)))
    return StreamingImages(ds, positions, size, num_workers)


def concat_sources(*sources: ImageSource) -> InMemoryImages | StreamingImages | ConcatImages:
    """The sources one after another: position i of the result is position i - offset of its part.

    All-in-memory inputs give one InMemoryImages; a streaming part keeps the result streaming.
    """
    parts: list[InMemoryImages | StreamingImages] = []
    for source in sources:
        if isinstance(source, ConcatImages):
            parts.extend(source.parts)
        elif isinstance(source, (InMemoryImages, StreamingImages)):
            parts.append(source)
        else:
            raise ValueError(
                f"cannot concatenate a {type(source).__name__}; "
                "expected InMemoryImages, StreamingImages "
                "or ConcatImages"
            )
    if not parts:
        raise ValueError("concat_sources needs at least one source")
    shapes = {part.image_shape for part in parts}
    if len(shapes) > 1:
        raise ValueError(
            f"sources have different image shapes {sorted(shapes)}; expected one shape"
        )
    if len(parts) == 1:
        return parts[0]
    if all(isinstance(part, InMemoryImages) for part in parts):
        return InMemoryImages(
            torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts])
        )
    return ConcatImages(tuple(parts))


def _batch_order(count: int, batch_size: int, shuffle: bool, seed: int) -> list[torch.Tensor]:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    if shuffle:
        order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    else:
        order = torch.arange(count)
    return list(order.split(batch_size))


class _TakeBatches(Dataset):
    """Adapts a source's `take` to DataLoader: each item is one whole batch of positions."""

    def __init__(self, source: StreamingImages | ConcatImages) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, local: torch.Tensor) -> Batch:
        images, labels = self.source.take(local)
        return images, labels, local


def _stream(
    source: StreamingImages | ConcatImages, order: list[torch.Tensor], num_workers: int
) -> Iterator[Batch]:
    # batch_size=None with a sampler of index tensors: each worker decodes one whole batch.
    loader = DataLoader(
        _TakeBatches(source), batch_size=None, sampler=order, num_workers=num_workers
    )
    yield from loader


def stack_images(images: Sequence[Image.Image | Path | str], *, size: int) -> torch.Tensor:
    """PIL images or image files -> uint8 (N, 3, size, size), resized bilinearly where needed:
    how generated images (in memory, in a run folder, in the app's store) join the training data."""
    arrays = []
    for image in images:
        if not isinstance(image, Image.Image):
            with Image.open(image) as opened:
                image = opened.convert("RGB")
        image = image.convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        arrays.append(np.asarray(image))
    if not arrays:
        return torch.empty(0, 3, size, size, dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
