"""DiffuBias Studio, the web app: `python app.py` serves the audit workflow at
http://127.0.0.1:7860 with a ready demo project, offline and without a GPU.

The composition root: it reads the command line, opens the workspace (database and files),
builds the tabs with their callbacks bound to the workspace, and launches Gradio. `build_app`
is what tests launch.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from pathlib import Path

import gradio as gr

from storage import WorkspaceUnavailable
from ui import (
    bias_service,
    caption_service,
    dataset_service,
    debias_service,
    generate_service,
    gradcam_service,
    header,
    report_service,
    tab_bias,
    tab_captions,
    tab_dataset,
    tab_debias,
    tab_generate,
    tab_gradcam,
)
from ui.studio import (
    Studio,
    class_names,
    default_project,
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
"""


def build_app(studio: Studio) -> gr.Blocks:
    """The whole UI: the header, then one tab per workflow step, wired to `studio`."""
    with gr.Blocks(title="DiffuBias Studio", analytics_enabled=False) as demo:
        top = header.build(demo, header.HeaderCallbacks(
            projects=lambda: project_choices(studio),
            default_project=lambda: default_project(studio),
            status=lambda p: job_status(studio, p),
            revision=lambda p: revision(studio, p)))
        project = top.project
        stop = lambda p: stop_job(studio, p)
        settings = lambda p: project_settings(studio, p)
        with gr.Tabs(elem_id="steps"):
            with gr.Tab("1 · Dataset", id="dataset"):
                dataset = tab_dataset.build(tab_dataset.DatasetCallbacks(
                    view=lambda p: dataset_service.dataset_view(studio, p),
                    open_builtin=lambda s, r, seed: dataset_service.open_builtin(studio, s, r,
                                                                                 seed),
                    upload=lambda path, name: dataset_service.upload_archive(studio, path, name),
                    open_folder=lambda f, name: dataset_service.open_data_folder(studio, f,
                                                                                 name),
                    folders=lambda: dataset_service.data_root_entries(studio),
                    projects=lambda: project_choices(studio),
                    demo_status=lambda: job_status(studio, None).message,
                ), project, top.picker, has_data_root=studio.data_root is not None)
            with gr.Tab("2 · Bias", id="bias"):
                bias = tab_bias.build(tab_bias.BiasCallbacks(
                    train=lambda p, arch, width, epochs, q, k, seed, batch, ui:
                        bias_service.train_biased(studio, p, arch=arch, width=width,
                                                  epochs=epochs, gce_q=q, top_k=k, seed=seed,
                                                  batch_size=batch, ui=ui),
                    view=lambda p, label: bias_service.detection_view(studio, p, label=label),
                    page=lambda p, label, page, size: bias_service.candidate_page(
                        studio, p, label=label, page=page, page_size=size),
                    detail=lambda p, s: bias_service.sample_detail(studio, p, s),
                    exclude=lambda p, s, e: bias_service.set_excluded(studio, p, s, e),
                    class_names=lambda p: class_names(studio, p),
                    settings=settings, stop=stop,
                    architectures=bias_service.architectures), project)
            with gr.Tab("3 · Captions", id="captions"):
                captions = tab_captions.build(tab_captions.CaptionCallbacks(
                    run=lambda p, name, model, n, instr, f, words, n_kw, ui:
                        caption_service.run_captioner(
                            studio, p, captioner=name, model_id=model, per_image=n,
                            instruction=instr, top_f=f, extra_stop_words=words,
                            keywords_top_n=n_kw, ui=ui),
                    apply_filter=lambda p, f, words: caption_service.apply_filter(
                        studio, p, top_f=f, extra_stop_words=words),
                    save=lambda p, rows: caption_service.save_prompt_edits(studio, p, rows),
                    view=lambda p: caption_service.captions_view(studio, p),
                    settings=settings, stop=stop,
                    captioners=caption_service.captioner_choices,
                    keywords_available=caption_service.keywords_available()), project)
            with gr.Tab("4 · Generate", id="generate"):
                generate = tab_generate.build(tab_generate.GenerateCallbacks(
                    run=lambda p, name, model, steps, scale, n, seed, cap, ui:
                        generate_service.run_generation(
                            studio, p, generator=name, model_id=model, steps=steps,
                            guidance_scale=scale, images_per_prompt=n, seed=seed,
                            max_images=cap, ui=ui),
                    view=lambda p, page: generate_service.generation_view(studio, p, page=page),
                    detail=lambda p, i: generate_service.image_detail(studio, p, i),
                    review=lambda p, ids, a: generate_service.review_images(studio, p, ids, a),
                    review_prompt=lambda p, i, a: generate_service.review_prompt(studio, p, i,
                                                                                 a),
                    settings=settings, stop=stop,
                    generators=generate_service.generator_choices), project)
            with gr.Tab("5 · Debias", id="debias"):
                debias = tab_debias.build(tab_debias.DebiasCallbacks(
                    train=lambda p, epochs, vanilla, baselines, ui: (
                        debias_service.train_debiased_models(
                            studio, p, epochs=epochs, train_vanilla=vanilla,
                            baselines=baselines, ui=ui)),
                    view=lambda p: debias_service.debias_view(studio, p),
                    settings=settings, stop=stop), project)
            with gr.Tab("6 · Grad-CAM", id="gradcam"):
                gradcam = tab_gradcam.build(tab_gradcam.GradcamCallbacks(
                    run=lambda p, method, which, n, ui: gradcam_service.run_gradcam(
                        studio, p, method=method, sample_set=which, count=n, ui=ui),
                    view=lambda p, page: gradcam_service.gradcam_view(studio, p, page=page),
                    export=lambda p, ui: report_service.export_report(studio, p, ui=ui),
                    exported=lambda p: report_service.export_view(studio, p),
                    stop=stop, methods=gradcam_service.cam_methods), project)

        # Every tab re-reads its results when the revision changes: another project was opened
        # (on page load, picked, imported) or a job ended (seen by the header's timer). Opening
        # a project also re-reads each tab's settings.
        tabs = (dataset, bias, captions, generate, debias, gradcam)
        quiet = {"api_visibility": "private", "show_progress": "hidden"}
        for opened in (*top.opened, *dataset.opened):
            opened.success(lambda p: revision(studio, p), project, top.revision, **quiet)
            for tab in tabs:
                if hasattr(tab, "settings_fn"):
                    opened.success(tab.settings_fn, project, tab.settings_outputs, **quiet)
        for tab in tabs:
            top.revision.change(tab.fn, tab.inputs, tab.outputs, **quiet)
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


def exposure_warning(args: argparse.Namespace) -> str | None:
    """A warning when the app listens beyond this machine without a password; None otherwise."""
    if args.auth or is_loopback(args.host):
        return None
    return (f"listening on {args.host}: anyone who can reach this machine can open the app, "
            "read every project and run jobs; add --auth user:password (or set "
            "DIFFUBIAS_AUTH), or keep the default --host 127.0.0.1")


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def serve_workspace_statically(studio: Studio) -> None:
    """Thumbnails and CAM overlays never change once written: serve them from disk as they are
    instead of copying each into Gradio's cache (a 200-tile gallery page stays fast)."""
    root = studio.store.workspace.root.resolve()
    gr.set_static_paths([str(root / "thumbnails"), str(root / "gradcam")])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    installed = Path(sys.argv[0]).name == "diffubias-studio"
    parser = argparse.ArgumentParser(prog="diffubias-studio" if installed else "python app.py",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (0.0.0.0 for every interface; then use "
                             "--auth) (default: %(default)s)")
    parser.add_argument("--port", type=int, default=7860, help="(default: %(default)s)")
    parser.add_argument("--auth", default=os.environ.get("DIFFUBIAS_AUTH"),
                        help="user:password required to open the app (or $DIFFUBIAS_AUTH)")
    parser.add_argument("--workspace", type=Path, default=Path("workspace"),
                        help="folder of the database and every file the app writes "
                             "(default: %(default)s)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="a folder whose sub-folders (datasets) the Dataset tab may open")
    parser.add_argument("--max-upload", default="2gb",
                        help="largest .zip a browser may upload (default: %(default)s)")
    parser.add_argument("--no-demo", action="store_true",
                        help="do not create the demo project on an empty workspace")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """`python app.py` and the installed `diffubias-studio` command."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    warning = exposure_warning(args)
    if warning:
        logging.getLogger("diffubias.app").warning(warning)
    try:
        studio = Studio.open(args.workspace, data_root=args.data_root)
    except WorkspaceUnavailable as error:
        raise SystemExit(f"error: {error}") from None
    # Uploads and Gradio's file cache inside the workspace: every file served lives there.
    os.environ["GRADIO_TEMP_DIR"] = str(studio.store.workspace.path_for("uploads", "gradio"))
    serve_workspace_statically(studio)
    demo = build_app(studio)
    demo.queue(default_concurrency_limit=4, max_size=64)
    try:
        demo.launch(**launch_options(args, studio), prevent_thread_lock=True)
        studio.start_background_work(demo=not args.no_demo)
        demo.block_thread()
    finally:
        studio.close()


if __name__ == "__main__":
    main(sys.argv[1:])
