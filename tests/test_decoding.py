"""Decoding: every image mode becomes RGB, alpha is composited onto black, images are stretched to
size, EXIF orientation is applied, and threads decode the same pixels."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffubias.dataset import ImageDataset
from diffubias.dataset_sources import load_dataset
from diffubias.decoding import infer_image_size, read_images
from tests.dataset_files import save_png, write_csv


def _one_image_dataset(
    tmp_path: Path, image: Image.Image, name: str = "x.png", **save
) -> ImageDataset:
    root = tmp_path / "d"
    root.mkdir(exist_ok=True)
    image.save(root / name, **save)
    save_png(root / "other.png")
    write_csv(root, ["path,split,label", f"{name},train,a", "other.png,train,b"])
    return load_dataset(root, cache_dir=tmp_path / "cache")


def test_palette_image_decodes_to_rgb(tmp_path):
    image = Image.new("RGB", (4, 4), (10, 200, 30)).quantize(4)
    assert image.mode == "P"
    decoded = read_images(_one_image_dataset(tmp_path, image), [0], size=4)
    assert decoded.dtype == torch.uint8 and decoded.shape == (1, 3, 4, 4)
    assert decoded[0, :, 0, 0].tolist() == [10, 200, 30]


def test_alpha_is_composited_onto_black(tmp_path):
    image = Image.new("RGBA", (4, 4), (250, 100, 50, 255))
    image.putpixel((0, 0), (250, 100, 50, 0))
    decoded = read_images(_one_image_dataset(tmp_path, image), [0], size=4)
    assert decoded[0, :, 0, 0].tolist() == [0, 0, 0]
    assert decoded[0, :, 1, 1].tolist() == [250, 100, 50]


def test_grayscale_and_16_bit_decode_to_gray_rgb(tmp_path):
    gray = read_images(_one_image_dataset(tmp_path, Image.new("L", (4, 4), 77)), [0], size=4)
    assert (gray == 77).all()
    deep = Image.fromarray(np.full((4, 4), 32896, dtype=np.uint16))
    assert deep.mode.startswith("I;16")
    decoded = read_images(_one_image_dataset(tmp_path, deep, name="deep.png"), [0], size=4)
    assert (decoded == 128).all()  # 32896 / 257


def test_cmyk_and_two_tone_decode(tmp_path):
    cmyk = read_images(
        _one_image_dataset(
            tmp_path, Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "c.jpg", quality=100
        ),
        [0],
        size=4,
    )
    assert cmyk[0, 0].float().mean() > 200 and cmyk[0, 1].float().mean() < 50  # red
    bits = read_images(
        _one_image_dataset(tmp_path, Image.new("1", (4, 4), 1), "b.png"), [0], size=4
    )
    assert (bits == 255).all()


def test_resize_keeps_colour_and_stretches_to_square(tmp_path):
    ds = _one_image_dataset(tmp_path, Image.new("RGB", (40, 20), (90, 60, 30)))
    decoded = read_images(ds, [0, 1], size=16)
    assert decoded.shape == (2, 3, 16, 16)
    assert (decoded[0, 0] == 90).all() and (decoded[0, 2] == 30).all()
    assert infer_image_size(ds) == 40 and infer_image_size(ds, max_size=32) == 32


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (16, 16), (255, 0, 0))
    image.paste((0, 0, 255), (8, 0, 16, 16))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    decoded = read_images(_one_image_dataset(tmp_path, image, "r.png", exif=exif), [0], size=16)[0]
    top, bottom = decoded[:, :4].float().mean(dim=(1, 2)), decoded[:, -4:].float().mean(dim=(1, 2))
    assert top[0] > 200 and bottom[2] > 200  # left went to the top


def test_threaded_decoding_matches_sequential(builtin_cache):
    ds = load_dataset("builtin:shape-scenes", cache_dir=builtin_cache)
    positions = list(range(0, 300, 7))
    assert torch.equal(
        read_images(ds, positions, size=32), read_images(ds, positions, size=32, num_workers=2)
    )


def test_a_reopened_folder_decodes_only_the_files_that_changed(tmp_path, monkeypatch):
    import os

    from diffubias import decoding

    root = tmp_path / "d"
    for i in range(6):
        save_png(root / f"{i}.png", color=(i * 40, 10, 10))
    write_csv(root, ["path,split,label"] + [f"{i}.png,train,{'ab'[i % 2]}" for i in range(6)])
    decoded = []
    verify = decoding._verify_image
    monkeypatch.setattr(decoding, "_verify_image", lambda p: decoded.append(p.name) or verify(p))

    assert len(load_dataset(root, cache_dir=tmp_path / "cache").paths) == 6
    assert sorted(decoded) == [f"{i}.png" for i in range(6)]  # every file once at import
    decoded.clear()
    assert len(load_dataset(root, cache_dir=tmp_path / "cache").paths) == 6
    assert decoded == []  # reopened (a restart): nothing changed, nothing decoded again

    # damaged after the first check: a new size and time, so it is decoded again and skipped
    (root / "3.png").write_bytes((root / "3.png").read_bytes()[:40])
    os.utime(root / "3.png", ns=(1, 1))
    again = load_dataset(root, cache_dir=tmp_path / "cache")
    assert decoded == ["3.png"]
    assert "3.png" not in again.paths and [s.path for s in again.skipped] == ["3.png"]
