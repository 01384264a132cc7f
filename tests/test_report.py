"""The report page: a content object built here renders as one self-contained page (plotly.js
once, every image a data URI, nothing fetched), with every section, steps not run said so, and
text from models and people escaped."""

from __future__ import annotations

import base64
import html
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import plotly.graph_objects as go
import pytest
from PIL import Image
from plotly.offline import get_plotlyjs

from diffubias.report import (
    MAX_PROMPTS,
    MAX_TILES,
    Accuracy,
    CamRow,
    Captions,
    DatasetSummary,
    Detection,
    Generation,
    GradCam,
    Keyword,
    ModelAccuracy,
    PromptLine,
    ReportContent,
    Tile,
    render_report_html,
)

SECTIONS = ("1. Dataset", "2. Bias detection", "3. Captions and prompts", "4. Generated images",
            "5. Accuracy before and after", "6. Where the models look (Grad-CAM)", "Settings")
WHEN = datetime(2024, 5, 6, 7, 8, tzinfo=UTC)


@pytest.fixture(scope="module")
def png(tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "tile.png"
    Image.new("RGB", (4, 4), (200, 30, 30)).save(path)
    return path


def bars(title: str) -> go.Figure:
    return go.Figure(go.Bar(x=["a", "b"], y=[0.25, 0.75]), layout={"title": title})


@pytest.fixture(scope="module")
def content(png) -> ReportContent:
    dataset = DatasetSummary(("cat", "dog"), {"train": 90, "valid": 10, "test": 20}, 64,
                             ("indoor", "outdoor"), 1)
    return ReportContent(
        "pets <audit>", "data/pets.zip", WHEN, dataset,
        detection=Detection(90, 6, 1, {"auroc": 0.91234, "precision_at_k": 0.8234,
                                       "k_per_class": {"0": 3}, "n": 90},
                            bars("histogram"), (Tile(png, "cat · 2.31"),) * (MAX_TILES + 5),
                            settings={"top_k": 3, "epochs": 2, "shape": [1, 2]}),
        captions=Captions("blip", 12, 6, 4, ("grass", "sofa"), MAX_PROMPTS + 2, 1,
                          (PromptLine("dog", "a dog on a <b>sofa</b>", edited=True),)
                          + (PromptLine("cat", "a cat on grass"),) * (MAX_PROMPTS + 1),
                          {"dog": (Keyword("sofa", 5, 1), Keyword("indoors", 3, 0))}),
        generation=Generation("sd15", 8, 2, (Tile(png, "a dog on grass"),),
                              settings={"steps": 25},
                              checks={"n_images": 8, "n_passed": 5, "n_wrong_class": 1,
                                      "n_aligned": 2, "n_copies": 0}),
        accuracy=Accuracy((ModelAccuracy("biased", {"overall": 0.8, "conflicting": None}),
                           ModelAccuracy("debiased", {"overall": 0.85, "aligned": 0.9,
                                                      "conflicting": 0.7, "unbiased": 0.8},
                                         n_train=98)),
                          bars("accuracy")),
        gradcam=GradCam("gradcam", 4, "conflicting", {"biased": 0.25, "debiased": 0.75},
                        bars("object mass"),
                        (CamRow(png, png, png, ("#3 true: dog", "biased: cat 0.90",
                                                "debiased: dog 0.80")),)),
        settings={"seed": 0, "dataset": "data/pets.zip"})


@pytest.fixture(scope="module")
def page(content) -> str:
    return render_report_html(content)


def markup(page: str) -> str:
    """The page without its scripts: plotly.js names web addresses in its own code."""
    return re.sub(r"<script\b.*?</script>", "", page, flags=re.DOTALL)


def test_the_page_is_self_contained(page, png):
    assert page.count(get_plotlyjs()) == 1  # inlined in the first chart only
    assert "<script src" not in page and "<link" not in page  # no script or style fetched
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", markup(page))
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert base64.b64decode(sources[0].split(",", 1)[1]) == png.read_bytes()
    assert page.count('class="plotly-graph-div"') == 3  # histogram, accuracy, object mass


def test_every_section_in_order_with_its_numbers(page):
    headings = re.findall(r"<h2>(.*?)</h2>", page)
    assert headings == list(SECTIONS)
    assert "DiffuBias Studio report, 2024-05-06 07:08 UTC. Source: data/pets.zip." in page
    assert "2 classes (cat, dog); image size 64 px; bias attribute known: indoor, outdoor; " \
        "1 file(s) skipped at import." in page
    assert "scored 90 training samples" in page and "(1 excluded by the reviewer)" in page
    assert "<td>AUROC</td><td>0.912</td>" in page and "<td>k_per_class</td>" not in page
    assert "<td>precision@K</td><td>82.3%</td>" in page
    assert "sofa (5/1), indoors (3/0)" in page
    assert "8 images, 2 rejected by the reviewer. Generator: <b>sd15</b>." in page
    assert ("Automatic checks: 5 of 8 images passed; 1 captioned without their class, 2 easy "
            "for the biased model (bias-aligned), 0 near-copies of a training image. Images "
            "failing a check were proposed for rejection to the reviewer.") in page
    assert "Upper bound" not in page  # no oracle in this run
    # percentages and the app's names, as the app shows them
    assert "<td>biased</td><td>80.0%</td><td>n/a</td><td>n/a</td><td>n/a</td><td></td>" in page
    assert "<td>debiased</td><td>85.0%</td><td>90.0%</td><td>70.0%</td><td>80.0%</td>" \
        "<td>98</td>" in page
    assert "Accuracy on them: biased 25.0%, debiased 75.0%." in page
    assert "<td>top_k</td><td>3</td>" in page and "<td>shape</td>" not in page


def test_galleries_and_tables_stop_at_their_caps(page):
    detection = page.split("<h3>Top candidates</h3>")[1].split("<h2>")[0]
    assert detection.count("<img ") == MAX_TILES
    captions = page.split("<h2>3. Captions and prompts</h2>")[1].split("<h2>")[0]
    assert captions.count("<td>cat</td>") == MAX_PROMPTS - 1  # one row is the edited dog prompt
    cams = page.split("<h2>6. Where")[1].split("<h2>")[0]
    # image, before, after of two samples a row, across the page (not one narrow column)
    assert cams.count("<img ") == 3 and 'class="gallery wide"' in cams
    assert "repeat(6, minmax(0, 1fr))" in cams


def test_text_from_models_and_people_is_escaped(page):
    assert "<h1>Bias audit: pets &lt;audit&gt;</h1>" in page
    assert "a dog on a &lt;b&gt;sofa&lt;/b&gt;</td><td>yes</td>" in page
    assert "<b>sofa</b>" not in page


def test_steps_not_run_say_so_and_need_no_chart(png):
    dataset = DatasetSummary(("a", "b"), {"train": 4}, None)
    page = render_report_html(ReportContent("x", "y", WHEN, dataset))
    assert re.findall(r"<h2>(.*?)</h2>", page) == list(SECTIONS)
    assert page.count("<p>Not run.</p>") == 5
    assert "bias attribute unknown" in page
    assert "plotly" not in page.lower() and "<img" not in page


def test_plotly_js_goes_into_the_first_chart_that_is_drawn(png):
    """Without a histogram, the accuracy chart is the first and carries plotly.js."""
    dataset = DatasetSummary(("a",), {}, 8)
    page = render_report_html(ReportContent(
        "x", "y", WHEN, dataset, detection=Detection(4, 1, None),
        accuracy=Accuracy((ModelAccuracy("biased", {"overall": 0.5}),), bars("accuracy")),
        gradcam=GradCam("gradcam", 1, "all", sheets=(Tile(png, "gradcam.png"),))))
    assert page.count(get_plotlyjs()) == 1
    assert page.index(get_plotlyjs()) < page.index("<h2>6.")
    assert "are the bias-conflicting candidates.</p>" in page  # no reviewer, no count
    assert "each model explains its own prediction.</p>" in page  # no accuracy on them
    sheets = page.split("<h2>6.")[1]
    assert '<div class="sheets"><figure><img src="data:image/png;base64,' in sheets
    assert '<div class="gallery"' not in sheets  # a sheet alone, no empty gallery beside it


def test_the_renderer_needs_no_torch():
    """The renderer imports no torch, numpy or plotly of its own: figures come in built."""
    code = ("import sys, diffubias.report; "
            "print(' '.join(m for m in ('torch', 'numpy', 'plotly') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).resolve().parents[1]).stdout.split()
    assert loaded == []


def test_an_oracle_run_says_it_is_an_upper_bound(content):
    from dataclasses import replace

    from diffubias.shipped_models import oracle_note

    note = oracle_note("oracle-renderer", "builtin:colored-digits")
    page = render_report_html(replace(content, generation=replace(content.generation,
                                                                  generator="oracle-renderer",
                                                                  oracle=note)))
    assert "Upper bound, not the method" in page
    assert page.count(html.escape(note)) == 2  # the banner and the section
    assert "Generator: <b>oracle-renderer</b> <span class=warn>(oracle: draws" in page


def test_accuracies_without_a_test_split_say_they_are_optimistic():
    """Without a test split the models are scored on the validation split that chose their
    checkpoints: the report says so beside the accuracies, and says nothing with one."""
    from diffubias.evaluation_split import NO_TEST_SPLIT, evaluated_on, evaluation_note

    assert evaluated_on({"train": 10, "valid": 4, "test": 2}) == "test"
    assert evaluated_on({"train": 10, "valid": 4}) == "valid"
    assert evaluated_on({"train": 10, "valid": 4, "test": 0}) == "valid"
    assert evaluation_note({"train": 10, "valid": 4, "test": 2}) is None
    dataset = DatasetSummary(("a",), {}, 8)
    rows = (ModelAccuracy("vanilla", {"overall": 0.5}),)
    for sizes, shown in (({"train": 9, "valid": 3}, True), ({"test": 3}, False)):
        page = render_report_html(ReportContent("x", "y", WHEN, dataset, accuracy=Accuracy(
            rows, None, evaluation_note(sizes))))
        assert (html.escape(NO_TEST_SPLIT) in page) is shown
