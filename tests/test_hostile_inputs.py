"""Bad and hostile input, end to end through the functions the Dataset tab calls: every case of
tests/hostile_corpus.py is rejected with a message that says what is wrong and what to do (and
leaves the store and the workspace exactly as they were), converted to RGB, or skipped and
listed in the import report the user sees. Also: settings a run must refuse, and captions that
a spreadsheet would run as formulas."""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import re
import sqlite3
import zipfile
from pathlib import Path

import numpy as np
import pytest

from diffubias.config import RunConfig
from diffubias.dataset_sources import load_dataset
from diffubias.decoding import read_images
from diffubias.scoring import top_k_per_class
from diffubias.text_safety import (
    MAX_PROMPT_CHARS,
    check_prompt_text,
    csv_cell,
    csv_row,
    from_csv_cell,
)
from tests.hostile_corpus import (
    BASE_ROWS,
    CAPTION_INJECTIONS,
    PARAMETER_CASES,
    UPLOAD_CASES,
    base_members,
    metadata,
    png,
)
from ui import dataset_service
from ui.datasets import DatasetCache
from ui.studio import Studio


@pytest.fixture
def studio(tmp_path):
    studio = Studio.open(tmp_path / "workspace", data_root=tmp_path / "data")
    yield studio
    studio.close()


def snapshot(studio: Studio) -> dict:
    """Every folder and file of the workspace (files by content, the database by its rows)."""
    root = studio.store.workspace.root
    database = studio.store.workspace.database_path.name
    entries = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            entries[os.path.relpath(os.path.join(folder, name), root)] = "dir"
        for name in files:
            path = os.path.join(folder, name)
            if not name.startswith(database):  # the database, its -wal and -shm: by rows below
                entries[os.path.relpath(path, root)] = hashlib.sha256(
                    Path(path).read_bytes()).hexdigest()
    with sqlite3.connect(f"file:{root / database}?mode=ro", uri=True) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        rows = {t: db.execute(f'SELECT * FROM "{t}"').fetchall() for t in tables}
    return {"files": entries, "rows": rows}


def test_the_corpus_covers_every_kind_of_bad_input():
    kinds = {(case.category, case.outcome) for case in UPLOAD_CASES}
    assert {("archive", "rejected"), ("image", "converted"), ("image", "skipped"),
            ("metadata", "rejected"), ("metadata", "skipped")} <= kinds
    assert len({case.id for case in UPLOAD_CASES}) == len(UPLOAD_CASES)


@pytest.mark.parametrize("case", UPLOAD_CASES, ids=lambda case: case.id)
def test_upload(case, studio, tmp_path, monkeypatch):
    for target, value in case.limits.items():
        monkeypatch.setattr(target, value)
    upload = case.build(tmp_path)
    if case.outcome == "rejected":
        before = snapshot(studio)
        with pytest.raises(ValueError) as error:
            dataset_service.upload_archive(studio, str(upload))
        message = str(error.value)
        assert re.search(case.message, message, re.DOTALL), message
        assert str(studio.store.workspace.root) not in message  # name the upload, not our folders
        assert snapshot(studio) == before
        return

    project_id = dataset_service.upload_archive(studio, str(upload))
    view = dataset_service.dataset_view(studio, project_id)
    report = dataset_service.import_report(view)
    if case.outcome == "skipped":
        reasons = {path: reason for path, reason in report}
        assert case.member in reasons, report
        assert re.search(case.message, reasons[case.member]), reasons[case.member]
        assert "skipped" in dataset_service.opened_message(view)
        return

    assert report == []
    assert "skipped" not in dataset_service.opened_message(view)
    data = DatasetCache(studio.store).get(project_id)  # loaded back from the store, as a restart
    assert data.ds.class_names == case.classes
    if case.outcome == "converted":
        images = read_images(data.ds, [data.ds.paths.index(case.member)], size=8)
        assert images.shape == (1, 3, 8, 8) and images.dtype.is_floating_point is False
        centre = images[0, :, 4, 4].numpy().astype(int)
        assert case.rgb is None or np.abs(centre - np.array(case.rgb)).max() <= 12, centre


def test_the_import_report_reaches_the_dataset_tab(studio, tmp_path):
    from tests.hostile_corpus import dataset_zip
    from ui.tab_dataset import import_report_markdown

    extra = {f"odd/{i}.png": b"" for i in range(60)}
    rows = [(path, "train", "cat") for path in extra]
    upload = dataset_zip(tmp_path, extra=extra, extra_rows=rows)
    view = dataset_service.dataset_view(studio, dataset_service.upload_archive(studio, upload))
    assert view.summary["n_skipped"] == 60 and len(dataset_service.import_report(view)) == 60
    assert "60 file(s) skipped" in dataset_service.opened_message(view)
    report = import_report_markdown(view)
    assert "odd/59.png" in report and "empty file" in report


def test_a_rejected_folder_import_leaves_no_link(studio, tmp_path):
    folder = tmp_path / "data" / "one-class"
    for path, data in base_members().items():
        if path.startswith("cat/"):
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            (folder / path).write_bytes(data)
    before = snapshot(studio)
    with pytest.raises(ValueError, match="only one class folder"):
        dataset_service.open_data_folder(studio, "one-class")
    assert snapshot(studio) == before


def test_links_out_of_a_dataset_folder_are_skipped(studio, tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(png((0, 0, 255)))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "x.png").write_bytes(png())
    folder = tmp_path / "data" / "linked"
    for path, data in base_members().items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    (folder / "cat" / "link.png").symlink_to(secret)
    (folder / "dog" / "inside.png").symlink_to(folder / "dog" / "0.png")  # stays inside: kept
    (folder / "bird").symlink_to(outside, target_is_directory=True)
    os.link(folder / "cat" / "0.png", folder / "cat" / "hard.png")  # a hard link is a file
    project_id = dataset_service.open_data_folder(studio, "linked")
    view = dataset_service.dataset_view(studio, project_id)
    reasons = dict(dataset_service.import_report(view))
    assert re.search("link .*outside the dataset folder", reasons["cat/link.png"])
    assert "link to a folder" in reasons["bird"]
    assert view.class_names == ["cat", "dog"]
    paths = DatasetCache(studio.store).get(project_id).ds.paths
    assert "dog/inside.png" in paths and "cat/hard.png" in paths


def test_a_metadata_file_linked_from_outside_is_refused(studio, tmp_path):
    folder = tmp_path / "data" / "linked-csv"
    for path, data in base_members().items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    (tmp_path / "elsewhere.csv").write_bytes(metadata(BASE_ROWS))
    (folder / "metadata.csv").symlink_to(tmp_path / "elsewhere.csv")
    before = snapshot(studio)
    with pytest.raises(ValueError, match="link to a file outside the dataset folder"):
        dataset_service.open_data_folder(studio, "linked-csv")
    assert snapshot(studio) == before


# -- CSV injection ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", CAPTION_INJECTIONS)
def test_formula_captions_are_neutralised_in_csv_and_round_trip(text):
    cell = csv_cell(text)
    assert cell.startswith("'") and from_csv_cell(cell) == text
    out = io.StringIO()
    csv.writer(out).writerow(csv_row([text, 3, 0.5]))
    (read,) = csv.reader(io.StringIO(out.getvalue()))
    assert read[0][0] == "'" and from_csv_cell(read[0]) == text and read[1:] == ["3", "0.5"]


@pytest.mark.parametrize("text", ["a dog on grass", "", "'quoted", "x=1", "'"])
def test_plain_text_is_left_alone(text):
    assert csv_cell(text) == text and from_csv_cell(text) == text


def test_guarded_captions_in_metadata_load_as_written(tmp_path):
    root = tmp_path / "ds"
    for path, data in base_members().items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    out = io.StringIO()
    writer = csv.writer(out)  # "\r\n" rows: a cell holding "\r" is quoted (not so with "\n")
    writer.writerow(["path", "split", "label", "caption"])
    for i, (path, split, label) in enumerate(BASE_ROWS):
        writer.writerow(csv_row([path, split, label, CAPTION_INJECTIONS[i % 7]]))
    (root / "metadata.csv").write_text(out.getvalue(), newline="")
    ds = load_dataset(root, cache_dir=tmp_path / "cache")
    assert [c[0] for c in ds.captions] == [CAPTION_INJECTIONS[i % 7] for i in range(8)]


# -- parameters ---------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [case[1:] for case in PARAMETER_CASES],
                         ids=[case[0] for case in PARAMETER_CASES])
def test_bad_settings_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**overrides)


def test_sane_settings_still_pass():
    config = RunConfig(biased_epochs=1000, images_per_prompt=64, top_k=10**6, lr=1e-5,
                       gen_width=512, gen_height=768, negative_prompt="blurry, low quality",
                       seed=2**32 - 1)
    assert RunConfig.from_dict(config.to_dict()) == config


def test_k_larger_than_a_class_takes_the_whole_class():
    labels = np.array([0] * 5 + [1] * 50)
    losses = np.linspace(0, 1, len(labels))
    picked = top_k_per_class(losses, labels, k=10**6)
    assert sorted(picked.tolist()) == list(range(len(labels)))


def test_service_settings_are_checked_before_anything_is_written(studio, tmp_path):
    from tests.hostile_corpus import dataset_zip
    from ui import bias_service, generate_service

    project_id = dataset_service.upload_archive(studio, dataset_zip(tmp_path))
    before = snapshot(studio)
    for settings, message in [({"biased_epochs": 0}, "biased_epochs"),
                              ({"top_k": math.nan}, "top_k"), ({"top_k": 2.5}, "top_k"),
                              ({"batch_size": -4}, "batch_size"),
                              ({"biased_epochs": 10**9}, "1,000"), ({"arch": "vgg"}, "arch"),
                              ({"epochs": 3}, "unknown settings 'epochs'")]:
        with pytest.raises(ValueError, match=message):
            bias_service.train_biased(studio, project_id, settings)
    with pytest.raises(ValueError, match="no prompts yet"):
        generate_service.run_generation(studio, project_id, {"images_per_prompt": 2})
    assert snapshot(studio) == before


def test_prompts_of_thousands_of_characters_are_refused():
    with pytest.raises(ValueError, match=f"5,000 characters long; keep it under "
                                         f"{MAX_PROMPT_CHARS:,}"):
        check_prompt_text("p" * 5000)
    assert check_prompt_text("  a   photo\nof a dog ") == "a photo of a dog"


def test_a_zip_written_by_the_corpus_is_valid_when_not_tampered(tmp_path):
    """Guards the corpus itself: the base dataset loads, so each case fails for its own flaw."""
    from tests.hostile_corpus import dataset_zip

    path = dataset_zip(tmp_path)
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
    ds = load_dataset(path, cache_dir=tmp_path / "cache")
    assert len(ds.paths) == 8 and ds.skipped == ()
    assert metadata(BASE_ROWS).startswith(b"path,split,label\n")


def test_an_empty_prompt_list_is_refused_by_the_library():
    from diffubias.generation import check_generation_inputs

    with pytest.raises(ValueError, match="no prompts to generate from: keep at least one"):
        check_generation_inputs([], 1)


def test_no_code_runs_from_downloaded_or_uploaded_weights():
    """trust_remote_code is never enabled and torch.load always has weights_only=True."""
    root = Path(__file__).resolve().parents[1]
    sources = [p for folder in ("diffubias", "ui", "storage") for p in (root / folder).rglob("*.py")]
    sources.append(root / "app.py")
    for path in sources:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"trust_remote_code\s*=\s*True", text), path
        for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
            assert "weights_only=True" in call.group(1), (path, call.group(0))
