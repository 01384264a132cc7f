"""The loader: the CSV format round-trips, ImageFolders split reproducibly, zips extract safely,
bad input raises a ValueError that names the problem, and every image mode decodes to RGB."""

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffubias.dataset import ImageDataset, as_positions
from diffubias.dataset_sources import load_dataset
from diffubias.decoding import infer_image_size, read_images, read_masks


def _png(path: Path, color=(200, 30, 40), size=(8, 8), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def _csv(root: Path, lines: list[str]) -> None:
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")


def _simple(root: Path, rows: list[tuple[str, str, str]]) -> Path:
    """A CSV dataset with one 8x8 image per (path, split, label) row."""
    for path, _, _ in rows:
        _png(root / path)
    _csv(root, ["path,split,label"] + [",".join(row) for row in rows])
    return root


TWO_CLASSES = [("a/1.png", "train", "cat"), ("a/2.png", "train", "dog"), ("b/3.png", "test", "dog")]


# ---------------------------------------------------------------------------------------------
# The CSV format


def test_csv_round_trip(tmp_path):
    root = tmp_path / "pets"
    for i in range(5):
        _png(root / f"img/{i}.png", color=(i * 40, 0, 0), size=(10, 6))
        Image.new("L", (10, 6), 255 if i % 2 else 0).save(root / f"img/{i}_mask.png")
    _csv(
        root,
        [
            "path,split,label,bias,caption,caption_2,caption_3,mask,notes",
            "img/0.png,train,dog,water,a dog,,a dog swimming,img/0_mask.png,x",
            "img/1.png,train,cat,land,,,,img/1_mask.png,",
            "./img/2.png,valid,dog,,a dog again,two,,,",
            "img/3.png, test ,cat,water,only,,,img/3_mask.png,",
            "img/4.png,train,cat,land,c1,c2,c3,img/4_mask.png,",
        ],
    )
    ds = load_dataset(root, cache_dir=tmp_path / "cache")
    assert ds.name == "pets" and ds.root == root.resolve()
    assert ds.paths == ("img/0.png", "img/1.png", "img/2.png", "img/3.png", "img/4.png")
    assert ds.split.tolist() == ["train", "train", "valid", "test", "train"]
    assert ds.class_names == ("cat", "dog") and ds.num_classes == 2
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [1, 0, 1, 0, 0]
    assert ds.bias_names == ("land", "water")
    assert ds.bias.tolist() == [1, 0, -1, 1, 0]  # -1: empty bias cell
    assert ds.captions == (
        ("a dog", "a dog swimming"),
        (),
        ("a dog again", "two"),
        ("only",),
        ("c1", "c2", "c3"),
    )
    assert ds.mask_paths == (
        "img/0_mask.png",
        "img/1_mask.png",
        None,
        "img/3_mask.png",
        "img/4_mask.png",
    )
    assert ds.skipped == ()
    assert ds.indices("train").tolist() == [0, 1, 4] and ds.indices("train").dtype == np.int64
    assert ds.indices("test").tolist() == [3]
    with pytest.raises(ValueError, match="split 'val' is not one of train, valid, test"):
        ds.indices("val")
    masks = read_masks(ds, [0, 1], size=4)
    assert masks.shape == (2, 4, 4) and masks.dtype == bool
    assert not masks[0].any() and masks[1].all()


def test_csv_without_optional_columns(tmp_path):
    ds = load_dataset(_simple(tmp_path / "d", TWO_CLASSES), cache_dir=tmp_path / "cache")
    assert ds.bias is None and ds.bias_names == () and ds.mask_paths is None
    assert ds.captions == ((), (), ())
    with pytest.raises(ValueError, match="has no mask column"):
        read_masks(ds, [0], size=8)


def test_missing_corrupt_and_duplicate_files_are_skipped_and_reported(tmp_path):
    root = tmp_path / "d"
    rows = TWO_CLASSES + [("a/4.png", "train", "cat")]
    _simple(root, rows)
    (root / "a/4.png").write_bytes(b"this is not a png")
    with open(root / "metadata.csv", "a") as f:
        f.write("a/gone.png,train,cat\n")  # no such file
        f.write("a/1.png,train,cat\n")  # duplicate of line 2
    ds = load_dataset(root, cache_dir=tmp_path / "cache")
    assert ds.paths == ("a/1.png", "a/2.png", "b/3.png")
    reasons = {s.path: s.reason for s in ds.skipped}
    assert reasons["a/gone.png"] == "image file not found"
    assert reasons["a/4.png"].startswith("not an image")
    assert "duplicate row (line 7 repeats line 2)" in reasons["a/1.png"]
    assert len(ds.skipped) == 3


def test_mask_problems_skip_the_row(tmp_path):
    root = tmp_path / "d"
    _simple(root, TWO_CLASSES)
    _png(root / "m1.png", 255, size=(8, 8), mode="L")
    _png(root / "m2.png", 255, size=(9, 8), mode="L")
    _csv(
        root,
        [
            "path,split,label,mask",
            "a/1.png,train,cat,m1.png",
            "a/2.png,train,dog,m2.png",  # wrong size
            "b/3.png,train,dog,missing.png",
        ],
    )
    _png(root / "c.png")
    with open(root / "metadata.csv", "a") as f:
        f.write("c.png,train,dog,m1.png\n")
    ds = load_dataset(root, cache_dir=tmp_path / "cache")
    assert ds.paths == ("a/1.png", "c.png")
    reasons = {s.path: s.reason for s in ds.skipped}
    assert reasons["a/2.png"] == "mask m2.png is 9x8, image is 8x8"
    assert reasons["b/3.png"] == "mask file not found: missing.png"


def test_everything_skipped_raises(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    _csv(root, ["path,split,label", "x.png,train,cat", "y.png,train,dog"])
    with pytest.raises(
        ValueError, match="all 2 images were skipped, e.g. x.png: image file not found"
    ):
        load_dataset(root, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["path,split", "a/1.png,train"], "missing required column.*label"),
        (
            ["path,split,label", "a/1.png,train,cat", "a/2.png,val,dog"],
            "line 3: split 'val' is not one of train, valid, test",
        ),
        (
            ["path,split,label", "a/1.png,train,cat", "a/2.png,train,cat", "b/3.png,test,dog"],
            "'dog' appear only in valid/test",
        ),
        (
            ["path,split,label", "a/1.png,train,cat", "b/3.png,test,cat"],
            r"train has only one class \('cat'\)",
        ),
        (["path,split,label", "a/1.png,valid,cat", "b/3.png,test,dog"], "no train rows"),
        (
            ["path,split,label", "a/1.png,train,cat", "../a/2.png,train,dog"],
            r"line 3: path '\.\./a/2\.png' escapes",
        ),
        (
            ["path,split,label", "/etc/a.png,train,cat", "a/2.png,train,dog"],
            "line 2: path '/etc/a.png' escapes",
        ),
        (
            ["path,split,label", "C:\\a.png,train,cat", "a/2.png,train,dog"],
            "escapes the dataset folder",
        ),
        (["path,split,label", "a/1.png,train,", "a/2.png,train,dog"], "line 2: empty label"),
        (
            ["path,split,label,mask", "a/1.png,train,cat,../m.png", "a/2.png,train,dog,"],
            "mask '../m.png' escapes",
        ),
        (["path,split,label"], "has no rows"),
    ],
)
def test_bad_metadata_raises_naming_the_problem(tmp_path, lines, message):
    root = _simple(tmp_path / "d", TWO_CLASSES)
    _csv(root, lines)
    with pytest.raises(ValueError, match=message):
        load_dataset(root, cache_dir=tmp_path / "cache")


def test_bad_sources_raise(tmp_path):
    (tmp_path / "empty").mkdir()
    _png(tmp_path / "loose/1.png")
    with pytest.raises(ValueError, match="no metadata.csv and no class sub-folders"):
        load_dataset(tmp_path / "loose", cache_dir=tmp_path / "cache")
    with pytest.raises(
        ValueError, match="is not a folder, a .zip file, or one of builtin:colored-digits"
    ):
        load_dataset(tmp_path / "nowhere", cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="unknown built-in dataset 'mnist'"):
        load_dataset("builtin:mnist", cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match=r"valid_fraction must be in \(0, 1\); got 1.5"):
        load_dataset(tmp_path / "empty", cache_dir=tmp_path / "cache", valid_fraction=1.5)
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.zip is not a readable zip file"):
        load_dataset(tmp_path / "bad.zip", cache_dir=tmp_path / "cache")


# ---------------------------------------------------------------------------------------------
# ImageFolder


def _image_folder(root: Path, counts: dict[str, int]) -> Path:
    for name, count in counts.items():
        for i in range(count):
            _png(root / name / f"{i:03d}.png", color=(i, 0, 0))
    return root


def test_image_folder_gets_a_seeded_stratified_split(tmp_path):
    root = _image_folder(tmp_path / "animals", {"cat": 20, "dog": 30, "eel": 10})
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / ".DS_Store").write_bytes(b"")
    _png(root / "dog" / "nested" / "deep.png")
    ds = load_dataset(root, cache_dir=tmp_path / "cache", seed=3)
    assert ds.name == "animals" and ds.class_names == ("cat", "dog", "eel")
    assert len(ds.paths) == 61 and ds.bias is None and ds.mask_paths is None
    assert ds.captions == ((),) * 61 and len(ds.indices("test")) == 0
    assert [s.path for s in ds.skipped] == ["cat/notes.txt"]
    valid = ds.indices("valid")
    assert (
        np.abs(np.bincount(ds.labels[valid]) - 0.2 * np.array([20, 31, 10])).max() < 1
    )  # 20 % of each class
    assert all(ds.class_names[ds.labels[i]] == ds.paths[i].split("/")[0] for i in range(61))
    again = load_dataset(root, cache_dir=tmp_path / "cache", seed=3)
    other = load_dataset(root, cache_dir=tmp_path / "cache", seed=4)
    assert np.array_equal(again.split, ds.split) and not np.array_equal(other.split, ds.split)
    half = load_dataset(root, cache_dir=tmp_path / "cache", valid_fraction=0.5)
    assert len(half.indices("valid")) == 31  # sklearn rounds the valid share up


def test_image_folder_problems_raise(tmp_path):
    only = _image_folder(tmp_path / "one", {"cat": 5})
    with pytest.raises(ValueError, match="only one class folder with images \\('cat'\\)"):
        load_dataset(only, cache_dir=tmp_path / "cache")
    tiny = _image_folder(tmp_path / "tiny", {"cat": 5, "dog": 1})
    with pytest.raises(ValueError, match="'dog' \\(1\\) need at least 2 images"):
        load_dataset(tiny, cache_dir=tmp_path / "cache")


# ---------------------------------------------------------------------------------------------
# Zips


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _png_bytes(color=(10, 20, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_zip_loads_through_its_wrapping_folder_and_is_extracted_once(tmp_path):
    members = {
        "pets/metadata.csv": b"path,split,label\nimages/1.png,train,cat\nimages/2.png,train,dog\n",
        "pets/images/1.png": _png_bytes(),
        "pets/images/2.png": _png_bytes((200, 0, 0)),
        "__MACOSX/pets/._1.png": b"junk",
    }
    archive = _zip(tmp_path / "upload.zip", members)
    cache = tmp_path / "cache"
    ds = load_dataset(archive, cache_dir=cache)
    assert ds.name == "upload" and ds.root.name == "pets" and ds.root.is_relative_to(cache)
    assert ds.class_names == ("cat", "dog")
    assert read_images(ds, [1], size=8)[0, :, 0, 0].tolist() == [200, 0, 0]
    stamp = (ds.root / "metadata.csv").stat().st_mtime_ns
    again = load_dataset(archive, cache_dir=cache)
    assert again.root == ds.root and (again.root / "metadata.csv").stat().st_mtime_ns == stamp
    assert [p.name for p in (cache / "zips").iterdir() if p.name.startswith(".")] == []


def test_zipped_image_folder_loads(tmp_path):
    members = {f"{c}/{i}.png": _png_bytes((i, 0, 0)) for c in ("cat", "dog") for i in range(5)}
    ds = load_dataset(_zip(tmp_path / "folders.zip", members), cache_dir=tmp_path / "cache")
    assert (
        ds.class_names == ("cat", "dog") and len(ds.paths) == 10 and len(ds.indices("valid")) == 2
    )


@pytest.mark.parametrize("evil", ["../evil.png", "ok/../../evil.png", "/abs/evil.png"])
def test_zip_with_escaping_member_is_rejected_before_writing(tmp_path, evil):
    members = {"metadata.csv": b"path,split,label\n", "a/1.png": _png_bytes(), evil: _png_bytes()}
    archive = _zip(tmp_path / "evil.zip", members)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="absolute path or '..'"):
        load_dataset(archive, cache_dir=cache)
    assert not cache.exists()
    assert not (tmp_path / "evil.png").exists()


# ---------------------------------------------------------------------------------------------
# Built-ins through the loader


def test_builtins_load_with_names_captions_and_masks(builtin_cache):
    digits = load_dataset(
        "builtin:colored-digits", cache_dir=builtin_cache, conflict_ratio=0.01, seed=0
    )
    assert (
        digits.name == "builtin:colored-digits"
        and digits.num_classes == 10
        and len(digits.bias_names) == 10
    )
    assert len(digits.indices("train")) == 10000 and digits.skipped == ()
    assert all(len(c) == 3 for c in digits.captions[:100])
    assert infer_image_size(digits) == 28 and infer_image_size(digits, max_size=16) == 16
    sevens = digits.indices("train")[
        digits.labels[digits.indices("train")] == digits.class_names.index("seven")
    ]
    colours, counts = np.unique(digits.bias[sevens], return_counts=True)
    assert (
        digits.bias_names[colours[counts.argmax()]] == "purple"
    )  # digit i is aligned with colour i
    shapes = load_dataset("builtin:shape-scenes", cache_dir=builtin_cache)
    assert shapes.class_names == ("circle", "cross", "heart", "square", "star", "triangle")
    masks = read_masks(shapes, [0, 1, 2], size=64)
    images = read_images(shapes, [0, 1, 2], size=64)
    assert images.shape == (3, 3, 64, 64) and masks.shape == (3, 64, 64)
    assert 0.03 < masks.mean() < 0.5


# ---------------------------------------------------------------------------------------------
# Decoding


def _one_image_dataset(
    tmp_path: Path, image: Image.Image, name: str = "x.png", **save
) -> ImageDataset:
    root = tmp_path / "d"
    root.mkdir(exist_ok=True)
    image.save(root / name, **save)
    _png(root / "other.png")
    _csv(root, ["path,split,label", f"{name},train,a", "other.png,train,b"])
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


def test_positions_and_sizes_are_checked(tmp_path):
    ds = load_dataset(_simple(tmp_path / "d", TWO_CLASSES), cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="position 3 is out of range; expected 0 <= position < 3"):
        read_images(ds, [0, 3], size=8)
    with pytest.raises(ValueError, match="size must be a positive integer; got 0"):
        read_images(ds, [0], size=0)
    assert read_images(ds, [], size=8).shape == (0, 3, 8, 8)
    assert as_positions(torch.tensor([2, 0]), 3).tolist() == [2, 0]
    with pytest.raises(ValueError, match="1-D sequence of integers"):
        as_positions(np.array([0.5]), 3)
