"""Tab 1, Dataset: pick the built-in demo, upload a .zip, or open a folder under the data root;
see the splits, the class counts, the metadata that was found and a grid of samples.

Builds widgets only; the work is in the callbacks passed in (see `DatasetCallbacks`).
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from diffubias.builtin import CONFLICT_RATIOS
from diffubias.config import RunConfig
from ui.dataset_service import (
    BUILTIN_DATASETS,
    SAMPLES_PER_CLASS,
    DatasetView,
    import_report,
    opened_message,
)
from ui.events import TabRefresh, progress_callback, shows_errors

_MARKDOWN_SPECIALS = re.compile(r"[\\`*_\[\]()!|~#]")

FORMAT_HELP = """
**The dataset format.** A `.zip` (or folder) with the images under any sub-folders and a
`metadata.csv`:

| column | required | meaning |
|---|---|---|
| `path` | yes | image path relative to the folder |
| `split` | yes | `train`, `valid` or `test` |
| `label` | yes | class name |
| `bias` | no | bias attribute; used for evaluation only, never for training |
| `caption`, `caption_2`, … | no | captions (the `metadata` captioner uses them) |
| `mask` | no | binary object mask (Grad-CAM object mass) |

A plain ImageFolder (`<class>/<image>`, no CSV) works too: labels from folder names, a seeded
train/valid split, bias unknown.
"""


@dataclass(frozen=True)
class DatasetCallbacks:
    view: Callable[[int | None], DatasetView | None]
    # -> project id; each takes ui=, a progress callback for the bar with counts
    open_builtin: Callable[..., int]
    upload: Callable[..., int]
    open_folder: Callable[..., int]
    folders: Callable[[], list[str]]
    projects: Callable[[], list[tuple[str, int]]]
    demo_status: Callable[[], str]  # "" once the demo is ready or failed


DEFAULTS = RunConfig()


def build(callbacks: DatasetCallbacks, project: gr.Number, picker: gr.Dropdown, *,
          has_data_root: bool) -> TabRefresh:
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            gr.Markdown("### Open a dataset")
            with gr.Group():
                builtin = gr.Dropdown([(v, k) for k, v in BUILTIN_DATASETS.items()],
                                      value=DEFAULTS.dataset, label="Built-in dataset",
                                      elem_id="builtin-source")
                with gr.Row():
                    ratio = gr.Dropdown([(f"{r:.1%}", r) for r in CONFLICT_RATIOS],
                                        value=DEFAULTS.conflict_ratio,
                                        label="bias-conflicting share", min_width=120)
                    seed = gr.Number(DEFAULTS.seed, precision=0, label="seed", min_width=80)
                open_builtin = gr.Button("Open built-in", elem_id="open-builtin")
            with gr.Group():
                upload = gr.File(label="Upload a .zip", file_types=[".zip"], type="filepath",
                                 elem_id="upload-zip", height=110)
                upload_name = gr.Textbox(label="project name (default: the file name)",
                                         max_lines=1)
                import_zip = gr.Button("Import .zip", elem_id="import-zip")
            with gr.Group(visible=has_data_root):
                # choices are filled per page load; a typed name is checked on the server
                # (inside the data root, existing), and API clients send names this way
                folder = gr.Dropdown([], label="Folder or .zip under the data root",
                                     allow_custom_value=True, elem_id="data-folder")
                open_folder = gr.Button("Open folder", elem_id="open-folder")
            if not has_data_root:
                gr.Markdown("*Start the app with `--data-root DIR` to open folders on this "
                            "machine.*")
            with gr.Accordion("Dataset format", open=False):
                gr.Markdown(FORMAT_HELP)
            status = gr.Markdown("", elem_id="dataset-status")
        with gr.Column(scale=2):
            summary = gr.Markdown("", elem_id="dataset-summary")
            with gr.Accordion("Import report: files left out", open=False):
                report = gr.Markdown("", elem_id="import-report")
            counts = gr.Dataframe(label="Images per class and split", interactive=False,
                                  elem_id="class-counts", max_height=360)
            grid = gr.Gallery(label="Training samples, one row per class (label · bias)",
                              columns=SAMPLES_PER_CLASS,
                              height="auto", object_fit="contain", allow_preview=True,
                              elem_id="sample-grid", buttons=[])

    def after_open(project_id: int) -> tuple:
        choices = callbacks.projects()
        view = callbacks.view(project_id)
        name = next((n for n, i in choices if i == project_id), "")
        message = (opened_message(view) if view is not None
                   else f"✓ Opened **{name}**. The other tabs now work on it.")
        return gr.Dropdown(choices=choices, value=project_id), project_id, message

    @shows_errors(status=status)
    def on_builtin(source: str, conflict_ratio: float, seed_value: float | None,
                   progress: gr.Progress = gr.Progress()) -> tuple:
        progress(0.1, desc="generating and loading the built-in dataset")
        seed_value = DEFAULTS.seed if seed_value is None else seed_value  # an empty box
        return after_open(callbacks.open_builtin(source, conflict_ratio, seed_value,
                                                 ui=progress_callback(progress)))

    @shows_errors(status=status)
    def on_upload(path: str | None, name: str, progress: gr.Progress = gr.Progress()) -> tuple:
        progress(0.1, desc="extracting and checking the archive")
        return after_open(callbacks.upload(path, name or "", ui=progress_callback(progress)))

    @shows_errors(status=status)
    def on_folder(path: str | None, progress: gr.Progress = gr.Progress()) -> tuple:
        progress(0.1, desc="checking the folder")
        return after_open(callbacks.open_folder(path, "", ui=progress_callback(progress)))

    opened = [picker, project, status]
    events = [
        open_builtin.click(on_builtin, [builtin, ratio, seed], opened, api_name="open_builtin"),
        import_zip.click(on_upload, [upload, upload_name], opened, api_name="import_zip"),
        open_folder.click(on_folder, [folder], opened, api_name="open_folder"),
    ]

    def refresh(project_id: int | None) -> tuple:
        folders = gr.Dropdown(choices=callbacks.folders()) if has_data_root else gr.Dropdown()
        view = callbacks.view(project_id)
        if view is None:
            waiting = callbacks.demo_status() or "Open a dataset to start."
            return f"### No project yet\n{waiting}", "", None, [], folders
        return (summary_markdown(view), import_report_markdown(view), counts_table(view),
                view.tiles, folders)

    return TabRefresh(refresh, [project], [summary, report, counts, grid, folder],
                      opened=events)


def summary_markdown(view: DatasetView) -> str:
    s = view.summary
    sizes = s.get("split_sizes", {})
    found = [
        f"bias attribute: **{', '.join(view.bias_names)}**" if view.bias_names
        else "bias attribute: **unknown** (no `bias` column; detection metrics need it)",
        (f"captions: **{s.get('n_captioned', 0)}** images, up to "
         f"{s.get('captions_per_sample', 0)} each (the `metadata` captioner can use them)"
         if s.get("n_captioned") else "captions: **none** (use a model captioner in tab 3)"),
        "object masks: **yes** (Grad-CAM measures the share of each map on the object)"
        if s.get("has_masks") else "object masks: **none**",
    ]
    skipped = s.get("n_skipped", 0)
    lines = [f"## {view.name}", f"Source: {view.source} · image size **{view.image_size} px** · "
             + " · ".join(f"{split} **{n}**" for split, n in sizes.items()),
             "", "**Metadata found:** " + "; ".join(found) + "."]
    if skipped:
        examples = "; ".join(f"{_cell(x['path'])}: {_cell(x['reason'])}"
                             for x in s.get("skipped", [])[:3])
        lines.append(f"\n⚠ {skipped} file(s) skipped at import, e.g. {examples} (the import "
                     "report below lists them)")
    return "\n".join(lines)


def import_report_markdown(view: DatasetView) -> str:
    """Every file the import left out and why, as a table (the first REPORTED_SKIPS)."""
    rows = import_report(view)
    if not rows:
        return "Every file was imported."
    total = int(view.summary.get("n_skipped", len(rows)))
    shown = f"the first {len(rows)} of {total}" if total > len(rows) else f"all {total}"
    intro = (f"{total} file(s) left out ({shown} listed). Fix or remove them and import again "
             "to use them.")
    lines = [intro, "", "| file | reason |", "|---|---|"]
    lines += [f"| {_cell(path)} | {_cell(reason)} |" for path, reason in rows]
    return "\n".join(lines)


def _cell(text: str) -> str:
    """User-made text (file names, reasons) shown as itself in Markdown: one line, with HTML and
    Markdown markup (links, images, emphasis, table pipes) escaped."""
    text = html.escape(" ".join(str(text).split()), quote=False)
    return _MARKDOWN_SPECIALS.sub(r"\\\g<0>", text)


def counts_table(view: DatasetView):
    import pandas as pd

    return pd.DataFrame(view.class_counts, columns=view.count_headers)
