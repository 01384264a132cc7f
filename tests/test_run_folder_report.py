"""The CLI's report content, from a run folder written by hand: what the stages left is shown,
what they did not is "not run", a prompt a person rewrote counts as edited, and the spreadsheet
guard on CSV cells is taken off. The full CLI run is in test_pipeline.py."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime

import pytest
from PIL import Image

from diffubias.report import render_report_html
from diffubias.run_folder_report import run_report_content
from diffubias.text_safety import csv_row


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(csv_row(list(row)) for row in rows)


@pytest.fixture
def detected_and_filtered(tmp_path):
    """A run folder after detect, caption and filter, with prompts.csv edited by a person."""
    report = {
        "config": {"dataset": "data/pets", "top_k": 2, "biased_epochs": 3, "generator": "sd15"},
        "dataset": {"name": "pets", "class_names": ["cat", "dog"], "bias_names": [],
                    "image_size": 32, "n_skipped": 0,
                    "split_sizes": {"test": 3, "train": 4, "valid": 1}},  # sorted, as saved
        "detection": {"n_selected": 2, "k_per_class": {"0": 1, "1": 1}},
        "models": {"biased": {"test": {"overall": 0.5, "aligned": None, "conflicting": None,
                                       "unbiased": None}}},
        "captions": {"backend": "metadata", "model": None, "n_captions": 3, "n_images": 2},
        "filter": {"top_f": 2, "top_words": [["grass", 2], ["sofa", 1]]},
        "keywords": None,
    }
    (tmp_path / "report.json").write_text(json.dumps(report))
    write_csv(tmp_path / "scores.csv", ("position", "path", "label", "loss", "candidate",
                                        "conflict"),
              [(0, "a.png", "cat", "0.1", 0, ""), (1, "b.png", "cat", "2.5", 1, ""),
               (2, "c.png", "dog", "0.2", 0, ""), (3, "d.png", "dog", "1.5", 1, "")])
    write_csv(tmp_path / "captions.csv", ("position", "path", "text", "backend", "model",
                                          "params"),
              [(1, "b.png", "a cat  on grass", "metadata", "", "{}"),
               (3, "d.png", "a dog on a sofa", "metadata", "", "{}"),
               (3, "d.png", "=a dog on grass", "metadata", "", "{}")])
    write_csv(tmp_path / "prompts.csv", ("keep", "label", "text", "source", "source_path",
                                         "matched_words"),
              [(1, "cat", "a cat on grass", 1, "b.png", "grass"),  # as the filter wrote it
               (1, "dog", "a dog asleep on a sofa", 3, "d.png", "sofa"),  # rewritten by hand
               (0, "dog", "=a dog on grass", 3, "d.png", "grass")])
    Image.new("RGB", (8, 4)).save(tmp_path / "topk_gallery.png")
    return tmp_path, report


def test_a_run_folder_gives_what_its_stages_wrote(detected_and_filtered):
    out, report = detected_and_filtered
    when = datetime(2024, 1, 2, tzinfo=UTC)
    content = run_report_content(out, report, created=when)
    assert (content.name, content.source, content.created) == ("pets", "data/pets", when)
    assert list(content.dataset.split_sizes) == ["train", "valid", "test"]
    detection = content.detection
    assert (detection.n_scored, detection.n_candidates, detection.n_excluded) == (4, 2, None)
    assert len(detection.histogram.data) == 1  # the bias is unknown: no conflicting trace
    assert [s.image.name for s in detection.sheets] == ["topk_gallery.png"]
    assert detection.settings == {"top_k": 2, "biased_epochs": 3}
    captions = content.captions
    assert captions.captioner == "metadata" and captions.top_words == ("grass", "sofa")
    assert [(p.label, p.text, p.edited) for p in captions.prompts] == [
        ("cat", "a cat on grass", False), ("dog", "a dog asleep on a sofa", True)]
    assert (captions.n_kept, captions.n_edited, captions.keywords) == (2, 1, None)
    assert [m.model for m in content.accuracy.models] == ["biased"]
    assert content.generation is None and content.gradcam is None  # not run yet
    page = render_report_html(content)
    assert page.count("<p>Not run.</p>") == 2
    assert "2 prompts kept, 1 edited by hand" in page


def test_the_guard_on_a_formula_cell_is_taken_off(detected_and_filtered):
    out, report = detected_and_filtered
    assert "'=a dog on grass" in (out / "prompts.csv").read_text()  # what a spreadsheet sees
    write_csv(out / "prompts.csv", ("keep", "label", "text", "source", "source_path",
                                     "matched_words"),
              [(1, "dog", "=a dog on grass", 3, "d.png", "grass")])  # a person keeps it
    [prompt] = run_report_content(out, report).captions.prompts
    assert prompt.text == "=a dog on grass" and not prompt.edited


def test_a_folder_without_a_detection_says_which_stage_to_run(tmp_path):
    with pytest.raises(ValueError, match="run the `detect` stage first"):
        run_report_content(tmp_path, {"config": {}})
