"""How tab handlers talk to Gradio: errors become `gr.Error` pop-ups a person can act on, a
`gr.Progress` becomes the plain `(fraction, message)` callback the services take, settings
widgets show the project's `RunConfig`, every paged gallery gets the same pager row, and every
tab hands the app the same `TabRefresh`.

Settings widgets are keyed by `RunConfig` field names: a tab passes that mapping to its event as
`inputs_kwargs`, so the handler receives the values as a `changes` dict (`**changes`) and API
clients see the field names as parameter names.
"""

from __future__ import annotations

import functools
import html
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import gradio as gr

from diffubias.config import RunConfig
from ui.jobs import JobCancelled, machine_failure

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

# Every long job shares one queue: one job at a time, like one GPU.
GPU = {"concurrency_id": "gpu", "concurrency_limit": 1}


def shows_errors(handler: F) -> F:
    """Turns ValueError (bad input, missing step) into a gr.Error with its message, a stopped
    job into a short notice, a failure of the machine (full disk, unwritable workspace, GPU out
    of memory) into a gr.Error saying what to do, and anything else into a gr.Error that points
    at the server log. The app keeps serving in every case."""

    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except JobCancelled:
            raise gr.Error("The job was stopped; nothing of it was kept.", title="Stopped",
                           print_exception=False) from None
        except ValueError as error:
            raise gr.Error(html.escape(str(error)), print_exception=False) from error
        except Exception as error:
            advice = machine_failure(error)
            if advice is not None:
                log.warning("handler %s failed: %s", handler.__name__, error)
                raise gr.Error(html.escape(advice[0].upper() + advice[1:] + "."),
                               print_exception=False) from error
            log.exception("handler %s failed", handler.__name__)
            raise gr.Error(html.escape(f"Unexpected error ({type(error).__name__}: {error}); "
                                       "the server log has the details.")) from error

    return wrapper  # type: ignore[return-value]


@dataclass(frozen=True)
class TabRefresh:
    """What a tab gives the app. `fn(*inputs)` re-reads the tab's results into `outputs` (on
    every revision); `settings_fn(project)` fills `settings_outputs` with the project's settings
    (when a project is opened); `opened` are the tab's events after which another project is
    open (the Dataset tab's)."""

    fn: Callable
    inputs: list
    outputs: list
    settings_fn: Callable | None = None
    settings_outputs: list = field(default_factory=list)
    opened: list = field(default_factory=list)


def open_project(project_id: int | float | None) -> int:
    """The id of the open project; refuses an event when none is open."""
    if project_id is None:
        raise ValueError("No project is open: pick one in tab 1")
    return int(project_id)


def shown_settings(stored: Mapping[str, Any], widgets: Mapping[str, gr.components.Component]
                   ) -> list:
    """What each settings widget ({RunConfig field: widget}) shows: the project's value from
    `stored` (its RunConfig as a dict), else RunConfig's default; a word list in a text box as
    comma-separated words."""
    defaults = RunConfig()
    shown = []
    for name, widget in widgets.items():
        value = stored.get(name, getattr(defaults, name))
        if isinstance(value, (list, tuple)):
            value = ", ".join(value) if isinstance(widget, gr.Textbox) else list(value)
        shown.append(value)
    return shown


def progress_callback(progress: gr.Progress) -> Callable[[float, str], None]:
    return lambda fraction, message: progress(fraction, desc=message)


def file_url(path: str) -> str:
    """The URL Gradio serves a workspace file at (the workspace is in allowed_paths)."""
    return "/gradio_api/file=" + quote(str(path))


def percent(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.1%}"


@dataclass
class Pager:
    """A row of ◀ page n of N ▶ controls; `page` is the 1-based page number input."""

    page: gr.Number
    info: gr.Markdown
    previous: gr.Button
    following: gr.Button

    @classmethod
    def build(cls, elem_id: str) -> Pager:
        with gr.Row(equal_height=True, elem_classes=["pager"]):
            previous = gr.Button("◀ Previous", size="sm", scale=0, min_width=110,
                                 elem_id=f"{elem_id}-prev")
            page = gr.Number(value=1, precision=0, minimum=1, label="page", scale=0,
                             min_width=90, elem_id=f"{elem_id}-page", show_label=False)
            following = gr.Button("Next ▶", size="sm", scale=0, min_width=110,
                                  elem_id=f"{elem_id}-next")
            info = gr.Markdown("", elem_id=f"{elem_id}-info")
        return cls(page, info, previous, following)

    def wire(self, show_page: Callable[..., Any], inputs: list, outputs: list,
             api_name: str) -> None:
        """`show_page(page, *inputs)` fills `outputs`; the buttons step the page first."""
        self.page.submit(show_page, [self.page, *inputs], outputs, api_name=api_name)
        self.previous.click(lambda p: max(1, int(p or 1) - 1), self.page, self.page,
                            api_visibility="private").then(
            show_page, [self.page, *inputs], outputs, api_visibility="private")
        self.following.click(lambda p: int(p or 1) + 1, self.page, self.page,
                             api_visibility="private").then(
            show_page, [self.page, *inputs], outputs, api_visibility="private")


def page_info(page: int, n_pages: int, total: int, noun: str) -> str:
    return f"page {page} of {n_pages} · {total} {noun}"
