"""Zips: a zipped dataset loads through its wrapping folder and is extracted once, and a member
that escapes the archive is refused before anything is written."""

import io
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from diffubias.dataset_sources import load_dataset
from diffubias.decoding import read_images


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
