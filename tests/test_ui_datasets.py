"""Importing datasets into the store (archives, folders under the data root, built-ins) and the
thumbnails the galleries show."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from PIL import Image

from storage import repository as repo
from tests.ui_support import link_demo_dataset, make_dataset_zip
from ui import dataset_service
from ui.datasets import list_data_root, project_config
from ui.studio import Studio, project_choices
from ui.thumbnails import render, thumbnail


@pytest.fixture
def studio(tmp_path, builtin_cache):
    link_demo_dataset(builtin_cache, tmp_path / "workspace")
    studio = Studio.open(tmp_path / "workspace", data_root=tmp_path / "data")
    yield studio
    studio.close()


@pytest.fixture
def mini_zip(tmp_path, builtin_cache):
    root = link_demo_dataset(builtin_cache, tmp_path / "source")
    return make_dataset_zip(tmp_path / "mini.zip", root, per_class={"train": 3, "valid": 1,
                                                                     "test": 1})


def test_an_uploaded_zip_becomes_a_project_with_workspace_paths(studio, mini_zip):
    project_id = dataset_service.upload_archive(studio, str(mini_zip))
    view = dataset_service.dataset_view(studio, project_id)
    assert view.name == "mini" and view.summary["split_sizes"] == {"train": 30, "valid": 10,
                                                                   "test": 10}
    assert view.summary["has_bias"] and view.summary["n_captioned"] == 50
    with studio.store.sessions() as session:
        samples = repo.list_samples(session, project_id)
        project = repo.get_project(session, project_id)
    assert len(samples) == 50
    assert all(studio.store.workspace.resolve(s.path).is_file() for s in samples)
    config = project_config(studio.store.workspace, project.settings)
    assert Path(config.dataset).is_dir() and "images/zips" in config.dataset
    again = dataset_service.upload_archive(studio, str(mini_zip))  # same name: a new project
    assert dict(project_choices(studio))["mini (2)"] == again


@pytest.mark.parametrize("damage, message", [
    ("not a zip", "not a readable zip file"),
    ("no metadata", "no metadata.csv and no class sub-folders"),
    ("bad split", "is not one of train, valid, test"),
])
def test_a_bad_upload_is_explained_and_writes_nothing(studio, tmp_path, damage, message):
    path = tmp_path / "bad.zip"
    if damage == "not a zip":
        path.write_bytes(b"PK not really")
    else:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("readme.txt", "hello")
            if damage == "bad split":
                archive.writestr("metadata.csv", "path,split,label\nreadme.txt,training,a\n")
    with pytest.raises(ValueError, match=message):
        dataset_service.upload_archive(studio, str(path))
    assert project_choices(studio) == []


def test_only_zips_and_an_uploaded_file_are_accepted(studio, tmp_path):
    with pytest.raises(ValueError, match="No file uploaded"):
        dataset_service.upload_archive(studio, None)
    (tmp_path / "data.tar").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a .zip file"):
        dataset_service.upload_archive(studio, str(tmp_path / "data.tar"))


def test_a_folder_under_the_data_root_is_linked_into_the_workspace(studio, tmp_path,
                                                                   builtin_cache, mini_zip):
    data = tmp_path / "data"
    with zipfile.ZipFile(mini_zip) as archive:
        archive.extractall(data)
    (data / ".hidden").mkdir()
    assert list_data_root(studio.data_root) == ["mini"]
    heard = []
    project_id = dataset_service.open_data_folder(studio, "mini",
                                                  ui=lambda f, m: heard.append((f, m)))
    # a bar with counts: every image checked, then the rows stored
    assert ("checked 50 of 50 images" in [m for _, m in heard]
            and heard[-1][1] == "storing 50 samples")
    assert [f for f, _ in heard] == sorted(f for f, _ in heard) and heard[-1][0] <= 1.0
    with studio.store.sessions() as session:
        sample = repo.list_samples(session, project_id)[0]
    assert sample.path.startswith("images/links/")
    assert studio.store.workspace.resolve(sample.path).is_file()
    with pytest.raises(ValueError, match="not a folder under the data root"):
        dataset_service.open_data_folder(studio, str(tmp_path))


def test_folders_need_a_configured_data_root(tmp_path):
    studio = Studio.open(tmp_path / "ws")
    try:
        assert dataset_service.data_root_entries(studio) == []
        with pytest.raises(ValueError, match="--data-root"):
            dataset_service.open_data_folder(studio, "anything")
    finally:
        studio.close()


def test_built_ins_open_with_their_conflict_ratio(studio):
    project_id = dataset_service.open_builtin(studio, "builtin:colored-digits", 0.01, 0)
    view = dataset_service.dataset_view(studio, project_id)
    assert view.name.startswith("Built-in: colored digits (1.0%")
    with pytest.raises(ValueError, match="unknown built-in"):
        dataset_service.open_builtin(studio, "builtin:nope", 0.01, 0)


def test_thumbnails_enlarge_small_images_crisply_and_are_cached(tmp_path):
    from storage import Workspace

    source = tmp_path / "digit.png"
    pixels = Image.new("RGB", (28, 28), (0, 0, 0))
    pixels.putpixel((3, 4), (255, 0, 0))
    pixels.save(source)
    workspace = Workspace(tmp_path / "ws")
    path = thumbnail(workspace, source, 1, 7)
    assert path == tmp_path / "ws" / "thumbnails" / "1" / "7-112.webp"
    with Image.open(path) as image:
        assert image.size == (112, 112)
        assert image.convert("RGB").getpixel((13, 17)) == (255, 0, 0)  # one pixel -> 4 x 4
    modified = path.stat().st_mtime_ns
    assert thumbnail(workspace, source, 1, 7) == path and path.stat().st_mtime_ns == modified
    large = tmp_path / "photo.png"
    Image.new("RGB", (640, 320)).save(large)
    with Image.open(__import__("io").BytesIO(render(large, size=112))) as image:
        assert image.size == (112, 56)
