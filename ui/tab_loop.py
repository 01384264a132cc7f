"""The closed loop, under tab 5's accuracy table: re-score the training set with the debiased
model, see what remains (per-class gap, keywords, the candidates still wrong), start another
round on the classes that need it, and compare rounds.

Builds widgets only; the work is in the callbacks passed in (see `LoopCallbacks`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from storage.models import JobKind
from ui.events import (
    GPU,
    TabRefresh,
    open_project,
    percent,
    progress_callback,
    shows_errors,
)
from ui.loop_service import LoopView

KEYWORD_HEADERS = ["class", "keyword", "candidates using it", "still wrong", "accuracy",
                   "gap to the rest of the class"]
ROUND_HEADERS = ["round", "candidates from", "candidates", "generated images trained",
                 "unbiased", "conflicting", "candidates still wrong", "gap (proxy)",
                 "gap (bias column)"]
EXPLAIN = """Without bias labels, a round's candidates stand for the bias-conflicting samples
and the rest of each class for the aligned ones: a class whose **gap** (accuracy on the rest
minus accuracy on the candidates) stays large still has a shortcut. The next round starts from
the samples the debiased model finds hardest in the classes you pick; training then uses the
images of every round. *gap (bias column)* is measured with the dataset's bias attribute, where
it has one: it checks the proxy, it chooses nothing."""


@dataclass(frozen=True)
class LoopCallbacks:
    rescore: Callable[..., LoopView]  # (project, *, ui)
    start: Callable[[int, list[str]], LoopView]  # (project, class names)
    view: Callable[[int | None], LoopView]


def build(callbacks: LoopCallbacks, project: gr.Number) -> TabRefresh:
    with gr.Accordion("Closed loop: what the debiased model still gets wrong", open=True,
                      elem_id="closed-loop"):
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                note = gr.Markdown("", elem_id="loop-note")
                rescore = gr.Button("Re-score the training set", elem_id="rescore")
                classes = gr.CheckboxGroup([], label="classes for the next round",
                                           info="preselected: those with a positive gap",
                                           elem_id="loop-classes")
                start = gr.Button("Start the next round", elem_id="start-round")
                status = gr.Markdown("", elem_id="loop-status")
            with gr.Column(scale=3):
                gaps = gr.Plot(label="Accuracy on candidates vs the rest, per class",
                               elem_id="loop-gaps")
                keywords = gr.Dataframe(headers=KEYWORD_HEADERS, interactive=False,
                                        label="Keywords whose candidates are still wrong",
                                        elem_id="loop-keywords")
                still_wrong = gr.Gallery(label="candidates still wrong: class · loss",
                                         columns=10, height=200, elem_id="still-wrong")
        rounds = gr.Dataframe(headers=ROUND_HEADERS, interactive=False,
                              label="Rounds compared", elem_id="rounds-table")
        gr.Markdown(EXPLAIN)

    outputs = [note, classes, gaps, keywords, still_wrong, rounds]

    @shows_errors(status=status)
    def on_rescore(project_id, progress: gr.Progress = gr.Progress()) -> tuple:
        view = callbacks.rescore(open_project(project_id), ui=progress_callback(progress))
        summary = view.summary
        return (f"✓ {summary['n_still_wrong']} of {summary['n_candidates']} candidates still "
                "wrong.", *view_outputs(view))

    @shows_errors(status=status)
    def on_start(project_id, chosen) -> tuple:
        view = callbacks.start(open_project(project_id), list(chosen or []))
        return f"✓ Round {view.round} started.", *view_outputs(view)

    rescore.click(on_rescore, [project], [status, *outputs], api_name="rescore", **GPU)
    start.click(on_start, [project, classes], [status, *outputs], api_name="start_round")

    def refresh(project_id) -> tuple:
        return view_outputs(callbacks.view(project_id))

    return TabRefresh(refresh, [project], outputs, jobs={JobKind.RESCORE: rescore})


def view_outputs(view: LoopView) -> tuple:
    import pandas as pd

    summary = view.summary
    names = view.class_names
    next_classes = [names[c] for c in summary.get("next_classes", []) if c < len(names)]
    keyword_rows = [[k["name"], k["term"], k["n_candidates"], k["n_still_wrong"],
                     percent(k["accuracy"]), f"{k['gap'] * 100:+.0f} points"]
                    for k in summary.get("keywords", [])]
    round_rows = [[r.number, r.source, r.n_candidates,
                   "" if r.n_images is None else r.n_images,
                   percent(r.test.get("unbiased")), percent(r.test.get("conflicting")),
                   "" if r.n_still_wrong is None else r.n_still_wrong,
                   _points(r.mean_gap), _points(r.mean_true_gap)] for r in view.rounds]
    return (view.note, gr.update(choices=names, value=next_classes), view.figure,
            pd.DataFrame(keyword_rows, columns=KEYWORD_HEADERS), view.still_wrong,
            pd.DataFrame(round_rows, columns=ROUND_HEADERS))


def _points(gap: float | None) -> str:
    return "" if gap is None else f"{gap * 100:+.1f} points"
