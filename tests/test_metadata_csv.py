"""The metadata.csv layout: the format round-trips, missing, corrupt and duplicate files are
skipped and reported, and bad metadata raises a ValueError that names the problem."""

import numpy as np
import pytest
from PIL import Image

from diffubias.dataset_sources import load_dataset
from diffubias.decoding import read_masks
from tests.dataset_files import TWO_CLASSES, save_png, simple_dataset, write_csv


def test_csv_round_trip(tmp_path):
    root = tmp_path / "pets"
    for i in range(5):
        save_png(root / f"img/{i}.png", color=(i * 40, 0, 0), size=(10, 6))
        Image.new("L", (10, 6), 255 if i % 2 else 0).save(root / f"img/{i}_mask.png")
    write_csv(
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
    ds = load_dataset(simple_dataset(tmp_path / "d", TWO_CLASSES), cache_dir=tmp_path / "cache")
    assert ds.bias is None and ds.bias_names == () and ds.mask_paths is None
    assert ds.captions == ((), (), ())
    with pytest.raises(ValueError, match="has no mask column"):
        read_masks(ds, [0], size=8)


def test_missing_corrupt_and_duplicate_files_are_skipped_and_reported(tmp_path):
    root = tmp_path / "d"
    rows = TWO_CLASSES + [("a/4.png", "train", "cat")]
    simple_dataset(root, rows)
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
    simple_dataset(root, TWO_CLASSES)
    save_png(root / "m1.png", 255, size=(8, 8), mode="L")
    save_png(root / "m2.png", 255, size=(9, 8), mode="L")
    write_csv(
        root,
        [
            "path,split,label,mask",
            "a/1.png,train,cat,m1.png",
            "a/2.png,train,dog,m2.png",  # wrong size
            "b/3.png,train,dog,missing.png",
        ],
    )
    save_png(root / "c.png")
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
    write_csv(root, ["path,split,label", "x.png,train,cat", "y.png,train,dog"])
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
    root = simple_dataset(tmp_path / "d", TWO_CLASSES)
    write_csv(root, lines)
    with pytest.raises(ValueError, match=message):
        load_dataset(root, cache_dir=tmp_path / "cache")
