"""Tab 6, Grad-CAM: before/after Grad-CAM overlays side by side with each model's prediction and
confidence, the share of CAM mass on the object when the dataset has masks, and the export of a
self-contained HTML report plus the debiased model and the generated data.

Builds widgets only; the work is in the callbacks passed in (see `GradcamCallbacks`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from diffubias.config import RunConfig
from ui.events import GPU, Pager, page_info, percent, progress_callback, shows_errors
from ui.gradcam_service import SAMPLE_SETS, CamView
from ui.report_service import ExportView


@dataclass(frozen=True)
class GradcamCallbacks:
    run: Callable[..., CamView]  # (project, method, sample_set, count, ui)
    view: Callable[[int | None, int], CamView]  # (project, page)
    export: Callable[..., ExportView]  # (project, ui)
    exported: Callable[[int | None], ExportView]
    stop: Callable[[int | None], str]
    methods: Callable[[], list[str]]  # called on page load: listing them imports torch


@dataclass(frozen=True)
class GradcamRefresh:
    fn: Callable
    inputs: list
    outputs: list
    settings_fn: Callable
    settings_outputs: list


def build(callbacks: GradcamCallbacks, project: gr.Number) -> GradcamRefresh:
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            gr.Markdown("### Where do the models look?\nEach model explains its own "
                        "prediction on the same images.")
            method = gr.Dropdown([RunConfig().cam_method], value=RunConfig().cam_method,
                                 label="CAM method")
            sample_set = gr.Radio([(v, k) for k, v in SAMPLE_SETS.items()], value="conflicting",
                                  label="samples", elem_id="cam-samples")
            count = gr.Number(RunConfig().cam_samples, precision=0, minimum=1, maximum=2000,
                              label="how many",
                              elem_id="cam-count")
            with gr.Row():
                run = gr.Button("Compare Grad-CAM", variant="primary", elem_id="run-gradcam")
                stop = gr.Button("Stop", variant="stop", scale=0, min_width=80)
            status = gr.Markdown("", elem_id="gradcam-status")
            gr.Markdown("### Report\nOne HTML file for stakeholders (charts, galleries, CAM "
                        "pairs, metrics, settings), the debiased model and the generated "
                        "images in the dataset format.")
            export = gr.Button("Export report and downloads", elem_id="export-report")
            report = gr.File(label="report (HTML)", interactive=False, elem_id="report-file")
            model = gr.File(label="debiased model (safetensors)", interactive=False)
            dataset = gr.File(label="generated images (.zip, dataset format)",
                              interactive=False)
        with gr.Column(scale=3):
            summary = gr.Markdown("*Train the debiased model (tab 5), then compare.*",
                                  elem_id="gradcam-summary")
            mass = gr.Plot(label="CAM mass on the object", visible=False, elem_id="cam-mass")
            pager = Pager.build("cams")
            gallery = gr.Gallery(label="image · biased model · debiased model", columns=3,
                                 height=720, object_fit="contain", allow_preview=True,
                                 elem_id="cam-gallery", buttons=[])

    @shows_errors
    def on_run(project_id, method_value, which, n,
               progress: gr.Progress = gr.Progress(track_tqdm=True)) -> tuple:
        if project_id is None:
            raise ValueError("No project is open: pick one in tab 1")
        view = callbacks.run(int(project_id), method_value, which, int(n),
                             progress_callback(progress))
        return (f"✓ Explained {view.n_samples} images.", *view_outputs(view))

    @shows_errors
    def on_export(project_id, progress: gr.Progress = gr.Progress()) -> tuple:
        if project_id is None:
            raise ValueError("No project is open: pick one in tab 1")
        exported = callbacks.export(int(project_id), progress_callback(progress))
        return ("✓ Report exported.", *export_outputs(exported))

    def show_page(page_number, project_id) -> tuple:
        return view_outputs(callbacks.view(project_id, int(page_number or 1)))

    outputs = [summary, mass, gallery, pager.page, pager.info]
    export_list = [report, model, dataset]
    run_event = run.click(on_run, [project, method, sample_set, count], [status, *outputs],
                          api_name="run_gradcam", **GPU)
    stop.click(callbacks.stop, project, status, cancels=[run_event], api_name="stop_gradcam")
    pager.wire(show_page, [project], outputs, api_name="cam_page")
    export.click(on_export, [project], [status, *export_list], api_name="export_report")

    def refresh(project_id, page_number) -> tuple:
        return (*show_page(page_number, project_id),
                *export_outputs(callbacks.exported(project_id)))

    def settings(project_id) -> tuple:
        return gr.Dropdown(choices=callbacks.methods()), ""

    return GradcamRefresh(refresh, [project, pager.page], [*outputs, *export_list], settings,
                          [method, status])


def view_outputs(view: CamView) -> tuple:
    if view.job_id is None:
        summary = "*Train the debiased model (tab 5), then compare.*"
    else:
        summary = (f"**{view.method}** on {view.n_samples} {SAMPLE_SETS.get(view.sample_set, '')}"
                   ". Accuracy on them: " + ", ".join(f"{role} **{percent(acc)}**"
                                                      for role, acc in view.agreement.items()))
        if view.mean_mass_before is not None:
            summary += (f"\n\nShare of CAM mass on the object: biased "
                        f"**{percent(view.mean_mass_before)}** → debiased "
                        f"**{percent(view.mean_mass_after)}** (object area "
                        f"{percent(view.object_area)}).")
    info = page_info(view.page, view.n_pages, view.n_samples, "images") if view.n_samples else ""
    return (summary, gr.Plot(value=view.figure, visible=view.figure is not None), view.tiles,
            view.page, info)


def export_outputs(view: ExportView) -> tuple:
    return view.report, view.model, view.dataset
