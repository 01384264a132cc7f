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
import time
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


def shows_errors(handler: F | None = None, *, status: gr.components.Component | None = None
                 ) -> F | Callable[[F], F]:
    """Turns ValueError (bad input, missing step) into a gr.Error with its message, a stopped
    job into a short notice, a failure of the machine (full disk, unwritable workspace, GPU out
    of memory) into a gr.Error saying what to do, and anything else into a gr.Error that points
    at the server log. The app keeps serving in every case.

    With `status` (the line under the event's button, one of its outputs), a refusal or a
    stopped job asked for from a browser is said there and in a toast, and every other output
    keeps what it showed: a raised error would paint them all as red "Error" boxes until the
    page is reloaded. API clients get the error either way.
    Use as `@shows_errors` or `@shows_errors(status=status)`."""
    if handler is None:
        return functools.partial(shows_errors, status=status)

    def refuse(message: str, *, mark: str = "⚠", title: str = "Error") -> Any:
        if status is None or not from_browser():
            raise gr.Error(html.escape(message), title=title, print_exception=False)
        gr.Warning(html.escape(message), title=title)
        return {status: f"{mark} {markdown_text(message)}"}

    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except JobCancelled:
            return refuse("Stopped: nothing of that run was kept.", mark="■",
                          title="Stopped")
        except ValueError as error:
            return refuse(str(error))
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


def from_browser() -> bool:
    """Whether the event being handled came from the page (not from gradio_client, which
    marks its requests `x-gradio-user: api`, nor from a direct Python call)."""
    from gradio.context import LocalContext

    request = LocalContext.request.get(None)
    headers = getattr(request, "headers", None)
    return headers is not None and headers.get("x-gradio-user") != "api"


def markdown_text(text: str) -> str:
    """`text` shown as itself in a gr.Markdown: HTML escaped, and the characters Markdown
    would read as emphasis or code (a field name such as `top_k`) escaped."""
    escaped = html.escape(text)
    for char in "\\`*_[]":
        escaped = escaped.replace(char, "\\" + char)
    return escaped


@dataclass(frozen=True)
class TabRefresh:
    """What a tab gives the app. `fn(*inputs)` re-reads the tab's results into `outputs` (on
    every revision); `settings_fn(project)` fills `settings_outputs` with the project's settings
    (when a project is opened); `opened` are the tab's events after which another project is
    open (the Dataset tab's); `jobs` maps each JobKind the tab starts to its button, which the
    header disables while that job runs."""

    fn: Callable
    inputs: list
    outputs: list
    settings_fn: Callable | None = None
    settings_outputs: list = field(default_factory=list)
    opened: list = field(default_factory=list)
    jobs: dict = field(default_factory=dict)


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


# A reload keeps the open tab and the gallery filters: they live in the page's URL (?tab=bias&
# class=3), written by the browser as the user picks them (history.replaceState: no reload, no
# history entry) and read back by handlers through gr.Request.
def remember_in_url(name: str) -> str:
    """JS for an event's `js=`: writes the event's first input into the URL as `name`."""
    return ("(value) => { const url = new URL(window.location.href); "
            f"url.searchParams.set('{name}', String(value)); "
            "window.history.replaceState(null, '', url); }")


def remember_tab_in_url(tabs_elem_id: str) -> str:
    """JS for a gr.Tabs' select event: writes the selected tab's id into the URL as `tab`
    (each gr.Tab has elem_id `tab-<id>`, which Gradio gives its button as `tab-<id>-button`)."""
    return ("() => { setTimeout(() => { const picked = document.querySelector("
            f"'#{tabs_elem_id} [role=tab][aria-selected=true]'); if (!picked) return; "
            "const url = new URL(window.location.href); url.searchParams.set('tab', "
            "picked.id.replace(/^tab-/, '').replace(/-button$/, '')); "
            "window.history.replaceState(null, '', url); }, 0); }")


def open_tab_from_url(tabs_elem_id: str) -> str:
    """JS for the page's load event: clicks the tab the URL names, as `remember_tab_in_url`
    wrote it."""
    return ("() => { const tab = new URL(window.location.href).searchParams.get('tab'); "
            f"const button = tab && document.querySelector('#{tabs_elem_id} #tab-' + tab + "
            "'-button'); if (button) button.click(); }")


def url_param(request: gr.Request | None, name: str) -> str | None:
    """A value `remember_in_url` wrote into the page's URL, None without one."""
    params = getattr(request, "query_params", None)
    return None if params is None else params.get(name)


PROGRESS_INTERVAL_S = 0.5  # the page's progress bar redraws at most this often


def progress_callback(progress: gr.Progress) -> Callable[[float, str], None]:
    """The services' (fraction, message) callback, drawn by the page's progress bar at most
    every PROGRESS_INTERVAL_S (and when the message changes): every redraw costs the browser
    CPU that, on a small machine, the job itself needs. (Not track_tqdm, which sent every
    step of every progress bar.)"""
    last = {"at": -math.inf, "message": None}

    def report(fraction: float, message: str) -> None:
        now = time.monotonic()
        if now - last["at"] >= PROGRESS_INTERVAL_S or message != last["message"]:
            last.update(at=now, message=message)
            progress(fraction, desc=message)

    return report


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
