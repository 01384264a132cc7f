"""Tab 5, Debias: train the debiased model on the train split plus the accepted generated images
(and the vanilla model without them), then compare all three models by group accuracy.

Builds widgets only; the work is in the callbacks passed in (see `DebiasCallbacks`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from diffubias.baselines import baseline_methods
from diffubias.config import RunConfig
from diffubias.report import ACCURACY_METRICS
from storage.models import JobKind
from ui.debias_service import DebiasView
from ui.events import (
    GPU,
    TabRefresh,
    open_project,
    percent,
    progress_callback,
    shown_settings,
    shows_errors,
)

TABLE_HEADERS = ["model", *ACCURACY_METRICS, "training images", "epochs"]
EXPLAIN = """**overall**: all test images · **aligned**: images whose bias attribute is the one
their class usually has · **conflicting**: the others, where a biased model fails ·
**unbiased**: the mean over every (class, attribute) group, so rare groups count as much as
common ones. Aligned, conflicting and unbiased need the bias attribute in the dataset."""


def baseline_choices() -> list[tuple[str, str]]:
    """(label, name) of every registered baseline, read when the page is built; the registry
    imports no torch."""
    return [(method.label, method.name) for method in baseline_methods()]


@dataclass(frozen=True)
class DebiasCallbacks:
    train: Callable[..., DebiasView]  # (project, {RunConfig field: value}, *, train_vanilla, ui)
    view: Callable[[int | None], DebiasView]
    settings: Callable[[int | None], dict[str, Any]]
    stop: Callable[[int | None], str]


def build(callbacks: DebiasCallbacks, project: gr.Number) -> TabRefresh:
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            gr.Markdown("### Retrain\nThe debiased model trains on the train split plus every "
                        "generated image that was not rejected; the vanilla model, with the "
                        "same initialisation and schedule, on the train split alone.")
            epochs = gr.Number(RunConfig().debias_epochs, precision=0, label="epochs",
                               elem_id="debias-epochs")
            vanilla = gr.Checkbox(True, label="also train the vanilla model (for comparison)")
            baselines = gr.CheckboxGroup(
                baseline_choices(), value=[],
                label="also train baselines for comparison",
                info="same schedule as the debiased model; oversampling and the no-filter "
                     "variant start from the candidates kept in tab 2; LfF and JTT find their "
                     "own and take about twice as long",
                elem_id="debias-baselines")
            with gr.Row():
                train = gr.Button("Train debiased model", variant="primary",
                                  elem_id="train-debiased")
                stop = gr.Button("Stop", variant="stop", scale=0, min_width=80)
            status = gr.Markdown("", elem_id="debias-status")
        with gr.Column(scale=3):
            summary = gr.Markdown("*Train the debiased model to compare accuracies.*",
                                  elem_id="debias-summary")
            table = gr.Dataframe(headers=TABLE_HEADERS, interactive=False,
                                 label="Test accuracy", elem_id="accuracy-table")
            bars = gr.Plot(label="Accuracy by group", elem_id="accuracy-bars")
            gr.Markdown(EXPLAIN)

    settings = {"debias_epochs": epochs, "baselines": baselines}

    @shows_errors(status=status)
    def on_train(project_id, progress: gr.Progress = gr.Progress(), *,
                 train_vanilla: bool = True, **changes) -> tuple:
        view = callbacks.train(open_project(project_id), changes,
                               train_vanilla=bool(train_vanilla), ui=progress_callback(progress))
        took = f" in {view.seconds:.0f} s" if view.seconds else ""
        return (f"✓ Trained on {view.n_generated} generated images{took}.",
                *view_outputs(view))

    outputs = [summary, table, bars]
    # the API's parameter order: debias_epochs, train_vanilla, baselines
    train_event = train.click(on_train, [project], [status, *outputs],
                              inputs_kwargs={"debias_epochs": epochs, "train_vanilla": vanilla,
                                             "baselines": baselines},
                              api_name="train_debiased", **GPU)
    stop.click(callbacks.stop, project, status, cancels=[train_event], api_name="stop_debias")

    def refresh(project_id) -> tuple:
        return view_outputs(callbacks.view(project_id))

    def show_settings(project_id) -> tuple:
        return *shown_settings(callbacks.settings(project_id), settings), ""

    return TabRefresh(refresh, [project], outputs, show_settings, [*settings.values(), status],
                      jobs={JobKind.DEBIAS: train})


def view_outputs(view: DebiasView) -> tuple:
    import pandas as pd

    rows = [[r.role, *(percent(r.test.get(m)) for m in ACCURACY_METRICS),
             r.n_train if r.n_train is not None else "", r.epochs or ""] for r in view.rows]
    by_role = {r.role: r.test for r in view.rows}
    if "debiased" in by_role and ("vanilla" in by_role or "biased" in by_role):
        base = "vanilla" if "vanilla" in by_role else "biased"
        key = "unbiased" if by_role["debiased"].get("unbiased") is not None else "overall"
        gain = by_role["debiased"][key] - by_role[base][key]
        summary = (f"Debiased vs {base}: **{gain * 100:+.1f} points** of {key} accuracy "
                   f"({percent(by_role[base][key])} → {percent(by_role['debiased'][key])}), "
                   f"trained with {view.n_generated} generated images.")
    elif view.rows:
        summary = "*Only the biased model so far: generate images, then train.*"
    else:
        summary = "*Train the biased model (tab 2) first.*"
    if view.stale:
        summary += f"\n\n⚠ {view.stale}"
    if view.split_note:
        summary += f"\n\n⚠ {view.split_note}"
    return summary, pd.DataFrame(rows, columns=TABLE_HEADERS), view.figure
