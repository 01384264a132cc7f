"""DiffuBias Studio, the web app: `python app.py` serves the audit workflow at
http://127.0.0.1:7860 with a ready demo project, offline and without a GPU.

The composition root: it opens the workspace (database and files), builds the tabs with their
callbacks bound to the workspace, and serves them (ui/server.py). The entry, `ui.launch.main`, reads the
command line and answers the port with a "starting" page while this module imports (Gradio
takes seconds). `build_app` is what tests launch.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # the entry is ui.launch: it answers the port, then imports this module
    from ui.launch import main

    sys.exit(main(sys.argv[1:]))

import argparse
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import gradio as gr
from gradio import routes as gr_routes

from storage import WorkspaceUnavailable
from ui import (
    bias_service,
    caption_service,
    checks_service,
    dataset_service,
    debias_service,
    generate_service,
    gradcam_service,
    header,
    loop_service,
    report_service,
    review,
    tab_bias,
    tab_captions,
    tab_dataset,
    tab_debias,
    tab_generate,
    tab_gradcam,
    tab_loop,
)
from ui.events import open_tab_from_url, remember_tab_in_url
from ui.launch import StartingPage, listen
from ui.server import AppServer
from ui.studio import (
    Studio,
    class_names,
    default_project,
    demo_status,
    job_status,
    project_choices,
    project_settings,
    revision,
    stop_job,
)

CSS = """
#intro h1 { margin-bottom: 0.2em; }
#intro p { margin: 0; }
.job-banner { padding: 8px 12px; border-radius: 8px; background: var(--block-background-fill);
              border: 1px solid var(--border-color-primary); font-size: 0.95em; }
.job-banner.running { border-color: #2563eb; }
.job-banner.failed { border-color: #dc2626; }
.job-banner.interrupted, .job-banner.cancelled { border-color: #d97706; }
.job-banner progress { width: 40%; vertical-align: middle; }
.job-state { font-weight: 600; font-size: 0.8em; text-transform: uppercase; padding: 1px 6px;
             border-radius: 4px; margin-right: 4px; background: #e5e7eb; }
.job-banner.running .job-state { background: #dbeafe; color: #1d4ed8; }
.job-banner.done .job-state { background: #dcfce7; color: #15803d; }
.job-banner.failed .job-state { background: #fee2e2; color: #b91c1c; }
.job-banner.interrupted .job-state, .job-banner.cancelled .job-state { background: #fef3c7;
             color: #b45309; }
.job-error { color: #b91c1c; font-size: 0.9em; margin-top: 4px; }
.pager { align-items: center; }
#prompt-table img { width: 48px; height: 48px; image-rendering: pixelated; }
#sample-grid img, #candidate-gallery img, #generated-gallery img, #cam-gallery img,
#candidate-large img, #generated-large img { image-rendering: pixelated; }
footer { display: none !important; }
/* galleries: the label chip sits above the first row, not on it; tiles shrink to fit the width
   instead of overflowing it; a tile's caption wraps instead of being cut */
.grid-wrap:not(.minimal) { padding-top: 2.6em !important; }
.grid-container { grid-template-columns: repeat(var(--grid-cols), minmax(0, 1fr)) !important; }
.thumbnail-item .caption-label { max-width: calc(100% - 8px) !important; line-height: 1.25; }
#sample-grid .caption-label, #candidate-gallery .caption-label, #still-wrong .caption-label {
  white-space: normal !important; overflow-wrap: anywhere; }
/* generated tiles say only their mark and prompt number; the page's prompts are listed below */
#generated-prompts ul { margin-top: 0; }
"""

log = logging.getLogger("diffubias.app")


@contextmanager
def _server_built_at_launch() -> Iterator[None]:
    """Gradio builds its web server (every API route with its pydantic models) when `with
    gr.Blocks()` ends, again in `queue()`, and once more when served (ui/server.py), the one
    served. Each build of this app takes about 0.5 s on 2 cores, a third of the start, so the
    first two are skipped: nothing uses them before launch (tests/test_app.py counts builds)."""
    build = gr_routes.App.create_app
    gr_routes.App.create_app = staticmethod(lambda *args, **kwargs: None)
    try:
        yield
    finally:
        gr_routes.App.create_app = build


def build_app(studio: Studio) -> gr.Blocks:
    """The whole UI: the header, then one tab per workflow step, wired to `studio`; queued,
    ready to launch."""
    with _server_built_at_launch():
        demo = _build_blocks(studio)
        demo.queue(default_concurrency_limit=4, max_size=64)
    return demo


def _build_blocks(studio: Studio) -> gr.Blocks:
    with gr.Blocks(title="DiffuBias Studio", analytics_enabled=False) as demo:
        header_callbacks = header.HeaderCallbacks(
            projects=partial(project_choices, studio),
            default_project=partial(default_project, studio),
            status=partial(job_status, studio),
            revision=partial(revision, studio))
        top = header.build(demo, header_callbacks)
        project = top.project
        stop = partial(stop_job, studio)
        settings = partial(project_settings, studio)
        with gr.Tabs(elem_id="steps") as steps:
            with gr.Tab("1 · Dataset", id="dataset", elem_id="tab-dataset"):
                dataset = tab_dataset.build(tab_dataset.DatasetCallbacks(
                    view=partial(dataset_service.dataset_view, studio),
                    open_builtin=partial(dataset_service.open_builtin, studio),
                    upload=partial(dataset_service.upload_archive, studio),
                    open_folder=partial(dataset_service.open_data_folder, studio),
                    folders=partial(dataset_service.data_root_entries, studio),
                    projects=partial(project_choices, studio),
                    demo_status=partial(demo_status, studio),
                ), project, top.picker, has_data_root=studio.data_root is not None)
            with gr.Tab("2 · Bias", id="bias", elem_id="tab-bias"):
                bias = tab_bias.build(tab_bias.BiasCallbacks(
                    train=partial(bias_service.train_biased, studio),
                    view=partial(bias_service.detection_view, studio),
                    page=partial(bias_service.candidate_page, studio),
                    detail=partial(bias_service.sample_detail, studio),
                    exclude=partial(bias_service.set_excluded, studio),
                    class_names=partial(class_names, studio),
                    settings=settings, stop=stop,
                    truth_shown=partial(review.project_truth_shown, studio),
                    show_truth=partial(review.set_truth_shown, studio)), project)
            with gr.Tab("3 · Captions", id="captions", elem_id="tab-captions"):
                captions = tab_captions.build(tab_captions.CaptionCallbacks(
                    run=partial(caption_service.run_captioner, studio),
                    apply_filter=partial(caption_service.apply_filter, studio),
                    save=partial(caption_service.save_prompt_edits, studio),
                    anchoring=partial(caption_service.set_anchoring, studio),
                    view=partial(caption_service.captions_view, studio),
                    settings=settings, stop=stop,
                    captioners=caption_service.captioner_choices,
                    keywords_available=caption_service.keywords_available()), project)
            with gr.Tab("4 · Generate", id="generate", elem_id="tab-generate"):
                generate = tab_generate.build(tab_generate.GenerateCallbacks(
                    run=partial(generate_service.run_generation, studio),
                    view=partial(generate_service.generation_view, studio),
                    detail=partial(generate_service.image_detail, studio),
                    review=partial(generate_service.review_images, studio),
                    review_prompt=partial(generate_service.review_prompt, studio),
                    reject_proposed=partial(checks_service.reject_proposed, studio),
                    settings=settings, stop=stop,
                    generators=generate_service.generator_choices), project)
            with gr.Tab("5 · Debias", id="debias", elem_id="tab-debias"):
                debias = tab_debias.build(tab_debias.DebiasCallbacks(
                    train=partial(debias_service.train_debiased_models, studio),
                    view=partial(debias_service.debias_view, studio),
                    settings=settings, stop=stop), project)
                loop = tab_loop.build(tab_loop.LoopCallbacks(
                    rescore=partial(loop_service.rescore_round, studio),
                    start=partial(loop_service.start_next_round, studio),
                    view=partial(loop_service.loop_view, studio)), project)
            with gr.Tab("6 · Grad-CAM", id="gradcam", elem_id="tab-gradcam"):
                gradcam = tab_gradcam.build(tab_gradcam.GradcamCallbacks(
                    run=partial(gradcam_service.run_gradcam, studio),
                    view=partial(gradcam_service.gradcam_view, studio),
                    export=partial(report_service.export_report, studio),
                    exported=partial(report_service.export_view, studio),
                    settings=settings, stop=stop), project)

        # Every tab re-reads its results when the revision changes: another project was opened
        # (on page load, picked, imported) or a job ended (seen by the header's timer). Opening
        # a project also re-reads each tab's settings.
        tabs = (dataset, bias, captions, generate, debias, loop, gradcam)
        quiet = {"api_visibility": "private", "show_progress": "hidden"}
        for opened in (*top.opened, *dataset.opened):
            opened.success(partial(revision, studio), project, top.revision, **quiet)
            for tab in tabs:
                if tab.settings_fn is not None:
                    opened.success(tab.settings_fn, project, tab.settings_outputs, **quiet)
        for tab in tabs:
            top.revision.change(tab.fn, tab.inputs, tab.outputs, **quiet)
        header.follow_jobs(top, header_callbacks, {kind: button for tab in tabs
                                                   for kind, button in tab.jobs.items()})
        # a reload opens the tab the URL names (?tab=bias), as the user last picked it
        steps.select(None, None, None, js=remember_tab_in_url("steps"))
        # in the browser, at once: a server round trip could switch back a tab clicked meanwhile
        demo.load(None, None, None, js=open_tab_from_url("steps"))
    return demo


def launch_options(args: argparse.Namespace, studio: Studio) -> dict:
    auth = None
    if args.auth:
        user, sep, password = args.auth.partition(":")
        if not sep or not user or not password:
            raise SystemExit("--auth expects user:password")
        auth = [(user, password)]
    workspace = studio.store.workspace
    return {"server_name": args.host, "server_port": args.port, "auth": auth,
            "allowed_paths": [str(workspace.root.resolve())],
            "blocked_paths": database_files(workspace.database_path),
            "max_file_size": args.max_upload, "run_history": False, "theme": gr.themes.Soft(),
            "css": CSS, "show_error": True, "footer_links": []}


def database_files(database: Path) -> list[str]:
    """The database and its WAL/journal files: in the workspace, but never served (they hold
    every project; a browser needs only the images, weights and reports)."""
    database = database.resolve()
    return [str(database.with_name(database.name + suffix))
            for suffix in ("", "-wal", "-shm", "-journal")]


def serve_workspace_statically(studio: Studio) -> None:
    """Thumbnails and CAM overlays never change once written: serve them from disk as they are
    instead of copying each into Gradio's cache (a 200-tile gallery page stays fast)."""
    root = studio.store.workspace.root.resolve()
    gr.set_static_paths([str(root / "thumbnails"), str(root / "gradcam")])


def serve(args: argparse.Namespace, starting: StartingPage) -> None:
    """Open the workspace, build the app and serve it on the port `starting` holds until then
    (ui.launch.main, the entry, parsed the command line and answers the port meanwhile)."""
    try:
        studio = Studio.open(args.workspace, data_root=args.data_root)
    except WorkspaceUnavailable as error:
        raise SystemExit(f"error: {error}") from None
    # Uploads and Gradio's file cache inside the workspace: every file served lives there.
    os.environ["GRADIO_TEMP_DIR"] = str(studio.store.workspace.path_for("uploads", "gradio"))
    serve_workspace_statically(studio)
    demo = build_app(studio)
    server = None
    try:
        # the starting page's socket, still listening: no browser is ever refused meanwhile
        sock = starting.hand_over() or _listen(args.host, args.port)
        server = AppServer(demo, launch_options(args, studio), sock)
        log.info("DiffuBias Studio serves at %s", server.url)
        studio.start_background_work(demo=not args.no_demo)
        server.wait()
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (ui.launch): a clean stop, exit status 0
        log.info("stopping (a running job is cancelled and recorded)")
    finally:
        if server is not None:
            server.close()
        studio.close()


def _listen(host: str, port: int) -> socket.socket:
    try:
        return listen(host, port)
    except OSError as error:
        raise SystemExit(f"error: cannot listen on {host}:{port} ({error.strerror or error}); "
                         "is another app using the port? Pass --port to pick another") from None
