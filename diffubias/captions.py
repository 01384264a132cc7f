"""Captioning: turn candidate samples into text descriptions.

A captioner returns, for each requested dataset position, one or more captions. The `metadata`
backend reads the captions stored with the dataset (CSV columns caption, caption_2, ...); model
backends (BLIP, VLMs) live in `diffubias.hf_captioners` and follow the same protocol;
`diffubias.backends` builds either by name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from diffubias.dataset import ImageDataset


@dataclass(frozen=True)
class Caption:
    position: int  # dataset position of the captioned sample
    text: str
    backend: str
    model: str | None = None
    params: Mapping = field(default_factory=dict)


class Captioner(Protocol):
    backend: str

    def caption(self, ds: ImageDataset, positions: Sequence[int]) -> list[Caption]: ...


@dataclass(frozen=True)
class MetadataCaptioner:
    """Captions that ship with the dataset; up to `per_image` per sample, in column order."""

    per_image: int = 3
    backend: str = "metadata"

    def caption(self, ds: ImageDataset, positions: Sequence[int]) -> list[Caption]:
        if self.per_image < 1:
            raise ValueError(f"per_image must be at least 1, got {self.per_image}")
        if not any(ds.captions):
            raise ValueError(
                f"dataset {ds.name!r} has no captions in metadata.csv (columns caption, "
                "caption_2, ...); add them or choose a model captioner")
        return [Caption(int(p), text, self.backend, params={"per_image": self.per_image})
                for p in positions for text in ds.captions[int(p)][: self.per_image]]
