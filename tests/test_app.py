"""The app over HTTP: launch it on a fresh workspace and drive the whole workflow on the demo
project through gradio_client, the way any API client would; then restart it on the same
workspace and find everything again."""

from __future__ import annotations

import re
import time
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from gradio_client import Client, handle_file

import app
from diffubias.anchoring import DEFAULT_TEMPLATE, anchor_text
from diffubias.config import RunConfig
from storage import Workspace
from tests.ui_support import (
    TINY_BIAS,
    TINY_CAM_SAMPLES,
    TINY_DEBIAS_EPOCHS,
    TINY_GENERATE,
    launch,
    link_demo_dataset,
    make_dataset_zip,
)
from ui.events import markdown_text
from ui.launch import parse_args

TOO_LONG_S = 120


@pytest.fixture(scope="module")
def served(tmp_path_factory, builtin_cache):
    workspace = tmp_path_factory.mktemp("served") / "workspace"
    link_demo_dataset(builtin_cache, workspace)
    studio, server, url = launch(workspace)
    yield workspace, url
    server.close()
    studio.close()


def wait_for_project(client):
    deadline = time.monotonic() + TOO_LONG_S
    while time.monotonic() < deadline:
        _, project_id, banner = client.predict(api_name="/open_page")
        if project_id is not None:
            return int(project_id), banner
        time.sleep(0.5)
    raise AssertionError("the demo project never appeared")


def test_the_whole_workflow_through_the_api(served, tmp_path, builtin_cache):
    _, url = served
    client = Client(url, verbose=False, download_files=False)
    project, banner = wait_for_project(client)
    assert "Import dataset" in banner

    # 1. Dataset: an upload in the documented format becomes its own project
    mini = make_dataset_zip(tmp_path / "mini.zip", link_demo_dataset(builtin_cache, tmp_path),
                            per_class={"train": 2, "valid": 1, "test": 1})
    _, uploaded, message = client.predict(handle_file(str(mini)), "",
                                               api_name="/import_zip")
    assert uploaded != project and "Opened **mini**" in message
    with pytest.raises(Exception, match="Invalid file type|not a .zip file"):
        (tmp_path / "notes.txt").write_text("x")
        client.predict(handle_file(str(tmp_path / "notes.txt")), "", api_name="/import_zip")

    # 2. Bias: a setting out of range gets RunConfig's message; train, page through the top-K,
    # exclude one
    with pytest.raises(Exception, match="biased_epochs must be an integer from 1 to 1,000; got 0"):
        client.predict(project, *{**TINY_BIAS, "biased_epochs": 0}.values(),
                       api_name="/train_biased")
    out = client.predict(project, *TINY_BIAS.values(), api_name="/train_biased")
    status, metrics, histogram, tiles, page, info = out[:6]
    assert status.startswith("✓ Trained and scored 10000") and "precision@K" in metrics
    assert histogram["type"] == "plotly" and len(tiles) == 48 and info.startswith("page 1 of 5")
    tiles, page, info = client.predict(2, project, -1, 200, api_name="/candidates_page")
    assert page == 1 and len(tiles) == 200  # 200 per page: page 2 is clamped to the only one
    assert info == "page 1 of 1 · 200 candidates"
    first = client.predict(project, -1, 1, 10, api_name="/candidate_list")[0]
    excluded = client.predict(project, first["sample_id"], True, api_name="/set_excluded")
    assert excluded["excluded"] is True

    # 3. Captions: caption, then edit a prompt
    # the defaults: auto is the shipped builtin-blip and builtin-ldm on the demo project
    status, summary, table, _ = client.predict(project, "auto", "", 3, "", 0, "", 10,
                                               api_name="/run_captioner")
    assert "199 candidates" in status and "prompts kept" in summary
    table["data"][0][3] = "a red seven on a black background"
    table["data"][1][3] = "a red digit on a black background"  # no class word
    saved, summary, table, _ = client.predict(project, table, api_name="/save_prompts")
    assert saved == "✓ Saved 2 change(s)." and table["data"][0][3].startswith("a red seven")
    # the generator gets the class through the template, shown in the table's last column
    row = table["data"][1]
    assert row[6] == anchor_text(row[3], row[2], template=DEFAULT_TEMPLATE) != row[3]
    status, _, table, _ = client.predict(project, "", "", api_name="/save_anchoring")
    assert status.startswith("✓ Anchoring saved: 0 ") and table["data"][1][6] == "(as written)"
    with pytest.raises(Exception, match="unknown classes: dragon;"):
        client.predict(project, DEFAULT_TEMPLATE, "dragon: wyrm", api_name="/save_anchoring")
    status, _, table, _ = client.predict(project, DEFAULT_TEMPLATE, "seven: 7",
                                         api_name="/save_anchoring")
    assert status.startswith("✓ Anchoring saved") and table["data"][1][6] == row[6]

    # 4. Generate, then reject one image
    out = client.predict(project, "auto", "", 0, 7.5, TINY_GENERATE["images_per_prompt"], 0,
                         TINY_GENERATE["max_images"], api_name="/generate")
    gallery = out[2]["value"]  # an update: the gallery's columns follow images per prompt
    assert out[0] == "✓ 40 images from 20 prompts." and len(gallery) == 24  # 12 prompts a page
    image = client.predict(project, 1, api_name="/generated_list")[0]
    assert re.match(r"(⚑ )?#\d+ \w+$", image["caption"])  # ⚑: a check failed
    assert re.match(r"#\d+ \w+: .+", image["prompt"])  # the whole prompt, which the page lists
    assert markdown_text(image["prompt"]) in out[3]
    assert client.predict(project, image["image_id"], False,
                          api_name="/review_image")["accepted"] is False
    # every image was checked; reject what the checks propose, in one click
    assert "⚑ The checks propose to reject" in out[1] or "passed the checks" in out[1]
    status = client.predict(project, "all", api_name="/reject_proposed")[0]
    n_proposed = int(re.search(r"Rejected (\d+) proposed", status).group(1))
    assert client.predict(project, 1, "proposed", api_name="/generated_list") == []

    # 5. Debias
    status, _, table, _ = client.predict(project, TINY_DEBIAS_EPOCHS, True,
                                                  api_name="/train_debiased")
    assert f"{39 - n_proposed} generated images" in status and [r[0] for r in table["data"]] == [
        "biased", "vanilla", "debiased"]

    # the closed loop: re-score with the debiased model, start round 2 on one class
    status, note, classes, _, _, still_wrong, rounds = client.predict(project,
                                                                      api_name="/rescore")
    assert re.fullmatch(r"✓ \d+ of 199 candidates still wrong\.", status)
    assert "start round 2" in note and len(rounds["data"]) == 1
    status = client.predict(project, ["zero"], api_name="/start_round")[0]
    assert status == "✓ Round 2 started."

    # 6. Grad-CAM (its parameters are named by RunConfig fields) and the export
    with pytest.raises(Exception, match="cam_samples must be an integer from 1 to 100,000"):
        client.predict(project_id=project, cam_samples=0, api_name="/run_gradcam")
    out = client.predict(project, "gradcam", "conflicting", TINY_CAM_SAMPLES,
                         api_name="/run_gradcam")
    assert out[0] == f"✓ Explained {TINY_CAM_SAMPLES} images." and len(out[3]) == 24
    status, report, model, _ = client.predict(project, api_name="/export_report")
    assert status == "✓ Report exported."
    assert report["orig_name"] == "report.html" and model["orig_name"] == "debiased.safetensors"
    page = httpx.get(report["url"]).text
    assert "Bias audit: Demo: colored digits" in page and "6. Where the models look" in page
    assert "7. Rounds of the closed loop" in page


def test_only_workspace_files_are_served(served, tmp_path):
    workspace, url = served
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    assert httpx.get(f"{url}gradio_api/file={outside}").status_code == 403
    thumbnails = sorted((workspace / "thumbnails").rglob("*.webp"))
    assert thumbnails and httpx.get(f"{url}gradio_api/file={thumbnails[0]}").status_code == 200


def test_a_restarted_app_shows_the_same_state(served):
    workspace, url = served
    before = Client(url, verbose=False, download_files=False)
    project, _ = wait_for_project(before)
    tiles_before = before.predict(1, project, -1, 48, api_name="/candidates_page")[0]
    studio, server, new_url = launch(workspace)
    try:
        after = Client(new_url, verbose=False, download_files=False)
        assert wait_for_project(after)[0] == project
        tiles_after = after.predict(1, project, -1, 48, api_name="/candidates_page")[0]
        assert [t["caption"] for t in tiles_after] == [t["caption"] for t in tiles_before]
        listed = after.predict(project, 1, api_name="/generated_list")
        assert listed and listed[0]["caption"].startswith("✗ #")
    finally:
        server.close()
        studio.store.close()


def test_launch_options():
    args = parse_args(["--auth", "ann:pw", "--host", "0.0.0.0", "--port", "9000"])
    studio = SimpleNamespace(store=SimpleNamespace(workspace=Workspace(Path("ws"))))
    options = app.launch_options(args, studio)
    assert options["auth"] == [("ann", "pw")] and options["server_name"] == "0.0.0.0"
    assert options["run_history"] is False and options["server_port"] == 9000
    with pytest.raises(SystemExit, match="user:password"):
        app.launch_options(parse_args(["--auth", "nopassword"]), studio)


def test_the_web_server_is_built_once_when_served(tmp_path, monkeypatch):
    """Gradio would build its server three times (end of `with gr.Blocks()`, `queue()`, and
    when served); build_app skips the first two, a third of the start, and the one served is
    complete: queued, and answering the page and the API."""
    from gradio import routes

    from ui.launch import listen
    from ui.server import AppServer
    from ui.studio import Studio

    built = []
    build = routes.App.create_app
    monkeypatch.setattr(routes.App, "create_app", staticmethod(
        lambda *args, **kwargs: built.append(1) or build(*args, **kwargs)))
    counting = routes.App.create_app
    studio = Studio.open(tmp_path / "workspace")
    demo = app.build_app(studio)
    server = None
    try:
        assert built == [] and routes.App.create_app is counting  # restored after the build
        server = AppServer(demo, app.launch_options(parse_args([]), studio),
                           listen("127.0.0.1", 0))
        assert len(built) == 1 and demo._queue.max_size == 64
        assert httpx.get(server.url, timeout=30).status_code == 200
        assert "/train_biased" in httpx.get(f"{server.url}gradio_api/info", timeout=30).json()[
            "named_endpoints"]
    finally:
        if server is not None:
            server.close()
        studio.close()


def test_the_jobs_settings_are_named_by_run_config_fields(tmp_path):
    """One name per setting from the widget to RunConfig: an API client passes the field names;
    the only other parameters are the project and what is not a setting."""
    from ui.studio import Studio

    studio = Studio.open(tmp_path / "workspace")
    try:
        endpoints = app.build_app(studio).get_api_info()["named_endpoints"]
    finally:
        studio.close()
    settings = {f.name for f in fields(RunConfig)}
    not_settings = {"model_id", "sample_set", "train_vanilla"}
    for api in ("/train_biased", "/run_captioner", "/apply_filter", "/generate",
                "/train_debiased", "/run_gradcam"):
        names = [p["parameter_name"] for p in endpoints[api]["parameters"]]
        assert names[0] == "project_id" and set(names[1:]) <= settings | not_settings, api
    assert [p["parameter_name"] for p in endpoints["/apply_filter"]["parameters"]] == [
        "project_id", "top_f", "extra_stop_words"]
