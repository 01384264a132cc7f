"""Image sources: every position once per epoch, the same order for the same seed in memory and
streamed, images that match their positions, and concatenation that indexes the joined source."""

import numpy as np
import pytest
import torch
from PIL import Image

from diffubias.dataset import ImageDataset
from diffubias.dataset_sources import load_dataset
from diffubias.images import (
    ConcatImages,
    InMemoryImages,
    StreamingImages,
    concat_sources,
    open_images,
)

NUM_IMAGES = 37  # not a multiple of the batch sizes used below: the last batch is short


@pytest.fixture(scope="module")
def coded(tmp_path_factory: pytest.TempPathFactory) -> ImageDataset:
    """Image i is a solid colour (i, 255 - i, 7), label i % 3: each pixel says which image it is."""
    root = tmp_path_factory.mktemp("coded")
    lines = ["path,split,label"]
    for i in range(NUM_IMAGES):
        Image.new("RGB", (6, 6), (i, 255 - i, 7)).save(root / f"{i:02d}.png")
        lines.append(f"{i:02d}.png,train,c{i % 3}")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return load_dataset(root, cache_dir=root / "cache")


def _epoch(source, batch_size: int, **kwargs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batches = list(source.batches(batch_size, **kwargs))
    assert all(len(b[0]) <= batch_size for b in batches)
    images, labels, positions = (torch.cat(parts) for parts in zip(*batches, strict=True))
    assert (
        images.dtype == torch.uint8
        and labels.dtype == torch.int64
        and positions.dtype == torch.int64
    )
    return images, labels, positions


def _check_epoch(
    source, expected_code: torch.Tensor, batch_size: int = 8, **kwargs
) -> torch.Tensor:
    """Every position exactly once, with its own image and label; returns the order."""
    images, labels, positions = _epoch(source, batch_size, **kwargs)
    assert sorted(positions.tolist()) == list(range(len(source)))
    assert torch.equal(images[:, 0, 0, 0].long(), expected_code[positions])
    assert torch.equal(labels, source.labels[positions])
    return positions


def test_in_memory_and_streaming_serve_the_same_epochs(coded):
    positions = np.arange(NUM_IMAGES)
    memory = open_images(coded, positions, size=6)
    streaming = open_images(coded, positions, size=6, max_memory_bytes=0, num_workers=0)
    assert isinstance(memory, InMemoryImages) and isinstance(streaming, StreamingImages)
    assert len(memory) == len(streaming) == NUM_IMAGES
    assert torch.equal(memory.labels, streaming.labels)
    code = torch.arange(NUM_IMAGES)
    for source in (memory, streaming):
        assert _check_epoch(source, code).tolist() == list(
            range(NUM_IMAGES)
        )  # unshuffled: in order
        first = _check_epoch(source, code, shuffle=True, seed=5)
        assert first.tolist() != list(range(NUM_IMAGES))
        assert torch.equal(first, _check_epoch(source, code, shuffle=True, seed=5))
        assert not torch.equal(first, _check_epoch(source, code, shuffle=True, seed=6))
    same_seed = [_epoch(s, 8, shuffle=True, seed=1)[2] for s in (memory, streaming)]
    assert torch.equal(*same_seed)


def test_streaming_with_worker_processes(coded):
    positions = np.arange(0, NUM_IMAGES, 2)  # a subset: positions are into the source, not ds
    source = StreamingImages(coded, positions, size=3, num_workers=2)
    images, _, order = _epoch(source, 4, shuffle=True, seed=0)
    assert sorted(order.tolist()) == list(range(len(positions)))
    assert images.shape == (len(positions), 3, 3, 3)
    assert torch.equal(images[:, 0, 1, 1].long(), torch.from_numpy(positions)[order])
    assert torch.equal(source.labels, torch.from_numpy(coded.labels[positions]))


def test_open_images_picks_memory_by_budget(coded):
    small = open_images(coded, [0, 1, 2], size=6, max_memory_bytes=3 * 3 * 6 * 6)
    large = open_images(coded, [0, 1, 2], size=6, max_memory_bytes=3 * 3 * 6 * 6 - 1)
    assert isinstance(small, InMemoryImages) and small.images.shape == (3, 3, 6, 6)
    assert isinstance(large, StreamingImages)


def test_concat_positions_index_the_concatenation(coded):
    first = open_images(coded, [5, 6, 7], size=6)
    second = open_images(coded, [20, 21], size=6)
    streamed = open_images(coded, [30, 31, 32, 33], size=6, max_memory_bytes=0, num_workers=0)
    joined = concat_sources(first, second)
    assert isinstance(joined, InMemoryImages)  # in memory + in memory stays in memory
    _check_epoch(joined, torch.tensor([5, 6, 7, 20, 21]), batch_size=2, shuffle=True, seed=3)
    mixed = concat_sources(joined, streamed)
    assert isinstance(mixed, ConcatImages) and len(mixed) == 9
    code = torch.tensor([5, 6, 7, 20, 21, 30, 31, 32, 33])
    _check_epoch(mixed, code, batch_size=4)
    _check_epoch(mixed, code, batch_size=4, shuffle=True, seed=9)
    nested = concat_sources(mixed, first)
    assert isinstance(nested, ConcatImages) and len(nested.parts) == 3
    _check_epoch(
        nested, torch.cat([code, torch.tensor([5, 6, 7])]), batch_size=5, shuffle=True, seed=1
    )


def test_in_memory_batching_indexes_one_tensor():
    images = torch.randint(0, 256, (1000, 3, 4, 4), dtype=torch.uint8)
    source = InMemoryImages(images, torch.arange(1000) % 7)
    batch_images, batch_labels, positions = next(source.batches(64, shuffle=True, seed=0))
    assert torch.equal(batch_images, images[positions]) and torch.equal(batch_labels, positions % 7)


def test_bad_sources_and_batch_sizes_raise(coded):
    memory = open_images(coded, [0, 1], size=6)
    with pytest.raises(ValueError, match="batch_size must be a positive integer; got 0"):
        next(memory.batches(0))
    with pytest.raises(ValueError, match="different image shapes"):
        concat_sources(memory, open_images(coded, [0], size=4))
    with pytest.raises(ValueError, match="cannot concatenate a list"):
        concat_sources(memory, [1, 2])
    with pytest.raises(ValueError, match="images must be uint8 \\(N, 3, H, W\\)"):
        InMemoryImages(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="labels must be int64 \\(2,\\)"):
        InMemoryImages(
            torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64)
        )
    with pytest.raises(ValueError, match="position 99 is out of range"):
        StreamingImages(coded, [99], 6)


def test_stack_images_resizes_pil_images_and_files_to_the_classifier_size(tmp_path):
    from PIL import Image

    from diffubias.images import stack_images

    red = Image.new("RGB", (5, 7), (255, 0, 0))
    grey = tmp_path / "grey.png"
    Image.new("L", (12, 12), 128).save(grey)
    out = stack_images([red, grey], size=12)
    assert out.shape == (2, 3, 12, 12) and out.dtype == torch.uint8
    assert out[0, 0].min() == 255 and out[0, 1].max() == 0 and out[1].float().mean() == 128
    assert stack_images([], size=4).shape == (0, 3, 4, 4)
