"""The top of the page: title, the workflow in one line, the project picker and the job banner.

A `gr.Timer` polls the store once a second: the banner shows the running job's progress (so a
refreshed page or a second tab sees a job another tab started), the picker fills in once the
demo project is ready, and `revision` changes whenever a job ends so every tab re-reads its
results. `opened` are the events after which a (new) project is open: the app chains the
revision and every tab's settings to them. (Not to the hidden id's own change event: Gradio
fired that one again on unrelated updates, which made the page reload itself in a loop.)
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import gradio as gr

from ui.studio import JobStatusView

INTRO = """
# DiffuBias Studio
Audit an image dataset for a spurious bias and fix it with the
[DiffuBias](https://arxiv.org/abs/2411.16079) method, step by step:
**1 Dataset** → **2 Bias**: train a deliberately biased classifier and rank the samples it gets
wrong → **3 Captions**: describe them and edit the prompts → **4 Generate**: make new
bias-conflicting images → **5 Debias**: retrain and compare → **6 Grad-CAM**: see where the
models look, and export a report. Everything is saved: come back any time.
"""

RUNNING_LABEL = "⏳ Running…"
STATUS_WORDS = {"queued": "Waiting", "running": "Running", "done": "Done", "failed": "Failed",
                "interrupted": "Interrupted", "cancelled": "Stopped"}


@dataclass(frozen=True)
class HeaderCallbacks:
    projects: Callable[[], list[tuple[str, int]]]
    default_project: Callable[[], int | None]
    status: Callable[[int | None], JobStatusView]
    revision: Callable[[int | None], str]


@dataclass(frozen=True)
class Header:
    picker: gr.Dropdown  # what a person picks from
    project: gr.Number  # the open project's id: every handler's input (hidden)
    banner: gr.HTML
    revision: gr.State  # changes whenever a job of the open project ends, or the project
    opened: list  # events after which a project is open: the page load, a pick
    timer: gr.Timer
    busy: gr.State  # the kind of the open project's running job, "" when none


def build(demo: gr.Blocks, callbacks: HeaderCallbacks) -> Header:
    with gr.Row(equal_height=True, elem_id="header"):
        with gr.Column(scale=3):
            gr.Markdown(INTRO, elem_id="intro")
        with gr.Column(scale=2, min_width=320):
            picker = gr.Dropdown([], value=None, label="Project", elem_id="project")
            banner = gr.HTML("", elem_id="job-banner")
    # The id lives in a hidden Number, not in the picker: an API client's session never saw
    # the picker's choices, so it could not pass a project to handlers through it.
    project = gr.Number(None, precision=0, visible=False, label="project id")
    revision = gr.State("")
    timer = gr.Timer(1.0)

    def on_load() -> tuple:
        chosen = callbacks.default_project()
        return (gr.Dropdown(choices=callbacks.projects(), value=chosen), chosen,
                banner_html(callbacks.status(chosen)))

    loaded = demo.load(on_load, None, [picker, project, banner], api_name="open_page")
    picked = picker.input(lambda chosen: chosen, picker, project, api_visibility="private")
    return Header(picker, project, banner, revision, [loaded, picked], timer, gr.State(""))


def follow_jobs(header: Header, callbacks: HeaderCallbacks,
                job_buttons: Mapping[str, gr.Button]) -> None:
    """Polls the store once a second (wired once every tab is built): the banner, the picker
    while no project is open, `revision`, and each job's button ({JobKind: button}), which
    reads "Running…" and cannot be clicked while its job runs, whichever tab or client
    started it, and is itself again once the job ends."""
    labels = {kind: button.value for kind, button in job_buttons.items()}

    def poll(project_id, seen: str, was_busy: str, shown: str) -> tuple:
        picked, opened = gr.skip(), gr.skip()
        if project_id is None:
            chosen = callbacks.default_project()
            if chosen is not None:
                picked = gr.Dropdown(choices=callbacks.projects(), value=chosen)
                opened = project_id = chosen
        current = callbacks.revision(project_id)
        status = callbacks.status(project_id)
        busy = status.kind if status.active else ""
        banner = banner_html(status)
        # an unchanged output is skipped: every redraw costs the browser CPU the job may need
        return (banner if banner != shown else gr.skip(), picked, opened,
                current if current != seen else gr.skip(), busy if busy != was_busy else gr.skip())

    def buttons(busy: str) -> list:
        return [gr.Button(RUNNING_LABEL if kind == busy else label, interactive=kind != busy)
                for kind, label in labels.items()]

    # few outputs a tick, the buttons only when the running job changes: each output of each
    # tick costs the browser's main thread (about 0.15 s of CPU a tick with the buttons)
    header.timer.tick(poll, [header.project, header.revision, header.busy, header.banner],
                      [header.banner, header.picker, header.project, header.revision,
                       header.busy], api_visibility="private", show_progress="hidden")
    header.busy.change(buttons, header.busy, list(job_buttons.values()),
                       api_visibility="private", show_progress="hidden")


def banner_html(status: JobStatusView) -> str:
    if not status.status:
        text = html.escape(status.message) if status.message else "No job has run yet."
        return f'<div class="job-banner idle">{text}</div>'
    word = f'<span class="job-state">{STATUS_WORDS.get(status.status, status.status)}</span>'
    title = html.escape(status.title)
    if status.active:
        message = html.escape(status.message or status.status)
        return (f'<div class="job-banner running">{word} <b>{title}</b>: {message} '
                f'<progress max="1" value="{status.progress:.3f}"></progress> '
                f"{status.progress:.0%}</div>")
    took = f" in {status.seconds:.0f} s" if status.seconds else ""
    detail = {"done": f"finished{took}", "failed": "failed", "cancelled": "stopped",
              "interrupted": "interrupted (the app stopped while it ran)"}.get(status.status,
                                                                                 status.status)
    error = (f'<div class="job-error">{html.escape(status.error[:300])}</div>'
             if status.error and status.status in ("failed", "interrupted") else "")
    return (f'<div class="job-banner {status.status}">{word} Last job: <b>{title}</b> '
            f"{detail}.{error}</div>")
