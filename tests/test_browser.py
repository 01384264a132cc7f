"""The app in a real browser: headless Chromium clicks through the whole workflow on the demo
project as a new user would, refreshes the page, and saves a screenshot of each tab.

Needs Debian's chromium (/usr/bin/chromium) and the `playwright` Python package (never
`playwright install`, which downloads a browser). Screenshots go to the test's tmp folder. With
DIFFUBIAS_SCREENSHOTS=docs/screenshots they are copied there, and the workflow runs with
settings closer to the library's defaults (a few minutes) so the pictures show real results.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from tests.ui_support import (
    TINY_BIAS,
    TINY_CAM_SAMPLES,
    TINY_DEBIAS_EPOCHS,
    TINY_GENERATE,
    launch,
    link_demo_dataset,
)

CHROMIUM = Path("/usr/bin/chromium")
LONG_MS = 300_000  # a step of the workflow on a busy 2-core machine
SCREENSHOTS = os.environ.get("DIFFUBIAS_SCREENSHOTS")
# (width, biased width, biased epochs, images per prompt, max images, debias epochs, Grad-CAM
# samples)
SETTINGS = ((16, 4, 3, 6, 0, 4, 24) if SCREENSHOTS else
            (TINY_BIAS["width"], TINY_BIAS["biased_width"], TINY_BIAS["biased_epochs"],
             TINY_GENERATE["images_per_prompt"], TINY_GENERATE["max_images"],
             TINY_DEBIAS_EPOCHS, TINY_CAM_SAMPLES))
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]

if not CHROMIUM.exists():
    pytest.skip("Chromium is not installed: `apt-get install -y chromium` (Debian) and "
                "`pip install playwright`; never `playwright install`", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="`pip install playwright` "
                               "(the browser comes from Debian's chromium package)")


@pytest.fixture(scope="module")
def served(tmp_path_factory, builtin_cache):
    workspace = tmp_path_factory.mktemp("browser") / "workspace"
    link_demo_dataset(builtin_cache, workspace)
    studio, server, url = launch(workspace)
    yield url
    server.close()
    studio.close()


@pytest.fixture(scope="module")
def page(served):
    profile = tempfile.mkdtemp(prefix="chromium-profile-")  # a fresh profile every run
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
            viewport={"width": 1440, "height": 1000})
        context.set_default_timeout(LONG_MS)
        yield context.pages[0] if context.pages else context.new_page()
        context.close()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory):
    folder = tmp_path_factory.mktemp("screenshots")
    yield folder
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        for shot in folder.glob("*.png"):
            shutil.copy(shot, Path(SCREENSHOTS) / shot.name)


def first_row_in_view(page, gallery: str) -> None:
    """The gallery's first tile lies whole below its label chip, inside the scrolled area."""
    tile = page.locator(f"#{gallery} button.thumbnail-item").first.bounding_box()
    label = page.locator(f"#{gallery} [data-testid='block-label']").bounding_box()
    area = page.locator(f"#{gallery} .grid-wrap").bounding_box()
    assert tile["y"] >= label["y"] + label["height"], (tile, label)
    assert tile["y"] >= area["y"] and tile["x"] >= area["x"], (tile, area)


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def fill(page, elem_id: str, value) -> None:
    """Type into a number box, again if the page's initial settings load overwrote it."""
    box = page.locator(f"#{elem_id} input")
    for _ in range(3):
        box.fill(str(value))
        page.wait_for_timeout(500)
        if box.input_value() == str(value):
            return
    raise AssertionError(f"#{elem_id} does not keep the value {value}")


def edit_prompt_cell(page, cell: str, text: str) -> None:
    """Type `text` into a cell of the prompt table (`cell-ROW-COLUMN`), as a person does."""
    page.locator(f'#prompt-table [data-testid="{cell}"]').dblclick()
    editor = page.locator(f'#prompt-table [data-testid="{cell}"] textarea, '
                          f'#prompt-table [data-testid="{cell}"] input').first
    editor.fill(text)
    editor.press("Enter")


def test_a_new_user_clicks_through_the_whole_workflow(served, page, screenshots):
    width, biased_width, biased_epochs, per_prompt, max_images, debias_epochs, cam_samples = \
        SETTINGS
    page.goto(served)
    page.wait_for_selector("#dataset-summary h2:has-text('Demo: colored digits')")
    page.wait_for_selector("#sample-grid img")
    page.screenshot(path=screenshots / "1-dataset.png", full_page=True)

    open_tab(page, "2 · Bias")
    fill(page, "bias-width", width)
    fill(page, "bias-biased-width", biased_width)
    fill(page, "bias-epochs", biased_epochs)
    started = time.monotonic()
    page.click("#train-biased")  # the app's first job: its dataset loads inside the job
    page.wait_for_selector("#job-banner:has-text('Train biased model')")
    assert time.monotonic() - started < 3, "the banner must show a new job at once"
    page.wait_for_selector("#bias-status:has-text('Trained and scored 10000')")
    assert "precision@K" in page.inner_text("#bias-metrics")
    page.wait_for_selector("#loss-histogram .js-plotly-plot")
    page.wait_for_selector("#job-banner .done:has-text('Train biased model')")
    first_row_in_view(page, "candidate-gallery")
    page.locator("#candidate-gallery button.thumbnail-item").nth(1).click()
    page.wait_for_selector("#candidate-detail:has-text('loss')")
    page.wait_for_selector("#bias-metrics:has-text('0 excluded')")
    page.click("#toggle-exclude")
    page.wait_for_selector("#toggle-exclude:has-text('Include again')")
    page.wait_for_selector("#candidate-gallery .caption-label:has-text('✗')")
    page.wait_for_selector("#bias-metrics:has-text('1 excluded')")  # the summary follows
    page.screenshot(path=screenshots / "2-bias.png", full_page=True)

    open_tab(page, "3 · Captions")
    page.click("#run-captioner")
    page.wait_for_selector("#captions-status:has-text('captions of 199 candidates')")
    edit_prompt_cell(page, "cell-0-3", "a red digit on a black background")
    page.click("#save-prompts")
    page.wait_for_selector("#save-status:has-text('Saved 1 change')")
    page.screenshot(path=screenshots / "3-captions.png", full_page=True)

    open_tab(page, "4 · Generate")
    fill(page, "images-per-prompt", per_prompt)
    fill(page, "max-images", max_images)
    page.click("#run-generate")
    page.wait_for_selector("#generate-status:has-text('images from')")
    page.wait_for_selector("#job-banner .done:has-text('Generate images')")
    page.locator("#generated-gallery button.thumbnail-item").first.click()
    page.wait_for_selector("#generated-detail:has-text('seed')")
    page.click("#reject-image")
    page.wait_for_selector("#generated-detail:has-text('rejected')")
    page.wait_for_selector("#generate-summary:has-text('1 rejected')")
    first_row_in_view(page, "generated-gallery")
    assert page.locator("#generated-prompts li").count() >= 1  # each prompt readable in full
    page.screenshot(path=screenshots / "4-generate.png", full_page=True)

    open_tab(page, "5 · Debias")
    fill(page, "debias-epochs", debias_epochs)
    page.click("#train-debiased")
    page.wait_for_selector("#debias-status:has-text('generated images')")
    page.wait_for_selector("#accuracy-bars .js-plotly-plot")
    page.wait_for_selector("#job-banner .done:has-text('Train debiased model')")
    page.screenshot(path=screenshots / "5-debias.png", full_page=True)
    page.click("#rescore")  # the closed loop: what the debiased model still gets wrong
    page.wait_for_selector("#loop-status:has-text('candidates still wrong')")
    page.wait_for_selector("#loop-gaps .js-plotly-plot")
    page.wait_for_selector("#rounds-table:has-text('the biased model (tab 2)')")
    page.locator("#closed-loop").screenshot(path=screenshots / "5-closed-loop.png")

    open_tab(page, "6 · Grad-CAM")
    fill(page, "cam-count", cam_samples)
    page.click("#run-gradcam")
    page.wait_for_selector(f"#gradcam-status:has-text('Explained {cam_samples} images')")
    first_row_in_view(page, "cam-gallery")
    page.click("#export-report")
    page.wait_for_selector("#gradcam-status:has-text('Report exported')")
    page.wait_for_selector("#report-file a[download='report.html']")
    page.wait_for_selector("#job-banner .done:has-text('Export report')")
    page.screenshot(path=screenshots / "6-gradcam.png", full_page=True)
    check_the_report_renders_offline(page, screenshots)


def check_the_report_renders_offline(page, screenshots) -> None:
    """What a stakeholder opens: the downloaded report.html, from disk, with its charts drawn by
    the plotly.js it carries and every image inline; it asks nothing of the network or the app."""
    with page.expect_download() as download:
        page.click("#report-file a[download='report.html']")
    saved = screenshots.parent / "downloaded" / download.value.suggested_filename
    download.value.save_as(saved)  # with its .html name: Chromium types a file:// page by it
    report = page.context.new_page()
    requests = []
    report.on("request", lambda request: requests.append(request.url))
    report.goto(saved.as_uri())
    report.wait_for_selector(".plotly .main-svg")  # plotly.js ran and drew a chart
    assert report.locator(".js-plotly-plot").count() >= 2  # loss histogram, accuracy bars
    images = report.locator("img")
    assert images.count() > 0
    assert report.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
    assert [url for url in requests if not url.startswith("data:")] == [requests[0]]
    report.screenshot(path=screenshots / "7-report.png")  # the top of the report
    report.close()


def test_a_refresh_and_a_second_tab_show_the_same_state(served, page):
    open_tab(page, "2 · Bias")
    page.locator("#candidate-class input").click()
    page.get_by_role("option", name="three").click()
    page.wait_for_selector("#candidate-gallery .caption-label:has-text('three')")
    page.reload()  # the tab and the class filter are kept (in the URL)
    page.wait_for_selector("#bias-metrics:has-text('200 candidates')")
    assert page.input_value("#candidate-class input") == "three"
    labels = page.locator("#candidate-gallery .caption-label").all_inner_texts()
    assert labels and all(text.startswith("three") for text in labels), labels[:5]
    page.locator("#candidate-class input").click()
    page.get_by_role("option", name="all classes").click()
    page.wait_for_selector("#candidate-gallery .caption-label:has-text('✗')")
    second = page.context.new_page()
    second.goto(served)
    second.get_by_role("tab", name="5 · Debias").click()
    second.wait_for_selector("#accuracy-table:has-text('debiased')")
    second.wait_for_selector("#job-banner:has-text('Export report')")
    second.close()


def test_a_refused_action_keeps_what_is_on_screen_and_says_why(served, page):
    page.reload()
    open_tab(page, "5 · Debias")
    page.wait_for_selector("#accuracy-table:has-text('debiased')")
    fill(page, "debias-epochs", 0)  # a setting out of range: said under the button
    page.click("#train-debiased")
    page.wait_for_selector("#debias-status:has-text('debias_epochs must be an integer')")
    assert page.inner_text("#debias-status").startswith("⚠")
    page.wait_for_timeout(1000)
    assert page.locator("#accuracy-table").inner_text().count("debiased") >= 1
    assert page.locator("#accuracy-bars .js-plotly-plot").count() == 1
    assert page.locator("#loop-gaps .js-plotly-plot").count() == 1
    assert page.locator("[data-testid='status-tracker'] .error:visible").count() == 0

    open_tab(page, "3 · Captions")  # a refusal by the handler: said under its button
    edit_prompt_cell(page, "cell-0-2", "sevn")  # the class column
    page.click("#save-prompts")
    page.wait_for_selector("#save-status:has-text(\"unknown class 'sevn'\")")
    assert page.inner_text("#save-status").startswith("⚠")
    assert page.locator("#prompt-table").inner_text().count("\n") > 5  # the table is still there
    assert page.locator("[data-testid='status-tracker'] .error:visible").count() == 0


def test_stop_ends_a_running_job_and_keeps_the_results(served, page):
    open_tab(page, "2 · Bias")
    fill(page, "bias-epochs", 50)
    started = time.monotonic()
    page.click("#train-biased")
    page.wait_for_selector("#job-banner .running:has-text('Train biased model')")
    banner_s = time.monotonic() - started
    # the button says the job runs and refuses a second click, in this tab and any other
    page.wait_for_selector("#train-biased:has-text('Running')")
    assert page.locator("#train-biased").is_disabled()
    page.click("#stop-biased")
    page.wait_for_selector("#bias-status:has-text('■ Stopped')")
    stopped = time.monotonic()
    page.wait_for_selector("#job-banner .cancelled:has-text('Stopped')")
    assert banner_s < 3 and time.monotonic() - stopped < 2, (banner_s, time.monotonic() - stopped)
    page.wait_for_selector("#train-biased:has-text('Train')")
    assert page.locator("#train-biased").is_enabled()
    page.wait_for_selector("#bias-metrics:has-text('200 candidates')")  # the last finished run
    open_tab(page, "5 · Debias")
    fill(page, "debias-epochs", 1)
    page.click("#train-debiased")  # the one job slot is free again
    # this job's end (the status line still shows the workflow's earlier run until then)
    page.wait_for_selector("#job-banner .done:has-text('Train debiased model')")
    page.wait_for_selector("#debias-status:has-text('generated images')")
