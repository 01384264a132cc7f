"""Tab 6, Grad-CAM: before/after Grad-CAM overlays side by side with each model's prediction and
confidence, the share of CAM mass on the object when the dataset has masks, and the export of a
self-contained HTML report plus the debiased model and the generated data.

Builds widgets only; the work is in the callbacks passed in (see `GradcamCallbacks`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from diffubias.config import CAM_BEFORE, CAM_METHODS, CAM_SAMPLE_SETS, RunConfig
from storage.models import JobKind
from ui.events import (
    GPU,
    Pager,
    TabRefresh,
    open_project,
    page_info,
    percent,
    progress_callback,
    shown_settings,
    shows_errors,
)
from ui.gradcam_service import CamView
from ui.report_service import ExportView

DEFAULTS = RunConfig()


@dataclass(frozen=True)
class GradcamCallbacks:
    run: Callable[..., CamView]  # (project, {RunConfig field: value}, *, sample_set, ui)
    view: Callable[..., CamView]  # (project, *, page)
    export: Callable[..., ExportView]  # (project, *, ui)
    exported: Callable[[int | None], ExportView]
    settings: Callable[[int | None], dict[str, Any]]  # the project's RunConfig as a dict
    stop: Callable[[int | None], str]


def build(callbacks: GradcamCallbacks, project: gr.Number) -> TabRefresh:
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            gr.Markdown("### Where do the models look?\nEach model explains its own "
                        "prediction on the same images.")
            method = gr.Dropdown(list(CAM_METHODS), value=DEFAULTS.cam_method,
                                 label="CAM method")
            sample_set = gr.Radio([(v, k) for k, v in CAM_SAMPLE_SETS.items()], value="conflicting",
                                  label="samples", elem_id="cam-samples")
            count = gr.Number(DEFAULTS.cam_samples, precision=0, label="how many",
                              elem_id="cam-count")
            before = gr.Radio(list(CAM_BEFORE), value=DEFAULTS.cam_before,
                              label="compare the debiased model with",
                              info="vanilla: same data and schedule, without the generated "
                              "images (the fair before); biased: the GCE model built to be "
                              "wrong", elem_id="cam-before")
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
            gallery = gr.Gallery(label="image · before · debiased model", columns=3,
                                 height=720, object_fit="contain", allow_preview=True,
                                 elem_id="cam-gallery", buttons=[])

    settings = {"cam_method": method, "cam_samples": count, "cam_before": before}

    @shows_errors(status=status)
    def on_run(project_id, progress: gr.Progress = gr.Progress(), *,
               sample_set: str = "conflicting", **changes) -> tuple:
        view = callbacks.run(open_project(project_id), changes, sample_set=sample_set,
                             ui=progress_callback(progress))
        return (f"✓ Explained {view.n_samples} images.", *view_outputs(view))

    @shows_errors(status=status)
    def on_export(project_id, progress: gr.Progress = gr.Progress()) -> tuple:
        exported = callbacks.export(open_project(project_id), ui=progress_callback(progress))
        return ("✓ Report exported.", *export_outputs(exported))

    def show_page(page_number, project_id) -> tuple:
        return view_outputs(callbacks.view(project_id, page=int(page_number or 1)))

    outputs = [summary, mass, gallery, pager.page, pager.info]
    export_list = [report, model, dataset]
    # the API's parameter order: cam_method, sample_set, cam_samples, cam_before
    run_event = run.click(on_run, [project], [status, *outputs],
                          inputs_kwargs={"cam_method": method, "sample_set": sample_set,
                                         "cam_samples": count, "cam_before": before},
                          api_name="run_gradcam", **GPU)
    stop.click(callbacks.stop, project, status, cancels=[run_event], api_name="stop_gradcam")
    pager.wire(show_page, [project], outputs, api_name="cam_page")
    export.click(on_export, [project], [status, *export_list], api_name="export_report")

    def refresh(project_id, page_number) -> tuple:
        return (*show_page(page_number, project_id),
                *labelled_export_outputs(callbacks.exported(project_id)))

    def show_settings(project_id) -> tuple:
        return *shown_settings(callbacks.settings(project_id), settings), ""

    return TabRefresh(refresh, [project, pager.page], [*outputs, *export_list], show_settings,
                      [*settings.values(), status],
                      jobs={JobKind.GRADCAM: run, JobKind.EXPORT: export})


def view_outputs(view: CamView) -> tuple:
    if view.job_id is None:
        summary = "*Train the debiased model (tab 5), then compare.*"
    else:
        summary = (f"**{view.method}** on {view.n_samples} {CAM_SAMPLE_SETS.get(view.sample_set, '')}"
                   ". Accuracy on them: " + ", ".join(f"{role} **{percent(acc)}**"
                                                      for role, acc in view.agreement.items()))
        if view.mean_mass_before is not None:
            summary += (f"\n\nShare of CAM mass on the object: {view.before_role} "
                        f"**{percent(view.mean_mass_before)}** → debiased "
                        f"**{percent(view.mean_mass_after)}** (object area "
                        f"{percent(view.object_area)}).")
        if view.stale:
            summary += (f"\n\n⚠ These maps explain earlier models: {view.stale} ran since. "
                        "Run Grad-CAM again.")
    info = page_info(view.page, view.n_pages, view.n_samples, "images") if view.n_samples else ""
    return (summary, gr.Plot(value=view.figure, visible=view.figure is not None), view.tiles,
            view.page, info)


def export_outputs(view: ExportView) -> tuple:
    return view.report, view.model, view.dataset


def labelled_export_outputs(view: ExportView) -> tuple:
    """`export_outputs` for the page (not the API): the report's label says when the report
    predates later work."""
    report, *rest = export_outputs(view)
    label = "report (HTML)" + (f" · ⚠ made before {view.stale} ran: export again"
                               if view.stale else "")
    return gr.File(report, label=label), *rest
